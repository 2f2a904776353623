"""What every classifier shares: the output tuple and the hooks the weight loader relies on."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn


class ClassifierOutput(NamedTuple):
    """A classifier's forward result.

    ``logits`` (B, K); ``maps`` attention maps by layer name, each (B, 1, h, w) (empty for models
    without attention); ``features`` (B, D) the penultimate vector (what the linear head sees).
    """

    logits: torch.Tensor
    maps: dict[str, torch.Tensor]
    features: torch.Tensor


class Classifier(nn.Module):
    """Base class of the classifiers: a plain ``nn.Module`` plus metadata for weights and explanations.

    Subclasses set ``torchvision_arch`` (the torchvision model whose ImageNet weights fit the backbone)
    and ``head_prefixes`` (state-dict key prefixes of the layers that are *new*, i.e. never loaded
    from a torchvision checkpoint).
    """

    torchvision_arch: ClassVar[str] = ""
    head_prefixes: ClassVar[tuple[str, ...]] = ()
    attention_layers: tuple[str, ...] = ()
    width: float = 1.0

    @property
    def gradcam_layer(self) -> nn.Module:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def backbone_keys(self) -> list[str]:
        """State-dict keys a torchvision checkpoint provides for this model."""
        return [k for k in self.state_dict() if not k.startswith(self.head_prefixes)]

    @staticmethod
    def remap_torchvision_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename keys of a torchvision checkpoint to the current layout (identity by default)."""
        return state_dict


def init_new_conv(conv: nn.Conv2d) -> None:
    """The spec's init for layers added on top of the backbone: kaiming-normal (fan_in, relu), bias 0."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_new_linear(linear: nn.Linear) -> None:
    """The spec's init for linear heads: N(0, 0.01), bias 0."""
    nn.init.normal_(linear.weight, 0.0, 0.01)
    nn.init.zeros_(linear.bias)
