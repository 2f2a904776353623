"""Models: plain ``nn.Module`` classifiers and segmenters behind one registry, :func:`build_model`.

Classifiers return :class:`ClassifierOutput` ``(logits, maps, features)``; see docs/DESIGN.md (Models).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from attnmel.errors import AttnMelError
from attnmel.models.base import Classifier, ClassifierOutput

__all__ = ["build_model", "ClassifierOutput", "Classifier", "MODEL_NAMES", "CLASSIFIER_NAMES",
           "SEGMENTER_NAMES"]


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
                      width=_width(cfg))


def _mel_cnn(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.vgg import MelCNN

    return MelCNN(k, width=_width(cfg))


def _vgg16(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.vgg import VGG16

    return VGG16(k, width=_width(cfg))


def _vgg16_gap(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.vgg import VGG16GAP

    return VGG16GAP(k, width=_width(cfg))


def _resnet50(cfg: dict[str, Any], k: int) -> Classifier:
    from attnmel.models.resnet import ResNet50

    _full_width_only(cfg, "resnet50")
    return ResNet50(k)


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


CLASSIFIERS: dict[str, Callable[[dict[str, Any], int], Classifier]] = {
    "attnmel": _attnmel,
    "mel_cnn": _mel_cnn,
    "vgg16": _vgg16,
    "vgg16_gap": _vgg16_gap,
    "resnet50": _resnet50,
    "densenet121": _densenet121,
}
SEGMENTER_NAMES: tuple[str, ...] = ("unet", "fcrn", "maskrcnn", "segnet")
CLASSIFIER_NAMES: tuple[str, ...] = tuple(CLASSIFIERS)
MODEL_NAMES: tuple[str, ...] = CLASSIFIER_NAMES + SEGMENTER_NAMES


def build_model(model_cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """Build the model ``model_cfg["name"]`` with ``num_classes`` outputs and its ``pretrained`` weights.

    Keys missing from ``model_cfg`` take their defaults.yaml values (note: ``pretrained`` defaults to
    ``imagenet``). Segmenters are delegated to ``attnmel.models.segmentation.build_segmenter``.
    """
    from attnmel.config import defaults

    cfg = {**defaults()["model"], **(model_cfg or {})}
    name = cfg.get("name")
    if name in SEGMENTER_NAMES:
        try:
            from attnmel.models.segmentation import build_segmenter
        except ImportError as e:
            if e.name and e.name.startswith("attnmel.models.segmentation"):
                raise AttnMelError(f"model '{name}' needs attnmel.models.segmentation, which is not "
                                   "installed in this checkout") from None
            raise
        return build_segmenter(name, cfg)
    if name not in CLASSIFIERS:
        raise AttnMelError(f"unknown model '{name}'; known models: {', '.join(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise AttnMelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    from attnmel.models.weights import apply_pretrained

    model = CLASSIFIERS[name](cfg, num_classes)
    return apply_pretrained(model, cfg.get("pretrained"))
