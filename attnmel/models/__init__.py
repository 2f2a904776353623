"""Models: plain ``nn.Module`` classifiers and segmenters behind one registry, :func:`build_model`.

Classifiers return :class:`ClassifierOutput` ``(logits, maps, features)``; see docs/DESIGN.md (Models).
Adding a model = a factory with typed keyword arguments (as torchvision's and timm's builders), decorated with
``@register_model(name, task=...)``; :func:`build_model` reads those arguments from the ``model`` config section
(:mod:`attnmel.models.registry`); this package registers the classifiers below and imports
:mod:`attnmel.models.segmentation`, which registers the segmenters.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from attnmel.errors import AttnMelError
from attnmel.models import segmentation as _segmentation  # noqa: F401 - registers unet, fcrn, maskrcnn
from attnmel.models.base import Classifier, ClassifierOutput
from attnmel.models.registry import MODELS, factory_kwargs, register_model

__all__ = ["CLASSIFIER_NAMES", "MODELS", "MODEL_NAMES", "SEGMENTER_NAMES", "Classifier", "ClassifierOutput",
           "build_model", "register_model"]


@register_model("attnmel")
def attnmel(num_classes: int, *, attention: str = "sigmoid", attention_layers: Sequence[str] | str = ("pool3", "pool4"),
            width: float = 1.0, gap_path: str = "keep") -> Classifier:
    """AttnMel-CNN (VGG-16-BN with attention gates at pool-3 / pool-4); ``width`` scales every channel count."""
    from attnmel.models.vgg import AttnMelCNN

    layers = (attention_layers,) if isinstance(attention_layers, str) else attention_layers
    if not isinstance(layers, (list, tuple)):
        raise AttnMelError(f"model.attention_layers must be a list of pool3/pool4, got {attention_layers!r}")
    return AttnMelCNN(num_classes, attention=attention, attention_layers=tuple(layers), width=width,
                      gap_path=gap_path or "keep")


@register_model("mel_cnn")
def mel_cnn(num_classes: int, *, width: float = 1.0) -> Classifier:
    """Mel-CNN: AttnMel-CNN without attention."""
    from attnmel.models.vgg import MelCNN

    return MelCNN(num_classes, width=width)


@register_model("vgg16")
def vgg16(num_classes: int, *, width: float = 1.0) -> Classifier:
    from attnmel.models.vgg import VGG16

    return VGG16(num_classes, width=width)


@register_model("vgg16_gap")
def vgg16_gap(num_classes: int, *, width: float = 1.0) -> Classifier:
    from attnmel.models.vgg import VGG16GAP

    return VGG16GAP(num_classes, width=width)


@register_model("resnet50")
def resnet50(num_classes: int, *, width: float = 1.0) -> Classifier:
    from attnmel.models.resnet import ResNet50

    _full_width_only(width, "resnet50")
    return ResNet50(num_classes)


@register_model("densenet121")
def densenet121(num_classes: int, *, width: float = 1.0) -> Classifier:
    from attnmel.models.densenet import DenseNet121

    _full_width_only(width, "densenet121")
    return DenseNet121(num_classes)


def _full_width_only(width: float, name: str) -> None:
    if width != 1.0:
        raise AttnMelError(f"model.width is only supported by the VGG-16 family, not {name}")


CLASSIFIER_NAMES: tuple[str, ...] = MODELS.names(task="classification")
SEGMENTER_NAMES: tuple[str, ...] = MODELS.names(task="segmentation")
MODEL_NAMES: tuple[str, ...] = CLASSIFIER_NAMES + SEGMENTER_NAMES


def build_model(model_cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """Build the model ``model_cfg["name"]`` with ``num_classes`` outputs and its ``pretrained`` weights.

    ``model_cfg`` is the config's ``model`` section (the config engine has checked each value's type); the
    factory takes the keys it declares as typed keyword arguments, and a key missing here takes the factory's
    own default (``pretrained``: ``imagenet``, as in defaults.yaml). Segmenters are delegated to
    ``attnmel.models.segmentation.build_segmenter``.
    """
    cfg = dict(model_cfg or {})
    name = cfg.get("name", "attnmel")
    factory = MODELS.get(name)
    if MODELS.tags(name)["task"] == "segmentation":
        from attnmel.models.segmentation import build_segmenter

        return build_segmenter(name, cfg)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise AttnMelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    from attnmel.models.weights import apply_pretrained

    model = factory(num_classes, **factory_kwargs(factory, cfg))
    return apply_pretrained(model, cfg.get("pretrained", "imagenet"))
