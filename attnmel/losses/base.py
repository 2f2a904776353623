"""The loss registry: ``loss.name`` -> a factory ``(loss_cfg) -> nn.Module``, tagged with its task.

Classification losses (``task="classification"``, on logits (B, K) and labels) live in
:mod:`attnmel.losses.classification`; segmentation losses (``task="segmentation"``, on lesion logits
(B, 1, H, W) and masks) in :mod:`attnmel.losses.segmentation`. Both register here with
``@LOSSES.register(name, task=...)``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from attnmel.registry import Registry

LOSSES: Registry[Callable[[dict[str, Any]], nn.Module]] = Registry("loss", key="loss.name")


def build_loss(loss_cfg: dict[str, Any] | None, task: str) -> nn.Module:
    """The loss ``loss_cfg["name"]`` of ``task`` ("classification" or "segmentation"); unknown: AttnMelError."""
    loss_cfg = dict(loss_cfg or {})
    return LOSSES.get(loss_cfg.get("name"), task=task)(loss_cfg)
