"""The model registry: ``model.name`` -> a factory ``(num_classes, **typed keyword arguments) -> nn.Module``.

Register with ``@register_model(name, task=...)``: ``task`` is ``"classification"`` (returns a
:class:`~attnmel.models.base.Classifier`) or ``"segmentation"`` (lesion logits (B, 1, H, W); ``num_classes``
is ignored); ``options`` lists the keys a segmenter accepts under ``model.options``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from attnmel.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model", key="model.name")


def register_model(name: str, task: str = "classification",
                   options: tuple[str, ...] = ()) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register a model factory as ``model.name=name`` for ``task``."""
    if task not in ("classification", "segmentation"):
        raise ValueError(f"model '{name}': task must be classification or segmentation, got {task!r}")
    return MODELS.register(name, task=task, options=tuple(options))


def factory_kwargs(factory: Any, section: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``factory`` takes, read from a config section (keys it does not take are another
    model's and are left alone)."""
    params = inspect.signature(factory).parameters
    return {k: v for k, v in section.items() if k in params and params[k].kind == inspect.Parameter.KEYWORD_ONLY}
