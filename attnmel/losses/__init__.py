"""Losses: classification (focal / cross-entropy), segmentation and attention regularisers.

Importing the package registers every loss (:data:`LOSSES`) and regulariser (:data:`REGULARISERS`),
the extra regularisers included.
"""

from attnmel.losses import regularisers_extra as _regularisers_extra  # noqa: F401 - registers kl, outside, ...
from attnmel.losses import segmentation as _segmentation  # noqa: F401 - registers dice, bce, dice_bce
from attnmel.losses.base import LOSSES, build_loss
from attnmel.losses.classification import CrossEntropyLoss, FocalLoss, build_classification_loss
from attnmel.losses.dice import soft_dice_loss
from attnmel.losses.regularisers import (
    DEFAULT_WEIGHTS,
    REGULARISERS,
    AttentionRegulariser,
    build_regulariser,
    needs_masks,
    register_regulariser,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "LOSSES",
    "REGULARISERS",
    "AttentionRegulariser",
    "CrossEntropyLoss",
    "FocalLoss",
    "build_classification_loss",
    "build_loss",
    "build_regulariser",
    "needs_masks",
    "register_regulariser",
    "soft_dice_loss",
]
