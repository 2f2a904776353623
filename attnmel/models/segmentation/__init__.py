"""Segmenters: U-Net, FCRN (ResNet-50, multi-scale fusion), Mask R-CNN and SegNet (VGG-16-BN, unpooling).

Every segmenter is a plain ``nn.Module`` whose ``forward(x: (B,3,H,W))`` returns logits (B,C,H,W) at the
input's size: C = 1 for lesion masks, C = 5 for the ISIC 2018 Task 2 attributes (``out_channels``; Mask R-CNN
then has one class per attribute). ``attnmel.models.build_model`` delegates these names here; each registers
in :data:`attnmel.models.registry.MODELS` with ``task="segmentation"`` and the ``options`` it accepts; a
factory's second argument is the number of outputs.

Factories take typed keyword arguments (``width``, ``pretrained`` and the model's own options), each checked
once, in its factory; :func:`build_segmenter` reads them from the ``model`` config section: ``pretrained``,
``width`` (U-Net: channel multiplier of a 32-channel first stage), and ``options``, the model's own settings
(an unknown one is an error): ``fuse_strides`` (FCRN); ``min_size``, ``max_size``, ``score_threshold``,
``trainable_backbone_layers``, ``detector_options`` (keyword arguments of torchvision's ``MaskRCNN``)
(Mask R-CNN). E.g. ``model.options.score_threshold=0.3``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from attnmel.errors import AttnMelError
from attnmel.models.registry import MODELS, factory_kwargs, register_model

UNET_BASE_WIDTH = 32

log = logging.getLogger(__name__)


def build_segmenter(name: str, model_cfg: dict[str, Any], out_channels: int = 1) -> nn.Module:
    """Build the segmenter ``name`` (unet | fcrn | maskrcnn | segnet) with ``out_channels`` outputs from the
    ``model`` config section: ``pretrained`` and ``width``, and ``options`` (the model's own settings; an
    unknown one is an error), each passed to the factory as a typed keyword argument."""
    factory = MODELS.get(name, task="segmentation")
    accepted = MODELS.tags(name)["options"]
    options = _mapping(model_cfg.get("options"), "options")
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = ", ".join(accepted) or "none"
        raise AttnMelError(f"model.options: unknown option(s) {', '.join(unknown)} for {name} (known: {known})")
    return factory(out_channels, **factory_kwargs(factory, {**model_cfg, **options}))


@register_model("unet", task="segmentation")
def unet(out_channels: int = 1, *, width: float = 1.0, pretrained: str = "none") -> nn.Module:
    """U-Net with a first stage of ``UNET_BASE_WIDTH * width`` channels; ``width`` in (0, 8]."""
    from attnmel.models.segmentation.unet import UNet
    from attnmel.models.weights import parse_pretrained

    if not 0 < width <= 8:
        raise AttnMelError(f"model.width for unet is a multiplier of {UNET_BASE_WIDTH} "
                           f"channels in (0, 8], got {width}")
    model = UNet(base_width=max(1, round(UNET_BASE_WIDTH * width)), out_channels=out_channels)
    spec = parse_pretrained(pretrained)
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
def fcrn(out_channels: int = 1, *, width: float = 1.0, pretrained: str = "none",
         fuse_strides: Sequence[int] = (8, 16, 32)) -> nn.Module:
    from attnmel.models.segmentation.fcrn import FCRN

    _fixed_width(width, "fcrn")
    return FCRN(pretrained=pretrained, fuse_strides=fuse_strides, out_channels=out_channels)


@register_model("maskrcnn", task="segmentation",
                options=("min_size", "max_size", "score_threshold", "trainable_backbone_layers", "detector_options"))
def maskrcnn(out_channels: int = 1, *, width: float = 1.0, pretrained: str = "none", min_size: int = 224,
             max_size: int | None = None, score_threshold: float = 0.5, trainable_backbone_layers: int = 3,
             detector_options: dict[str, Any] | None = None) -> nn.Module:
    """torchvision's Mask R-CNN, one class per output; ``max_size`` defaults to ``2 * min_size``."""
    from attnmel.models.segmentation.maskrcnn import MaskRCNNSegmenter

    _fixed_width(width, "maskrcnn")
    layers = int(_number(trainable_backbone_layers, "trainable_backbone_layers"))
    if not 0 <= layers <= 5:
        raise AttnMelError(f"model.trainable_backbone_layers must be 0..5, got {layers}")
    min_size = int(_number(min_size, "min_size"))
    return MaskRCNNSegmenter(
        pretrained=pretrained, min_size=min_size,
        max_size=int(_number(2 * min_size if max_size is None else max_size, "max_size")),
        score_threshold=_number(score_threshold, "score_threshold"), trainable_backbone_layers=layers,
        detector_options=_mapping(detector_options, "detector_options"), num_classes=out_channels,
    )


@register_model("segnet", task="segmentation")
def segnet(out_channels: int = 1, *, width: float = 1.0, pretrained: str = "none") -> nn.Module:
    from attnmel.models.segmentation.segnet import segnet as build

    if not 0 < width <= 1:
        raise AttnMelError(f"model.width for segnet is a multiplier of VGG-16's channels in (0, 1], got {width}")
    return build(out_channels=out_channels, width=width, pretrained=pretrained)


def _fixed_width(width: float, name: str) -> None:
    if width != 1.0:
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
