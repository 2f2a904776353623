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

import copy
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from attnmel.errors import AttnMelError
from attnmel.losses.segmentation import build_segmentation_loss
from attnmel.metrics.attributes import Task2Jaccard
from attnmel.models.segmentation import build_segmenter
from attnmel.train.optim import configure_optimisers

CHECKPOINT_FORMAT = 1


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


def plain_data(obj: Any) -> Any:
    """A deep copy made of dict/list/str/int/float/bool/None only (checkpoints load with weights_only)."""
    if isinstance(obj, dict):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return copy.copy(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)


class SegmentationModule(pl.LightningModule):
    """Trains any segmenter of :func:`build_segmenter` on image/mask batches.

    U-Net and FCRN use the configured loss (``loss.name``: dice | bce | dice_bce) on their logits;
    Mask R-CNN trains on its own detection losses (``training_step_loss``), and its ``val_loss`` is
    the same quantity computed with BatchNorm frozen. ``val_jaccard`` is comparable across all three.
    """

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.cfg = plain_data(cfg)
        # Under "cfg" so Lightning's load_from_checkpoint can call SegmentationModule(cfg=...).
        self.save_hyperparameters({"cfg": self.cfg})
        self.outputs = segmentation_outputs(self.cfg)
        self.target = target_key(self.outputs)
        self.model = build_segmenter(self.cfg["model"]["name"], self.cfg["model"], out_channels=len(self.outputs))
        self.val_task2 = Task2Jaccard(len(self.outputs)) if self.target == "attributes" else None
        self.uses_detection_loss = hasattr(self.model, "training_step_loss")
        # Mask R-CNN takes a list of images and resizes them itself: channels_last would not reach it.
        self.channels_last = bool(self.cfg.get("trainer", {}).get("channels_last")) and not self.uses_detection_loss
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Mask R-CNN trains on its own losses, so loss.name (default: focal) is not read for it.
        self.criterion = None if self.uses_detection_loss else build_segmentation_loss(self.cfg["loss"], self.outputs)

    def forward(self, x: Tensor) -> Tensor:  # Lightning's hook
        """Lesion logits (B,1,H,W)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

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
        if not torch.isfinite(loss):
            raise AttnMelError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}: "
                "stopped; the last good checkpoint is kept (try a lower optim.lr)"
            )
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

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_masks(self, images: Tensor) -> Tensor:
        """Probabilities (B,C,H,W) in eval mode; the module's train/eval mode is restored."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self(images).float())
        finally:
            self.train(was_training)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``{"image_id": [...], "prob": (B,1,H,W)}`` (ids passed through when the batch has them)."""
        return {"image_id": batch.get("image_id"), "prob": torch.sigmoid(self(batch["image"]).float())}

    # -- optimiser ----------------------------------------------------------------------------
    def configure_optimizers(self):
        return configure_optimisers(self, self.cfg["optim"])

    # -- checkpoint: plain data only (attnmel.train.rundir.load_run reads this section) -------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["attnmel"] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg,
            "model": self.cfg["model"]["name"],
            "outputs": list(self.outputs),
        }
