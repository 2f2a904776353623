"""Segmenters: U-Net, FCRN (ResNet-50, multi-scale fusion), Mask R-CNN and SegNet (VGG-16-BN, unpooling).

Every segmenter is a plain ``nn.Module`` whose ``forward(x: (B,3,H,W))`` returns logits (B,C,H,W) at the
input's size: C = 1 for lesion masks, C = 5 for the ISIC 2018 Task 2 attributes (``out_channels``; Mask R-CNN
then has one class per attribute). ``attnmel.models.build_model`` delegates these names here; each registers
in :data:`attnmel.models.registry.MODELS` with ``task="segmentation"`` and the ``options`` it accepts; a
factory's second argument is the number of outputs.

``model_cfg`` keys read (defaults.yaml ``model``): ``pretrained`` (all three), ``width`` (U-Net:
channel multiplier of a 32-channel first stage), and ``options``, the model's own settings (an unknown one
is an error): ``fuse_strides`` (FCRN); ``min_size``, ``max_size``, ``score_threshold``,
``trainable_backbone_layers``, ``detector_options`` (keyword arguments of torchvision's ``MaskRCNN``)
(Mask R-CNN). E.g. ``model.options.score_threshold=0.3``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from attnmel.errors import AttnMelError
from attnmel.models.registry import MODELS, register_model

UNET_BASE_WIDTH = 32

log = logging.getLogger(__name__)


def build_segmenter(name: str, model_cfg: dict[str, Any], out_channels: int = 1) -> nn.Module:
    """Build the segmenter ``name`` (unet | fcrn | maskrcnn | segnet) with ``out_channels`` outputs from the
    ``model`` config section."""
    factory = MODELS.get(name, task="segmentation")
    accepted = MODELS.tags(name)["options"]
    options = _mapping(model_cfg.get("options"), "options")
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = ", ".join(accepted) or "none"
        raise AttnMelError(f"model.options: unknown option(s) {', '.join(unknown)} for {name} (known: {known})")
    return factory({**model_cfg, **options}, out_channels)


@register_model("unet", task="segmentation")
def _unet(model_cfg: dict[str, Any], out_channels: int) -> nn.Module:
    from attnmel.models.segmentation.unet import UNet
    from attnmel.models.weights import parse_pretrained

    width = _number(model_cfg.get("width", 1.0), "width")
    if not 0 < width <= 8:
        raise AttnMelError(f"model.width for unet is a multiplier of {UNET_BASE_WIDTH} "
                           f"channels in (0, 8], got {width}")
    model = UNet(base_width=max(1, round(UNET_BASE_WIDTH * width)), out_channels=out_channels)
    spec = parse_pretrained(model_cfg.get("pretrained", "none"))
    if isinstance(spec, Path):
        from attnmel.models.segmentation._weights import load_into, load_state_dict_file

        load_into(model, load_state_dict_file(spec), source=spec)
    elif spec == "imagenet":
        # No ImageNet U-Net exists (the seed trains it from scratch) and imagenet is the config
        # default, so refusing would punish a key the user never set; say so instead.
        log.warning("unet has no ImageNet weights: training from scratch (set model.pretrained=none "
                    "to silence this)")
    return model


@register_model("fcrn", task="segmentation", options=("fuse_strides",))
def _fcrn(model_cfg: dict[str, Any], out_channels: int) -> nn.Module:
    from attnmel.models.segmentation.fcrn import FCRN

    _fixed_width(model_cfg, "fcrn")
    return FCRN(pretrained=model_cfg.get("pretrained", "none"),
                fuse_strides=model_cfg.get("fuse_strides", (8, 16, 32)), out_channels=out_channels)


@register_model("maskrcnn", task="segmentation",
                options=("min_size", "max_size", "score_threshold", "trainable_backbone_layers", "detector_options"))
def _maskrcnn(model_cfg: dict[str, Any], out_channels: int) -> nn.Module:
    from attnmel.models.segmentation.maskrcnn import MaskRCNNSegmenter

    _fixed_width(model_cfg, "maskrcnn")
    layers = int(_number(model_cfg.get("trainable_backbone_layers", 3), "trainable_backbone_layers"))
    if not 0 <= layers <= 5:
        raise AttnMelError(f"model.trainable_backbone_layers must be 0..5, got {layers}")
    min_size = int(_number(model_cfg.get("min_size", 224), "min_size"))
    return MaskRCNNSegmenter(
        pretrained=model_cfg.get("pretrained", "none"),
        min_size=min_size,
        max_size=int(_number(model_cfg.get("max_size", 2 * min_size), "max_size")),
        score_threshold=_number(model_cfg.get("score_threshold", 0.5), "score_threshold"),
        trainable_backbone_layers=layers,
        detector_options=_mapping(model_cfg.get("detector_options"), "detector_options"),
        num_classes=out_channels,
    )


@register_model("segnet", task="segmentation")
def _segnet(model_cfg: dict[str, Any], out_channels: int) -> nn.Module:
    from attnmel.models.segmentation.segnet import segnet

    width = _number(model_cfg.get("width", 1.0), "width")
    if not 0 < width <= 1:
        raise AttnMelError(f"model.width for segnet is a multiplier of VGG-16's channels in (0, 1], got {width}")
    return segnet(out_channels=out_channels, width=width, pretrained=model_cfg.get("pretrained", "none"))


def _fixed_width(model_cfg: dict[str, Any], name: str) -> None:
    if _number(model_cfg.get("width", 1.0), "width") != 1.0:
        raise AttnMelError(f"model.width must be 1.0 for {name} (its ResNet-50 encoder has fixed widths)")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    """A mapping config value (None: empty), or a one-line error naming the key."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AttnMelError(f"model.{key} must be a mapping, got {value!r}")
    return dict(value)


def _number(value: Any, key: str) -> float:
    """A numeric config value, or a one-line error naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AttnMelError(f"model.{key} must be a number, got {value!r}")
    return float(value)
