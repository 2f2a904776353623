"""Attention regularisers (spec section 2): pluggable classes in the :data:`REGULARISERS` registry.

A regulariser is called as ``reg(out, batch, weights)`` with the model's :class:`ClassifierOutput`,
the batch dict and per-layer weights (``{}`` means the paper's ``{pool3: 0.001, pool4: 0.01}``), and
returns the weighted sum over layers (a scalar, added to the classification loss).

Adding one = one small class decorated with ``@register_regulariser("name")``. The class declares the
batch mask it reads in ``mask_key`` (``"mask"``: lesion, ``"dermo"``, or None), and everything else (the
DataModule, the training entry point) reads that through :func:`needs_masks`. Override
:meth:`target_mask` to change what the maps are pulled towards, :meth:`layer_loss` to change the distance,
or ``__call__`` for something else entirely; set ``needs_input_grad = True`` when the loss needs gradients
w.r.t. ``batch["image"]`` (the LightningModule then makes the image require grad before the forward), and
``suits_softmax = True`` when the loss makes sense for softmax maps (Dice against a mask does not).

Dice is computed per image and then averaged over the batch. The reference sums over the whole batch
before dividing, which weights images by lesion/map area (large lesions dominate) and makes the value
depend on the batch size and on how DDP shards a batch; the per-image mean gives every image the same
say and the same value at any batch size. An epsilon keeps an empty mask with an all-zero map finite.
Dice against a mask only makes sense for sigmoid attention (softmax maps sum to 1).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from attnmel.errors import AttnMelError
from attnmel.losses.dice import soft_dice_loss
from attnmel.models.base import ClassifierOutput
from attnmel.registry import Registry

DEFAULT_WEIGHTS: dict[str, float] = {"pool3": 0.001, "pool4": 0.01}
# Batch keys of the masks (docs/DESIGN.md, Data: batches) a regulariser may declare in ``mask_key``.
MASK_KEYS = ("mask", "dermo")

REGULARISERS: Registry[type[AttentionRegulariser]] = Registry("regulariser", key="loss.regulariser")


def register_regulariser(name: str):
    """Class decorator: register an :class:`AttentionRegulariser` subclass as ``loss.regulariser=name``."""

    def add(cls: type[AttentionRegulariser]) -> type[AttentionRegulariser]:
        if cls.mask_key not in (*MASK_KEYS, None):
            raise ValueError(f"{cls.__name__}.mask_key must be one of {MASK_KEYS} or None, got {cls.mask_key!r}")
        cls.name = name
        return REGULARISERS.register(name)(cls)

    return add


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mask (B, 1, H, W) or (B, H, W) -> soft mask (B, 1, h, w) in [0, 1] by adaptive average pooling."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    return F.adaptive_avg_pool2d(mask.float(), size)


class AttentionRegulariser:
    """Base class: Dice between each attention map and :meth:`target_mask`, weighted per layer."""

    name: ClassVar[str] = ""  # set by @register_regulariser
    mask_key: ClassVar[str | None] = None  # the batch mask it reads: "mask" (lesion), "dermo" or None
    needs_input_grad: ClassVar[bool] = False
    suits_softmax: ClassVar[bool] = False  # Dice against a mask is badly scaled for maps that sum to 1

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mask_key={self.mask_key!r})"

    def target_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        """The full-resolution mask the maps are pulled towards (B, 1, H, W): ``batch[mask_key]``."""
        key = self.mask_key
        mask = batch.get(key) if key else None
        if mask is None:
            raise AttnMelError(f"loss.regulariser={self.name} needs batch['{key}'], but the data has none")
        return mask if mask.dim() == 4 else mask.unsqueeze(1)

    def layer_loss(self, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Loss of one map (B, 1, h, w) against the full-resolution mask."""
        return soft_dice_loss(a, downsample_mask(mask, tuple(a.shape[-2:])), eps=self.eps)

    def __call__(self, out: ClassifierOutput, batch: dict[str, Any],
                 weights: dict[str, float] | None = None) -> torch.Tensor:
        explicit = bool(weights)
        weights = dict(weights) if explicit else dict(DEFAULT_WEIGHTS)
        mask = self.target_mask(batch)
        total = out.logits.new_zeros((), dtype=torch.float32)
        used = 0
        for layer, w in weights.items():
            a = out.maps.get(layer)
            if a is None:
                if explicit and w:
                    raise AttnMelError(f"loss.weights names attention layer '{layer}', but the model "
                                       f"returns maps for: {', '.join(out.maps) or 'none'}")
                continue  # the paper's default weights cover layers a model may have switched off
            used += 1
            if w:
                total = total + float(w) * self.layer_loss(a, mask)
        if not used:
            raise AttnMelError(f"loss.regulariser={self.name} needs attention maps ({', '.join(weights)}), "
                               f"but the model returns: {', '.join(out.maps) or 'none'}")
        return total


@register_regulariser("none")
class NoRegulariser(AttentionRegulariser):
    """No attention regularisation (AttnMel-CNN as such)."""

    suits_softmax = True

    def __call__(self, out: ClassifierOutput, batch: dict[str, Any],
                 weights: dict[str, float] | None = None) -> torch.Tensor:
        return out.logits.new_zeros((), dtype=torch.float32)


@register_regulariser("lesion")
class LesionRegulariser(AttentionRegulariser):
    """AttnMel-CNN-Lesion: attention pulled towards the lesion segmentation mask."""

    mask_key = "mask"


@register_regulariser("dermo")
class DermoRegulariser(AttentionRegulariser):
    """AttnMel-CNN-Dermo: attention pulled towards the union of the dermoscopic-feature masks."""

    mask_key = "dermo"


@register_regulariser("background")
class BackgroundRegulariser(AttentionRegulariser):
    """AttnMel-CNN-Bkg (control): attention pulled towards the background, ``1 - lesion mask``."""

    mask_key = "mask"

    def target_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        return 1.0 - super().target_mask(batch).float()


def _lookup(name: str | None) -> type[AttentionRegulariser]:
    return REGULARISERS.get(name if name is not None else "none")


def build_regulariser(name: str | None, params: dict[str, Any] | None = None) -> AttentionRegulariser:
    """Instantiate ``REGULARISERS.get(name)`` with ``params`` (``loss.params``); bad name/params -> AttnMelError."""
    cls = _lookup(name)
    params = dict(params or {})
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [p for p in params if p not in accepted]
    if unknown:
        raise AttnMelError(f"loss.params: regulariser '{name}' does not take {', '.join(unknown)} "
                           f"(takes: {', '.join(accepted) or 'nothing'})")
    return cls(**params)


def needs_masks(name: str | None) -> str | None:
    """The batch key of the mask the regulariser ``name`` declares (``"mask"`` or ``"dermo"``), or None."""
    return _lookup(name).mask_key
