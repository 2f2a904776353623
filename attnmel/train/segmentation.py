"""The LightningModule for segmenters (U-Net, FCRN, Mask R-CNN, SegNet): lesion masks or attributes.

Batches are the DataModule's dicts: ``image`` (B,3,H,W) normalised, ``mask`` (B,1,H,W) in {0,1}; on an
attribute dataset (ISIC 2018 Task 2) the target is ``attributes`` (B,5,H,W) and the segmenter has one
sigmoid output per attribute (:func:`segmentation_outputs`).
Logged: ``train_loss`` (step and epoch), ``val_loss`` and ``val_jaccard``; the names follow the
classification module's. ``val_jaccard`` is a quick model-selection score at the training resolution:
the mean per-image Jaccard for lesions, the Task 2 micro-averaged Jaccard for attributes. The official
scores at full resolution are :mod:`attnmel.metrics.segmentation` and :mod:`attnmel.metrics.attributes`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnmel.losses.segmentation import build_segmentation_loss
from attnmel.metrics.attributes import Task2Jaccard
from attnmel.models.segmentation import build_segmenter
from attnmel.train.module import AttnMelModule


def jaccard_per_image(logits: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """Jaccard index (B,) of ``sigmoid(logits) > threshold`` against ``masks > 0.5``.

    An image whose mask and prediction are both empty scores 1 (nothing to find, nothing found).
    """
    pred = (torch.sigmoid(logits.detach().float()) > threshold).flatten(1)
    gt = (masks.detach() > 0.5).flatten(1)
    inter = (pred & gt).sum(1).float()
    union = (pred | gt).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def segmentation_outputs(cfg: dict) -> tuple[str, ...]:
    """The names of a segmentation config's outputs: ``("lesion",)``, or the five ISIC 2018 Task 2
    attributes when the dataset is an attribute dataset."""
    from attnmel.data.readers import ATTRIBUTES, dataset_info

    return tuple(ATTRIBUTES) if dataset_info(cfg["data"]["dataset"]).attributes else ("lesion",)


def target_key(outputs: tuple[str, ...]) -> str:
    """The batch key holding the target of a segmenter with these outputs."""
    return "mask" if outputs == ("lesion",) else "attributes"


class SegmentationModule(AttnMelModule):
    """Trains any segmenter of :func:`build_segmenter` on image/mask batches.

    U-Net and FCRN use the configured loss (``loss.name``: dice | bce | dice_bce) on their logits;
    Mask R-CNN trains on its own detection losses (``training_step_loss``), and its ``val_loss`` is
    the same quantity computed with BatchNorm frozen. ``val_jaccard`` is comparable across all three.
    """

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.outputs = segmentation_outputs(self.cfg)
        self.target = target_key(self.outputs)
        model = build_segmenter(self.cfg["model"]["name"], self.cfg["model"], out_channels=len(self.outputs))
        self.val_task2 = Task2Jaccard(len(self.outputs)) if self.target == "attributes" else None
        self.uses_detection_loss = hasattr(model, "training_step_loss")
        # Mask R-CNN takes a list of images and resizes them itself: channels_last would not reach it.
        self.set_model(model, bool(self.cfg.get("trainer", {}).get("channels_last")) and not self.uses_detection_loss)
        # Mask R-CNN trains on its own losses, so loss.name (default: focal) is not read for it.
        self.criterion = None if self.uses_detection_loss else build_segmentation_loss(self.cfg["loss"], self.outputs)

    def _loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """(loss, logits or None); Mask R-CNN's loss needs no logits."""
        images, masks = batch["image"], batch[self.target]
        if self.uses_detection_loss:
            return self.model.training_step_loss(images, masks), None
        logits = self(images)
        return self.criterion(logits, masks), logits

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, _ = self._loss(batch)
        self.check_finite(loss, batch_idx)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["image"].shape[0])
        return loss

    # -- validation ---------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        bs = batch["image"].shape[0]
        loss, logits = self._loss(batch)
        if logits is None:
            logits = self(batch["image"])
        self.log("val_loss", loss.detach(), prog_bar=True, batch_size=bs, sync_dist=True)
        if self.val_task2 is not None:
            # Summed normalised confusion matrices, as the official Task 2 score (Lightning reduces at epoch end).
            self.val_task2.update(logits, batch[self.target])
            self.log("val_jaccard", self.val_task2, prog_bar=True, batch_size=bs)
            return
        # Per-image scores, weighted by batch size: the epoch value is the mean over images.
        jac = jaccard_per_image(logits, batch["mask"]).mean()
        self.log("val_jaccard", jac, prog_bar=True, batch_size=bs, sync_dist=True)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"outputs": list(self.outputs)}
