"""Classification losses on logits: focal loss (the paper's, gamma 2, no alpha) and cross-entropy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnmel.errors import AttnMelError
from attnmel.losses.base import LOSSES, build_loss


class FocalLoss(nn.Module):
    """``mean_i -(1 - p_t)^gamma * log(p_t)`` over softmax probabilities; gamma 0 is cross-entropy."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise AttnMelError(f"loss.gamma must be a number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32 even under bf16 autocast: (1 - p)^gamma of a confident sample underflows otherwise.
        logp_t = F.log_softmax(logits.float(), dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
        if self.gamma == 0:
            return -logp_t.mean()
        p_t = logp_t.exp()
        return (-(1.0 - p_t).clamp_min(0).pow(self.gamma) * logp_t).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class CrossEntropyLoss(nn.Module):
    """Mean cross-entropy on logits (computed in float32); ``label_smoothing`` as in torch (the target mixes
    ``1 - eps`` on the true class with ``eps`` spread over all classes)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if isinstance(label_smoothing, bool) or not 0.0 <= float(label_smoothing) < 1.0:
            raise AttnMelError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target.long(), label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


@LOSSES.register("focal", task="classification")
def _focal(loss_cfg: dict[str, Any]) -> nn.Module:
    return FocalLoss(loss_cfg.get("gamma", 2.0))


@LOSSES.register("ce", task="classification")
def _ce(loss_cfg: dict[str, Any]) -> nn.Module:
    return CrossEntropyLoss(float(loss_cfg.get("label_smoothing") or 0.0))


def build_classification_loss(loss_cfg: dict[str, Any]) -> nn.Module:
    """``loss.name`` focal (with ``loss.gamma``) or ce -> a module ``(logits, target) -> scalar``."""
    return build_loss({"name": "focal", **(loss_cfg or {})}, task="classification")
