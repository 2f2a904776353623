"""Models: plain ``nn.Module`` classifiers and segmenters behind one registry, :func:`build_model`.

Classifiers return :class:`ClassifierOutput` ``(logits, maps, features)``; see docs/DESIGN.md (Models).
Adding a model = a factory decorated with ``@register_model(name, task=...)``
(:mod:`attnmel.models.registry`); this package registers the classifiers below and imports
:mod:`attnmel.models.segmentation`, which registers the segmenters.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from attnmel.errors import AttnMelError
from attnmel.models import segmentation as _segmentation  # noqa: F401 - registers unet, fcrn, maskrcnn
from attnmel.models.base import Classifier, ClassifierOutput
from attnmel.models.registry import MODELS, register_model

__all__ = ["CLASSIFIER_NAMES", "MODELS", "MODEL_NAMES", "SEGMENTER_NAMES", "Classifier", "ClassifierOutput",
           "build_model", "register_model"]


@register_model("attnmel")
def _attnmel(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.vgg import AttnMelCNN

    layers = cfg.get("attention_layers")
    if layers is None:
        layers = ("pool3", "pool4")
    elif isinstance(layers, str):
        layers = (layers,)
    elif not isinstance(layers, (list, tuple)):
        raise AttnMelError(f"model.attention_layers must be a list of pool3/pool4, got {layers!r}")
    return AttnMelCNN(k, attention=cfg.get("attention", "sigmoid"), attention_layers=layers,
                      width=_width(cfg), gap_path=cfg.get("gap_path") or "keep")


@register_model("mel_cnn")
def _mel_cnn(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.vgg import MelCNN

    return MelCNN(k, width=_width(cfg))


@register_model("vgg16")
def _vgg16(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.vgg import VGG16

    return VGG16(k, width=_width(cfg))


@register_model("vgg16_gap")
def _vgg16_gap(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.vgg import VGG16GAP

    return VGG16GAP(k, width=_width(cfg))


@register_model("resnet50")
def _resnet50(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.resnet import ResNet50

    _full_width_only(cfg, "resnet50")
    return ResNet50(k)


@register_model("densenet121")
def _densenet121(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.densenet import DenseNet121

    _full_width_only(cfg, "densenet121")
    return DenseNet121(k)


def _width(cfg: dict[str, Any]) -> float:
    w = cfg.get("width", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
        raise AttnMelError(f"model.width must be a number > 0, got {w!r}")
    return float(w)


def _full_width_only(cfg: dict[str, Any], name: str) -> None:
    if _width(cfg) != 1.0:
        raise AttnMelError(f"model.width is only supported by the VGG-16 family, not {name}")


CLASSIFIER_NAMES: tuple[str, ...] = MODELS.names(task="classification")
SEGMENTER_NAMES: tuple[str, ...] = MODELS.names(task="segmentation")
MODEL_NAMES: tuple[str, ...] = CLASSIFIER_NAMES + SEGMENTER_NAMES


def build_model(model_cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """Build the model ``model_cfg["name"]`` with ``num_classes`` outputs and its ``pretrained`` weights.

    Keys missing from ``model_cfg`` take their defaults.yaml values (note: ``pretrained`` defaults to
    ``imagenet``). Segmenters are delegated to ``attnmel.models.segmentation.build_segmenter``.
    """
    from attnmel.config import defaults

    cfg = {**defaults()["model"], **(model_cfg or {})}
    name = cfg.get("name")
    factory = MODELS.get(name)
    if MODELS.tags(name)["task"] == "segmentation":
        from attnmel.models.segmentation import build_segmenter

        return build_segmenter(name, cfg)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise AttnMelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    from attnmel.models.weights import apply_pretrained

    model = factory(cfg, num_classes)
    return apply_pretrained(model, cfg.get("pretrained"))
