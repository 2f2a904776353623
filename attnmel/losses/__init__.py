"""Losses: classification (focal / cross-entropy) and attention regularisers (registry)."""

from attnmel.losses.classification import CrossEntropyLoss, FocalLoss, build_classification_loss
from attnmel.losses.regularisers import (
    DEFAULT_WEIGHTS,
    REGULARISERS,
    AttentionRegulariser,
    build_regulariser,
    needs_masks,
    soft_dice_loss,
)

__all__ = [
    "AttentionRegulariser",
    "CrossEntropyLoss",
    "DEFAULT_WEIGHTS",
    "FocalLoss",
    "REGULARISERS",
    "build_classification_loss",
    "build_regulariser",
    "needs_masks",
    "soft_dice_loss",
]

# Importing the package registers the regularisers beyond the paper too (they live in their own module
# so the paper's stay small); a checkout without that module still has the paper's four.
try:
    from attnmel.losses import regularisers_extra  # noqa: F401
except ModuleNotFoundError as e:  # pragma: no cover - only in a partial checkout
    if e.name != "attnmel.losses.regularisers_extra":
        raise
