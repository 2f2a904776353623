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
    "DEFAULT_WEIGHTS",
    "REGULARISERS",
    "AttentionRegulariser",
    "CrossEntropyLoss",
    "FocalLoss",
    "build_classification_loss",
    "build_regulariser",
    "needs_masks",
    "soft_dice_loss",
]
