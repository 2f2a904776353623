"""The LightningModule for classifiers: it wires model, loss, regulariser, optimiser and metrics."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from attnmel.errors import AttnMelError
from attnmel.losses import build_classification_loss
from attnmel.losses.regularisers import DEFAULT_WEIGHTS, build_regulariser
from attnmel.models import build_model
from attnmel.train.optim import configure_optimisers

CHECKPOINT_FORMAT = 1
log = logging.getLogger("attnmel.train")


class ClassificationModule(pl.LightningModule):
    """Trains any classifier of :func:`attnmel.models.build_model` on the DataModule's batch dicts.

    The checkpoint stores the resolved config, class names and melanoma column under ``"attnmel"``
    as plain data, so a run folder is self-describing and checkpoints load with ``weights_only=True``.
    """

    def __init__(self, cfg: dict, class_names: list[str], melanoma_index: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.class_names = list(class_names)
        self.melanoma_index = int(melanoma_index)
        self.model = build_model(cfg["model"], num_classes=len(class_names))
        self.criterion = build_classification_loss(cfg["loss"])
        reg_name = cfg["loss"].get("regulariser") or "none"
        self.regulariser = build_regulariser(reg_name, cfg["loss"].get("params") or {})
        self.reg_weights: dict[str, float] = dict(cfg["loss"].get("weights") or DEFAULT_WEIGHTS)
        if cfg["model"].get("attention") == "softmax" and not self.regulariser.suits_softmax:
            log.warning("loss.regulariser=%s with model.attention=softmax: softmax maps sum to 1, so a Dice "
                        "term against a mask is badly scaled (the paper regularises sigmoid attention)", reg_name)
        self.channels_last = bool(cfg["trainer"].get("channels_last"))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._val_scores: list[Tensor] = []
        self._val_labels: list[Tensor] = []

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor):  # Lightning's hook
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _step(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Any]:
        image = batch["image"]
        if getattr(self.regulariser, "needs_input_grad", False) and self.training:
            image = image.detach().requires_grad_(True)
            batch = {**batch, "image": image}
        out = self(image)
        cls_loss = self.criterion(out.logits.float(), batch["label"])
        reg = self.regulariser(out, batch, self.reg_weights)
        return cls_loss, reg, out

    # -- training -----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        # Global RNG (dropout) seeded per epoch so a resumed run repeats an uninterrupted one.
        torch.manual_seed(int(self.cfg["seed"]) * 100003 + self.current_epoch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        cls_loss, reg, _ = self._step(batch)
        loss = cls_loss + reg
        if not torch.isfinite(loss):
            raise AttnMelError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}: "
                "stopped; the last good checkpoint is kept (try a lower optim.lr)"
            )
        bs = batch["label"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("train_cls_loss", cls_loss, on_step=False, on_epoch=True, batch_size=bs)
        if reg.requires_grad or float(reg) != 0.0:
            self.log("train_reg_loss", reg, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    # -- validation: AUC of the melanoma column, for model selection ---------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_scores, self._val_labels = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch["image"])
        cls_loss = self.criterion(out.logits.float(), batch["label"])
        probs = torch.softmax(out.logits.detach().float(), dim=1)
        self._val_scores.append(probs[:, self.melanoma_index].cpu())
        self._val_labels.append((batch["label"] == self.melanoma_index).long().cpu())
        self.log("val_loss", cls_loss.detach(), prog_bar=True, batch_size=batch["label"].shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        scores = torch.cat(self._val_scores) if self._val_scores else torch.zeros(0)
        labels = torch.cat(self._val_labels) if self._val_labels else torch.zeros(0, dtype=torch.long)
        if self.trainer.world_size > 1:
            scores = self.all_gather(scores).reshape(-1).cpu()
            labels = self.all_gather(labels).reshape(-1).cpu()
        auc = binary_auc(labels.numpy(), scores.numpy())
        self.log("val_auc", auc, prog_bar=True, sync_dist=False, rank_zero_only=False)

    # -- inference ----------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return torch.softmax(self(batch["image"]).logits.float(), dim=1)

    # -- optimiser ----------------------------------------------------------------------------
    def configure_optimizers(self):
        return configure_optimisers(self, self.cfg["optim"])

    # -- checkpoint: plain data only ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["attnmel"] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg,
            "class_names": self.class_names,
            "melanoma_index": self.melanoma_index,
            "model": self.cfg["model"]["name"],
        }


def binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of the melanoma scores; 0.5 when a split holds one class only (nothing to rank)."""
    labels = np.asarray(labels).astype(int)
    if labels.min(initial=0) == labels.max(initial=0) or not np.all(np.isfinite(scores)):
        return 0.5 if np.all(np.isfinite(scores)) else math.nan
    return float(roc_auc_score(labels, scores))
