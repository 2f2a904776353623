"""The model registry: ``model.name`` -> a factory ``(model_cfg, num_classes) -> nn.Module``.

Register with ``@register_model(name, task=...)``: ``task`` is ``"classification"`` (returns a
:class:`~attnmel.models.base.Classifier`) or ``"segmentation"`` (lesion logits (B, 1, H, W); ``num_classes``
is ignored); ``options`` lists the keys a segmenter accepts under ``model.options``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from attnmel.registry import Registry

ModelFactory = Callable[[dict[str, Any], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model", key="model.name")


def register_model(name: str, task: str = "classification",
                   options: tuple[str, ...] = ()) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register a model factory as ``model.name=name`` for ``task``."""
    if task not in ("classification", "segmentation"):
        raise ValueError(f"model '{name}': task must be classification or segmentation, got {task!r}")
    return MODELS.register(name, task=task, options=tuple(options))
