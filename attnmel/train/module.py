"""The LightningModules: :class:`AttnMelModule` (what every run's module shares) and the classifiers' one.

The segmenters' module (:class:`attnmel.train.segmentation.SegmentationModule`) derives from the same base.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities import dim_zero_cat

from attnmel.errors import AttnMelError
from attnmel.losses import build_classification_loss
from attnmel.losses.regularisers import DEFAULT_WEIGHTS, build_regulariser
from attnmel.models import build_model
from attnmel.train.optim import configure_optimisers

CHECKPOINT_FORMAT = 1
log = logging.getLogger("attnmel.train")


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


class AttnMelModule(pl.LightningModule):
    """What both LightningModules share: the config as plain data (also Lightning's hyperparameters, so
    ``load_from_checkpoint`` works), the model with an optional channels-last forward, the non-finite-loss guard,
    the optimiser hook and the checkpoint's ``"attnmel"`` section (:data:`CHECKPOINT_FORMAT`, the config, the
    model name and :meth:`checkpoint_extra`), which :func:`attnmel.train.rundir.load_run` reads. Checkpoints hold
    plain data only and load with ``weights_only=True``.
    """

    def __init__(self, cfg: dict, **hparams: Any) -> None:
        super().__init__()
        self.cfg = plain_data(cfg)
        self.save_hyperparameters({"cfg": self.cfg, **plain_data(hparams)})
        self.channels_last = False

    def set_model(self, model: nn.Module, channels_last: bool) -> None:
        """The network, in channels-last memory format when asked (``trainer.channels_last``)."""
        self.channels_last = bool(channels_last)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model

    def forward(self, x: Tensor):  # Lightning's hook
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def check_finite(self, loss: Tensor, batch_idx: int) -> None:
        """Stop on a NaN or infinite training loss, in one line; the last good checkpoint stays."""
        if not torch.isfinite(loss):
            raise AttnMelError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}: "
                "stopped; the last good checkpoint is kept (try a lower optim.lr)"
            )

    def configure_optimizers(self):
        return configure_optimisers(self, self.cfg["optim"])

    def checkpoint_extra(self) -> dict[str, Any]:
        """The module's own plain data in the checkpoint's ``"attnmel"`` section."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["attnmel"] = {"format": CHECKPOINT_FORMAT, "config": self.cfg, "model": self.cfg["model"]["name"],
                                 **self.checkpoint_extra()}


class ClassificationModule(AttnMelModule):
    """Trains any classifier of :func:`attnmel.models.build_model` on the DataModule's batch dicts.

    The checkpoint's ``"attnmel"`` section adds the class names and the melanoma column.
    """

    def __init__(self, cfg: dict, class_names: list[str], melanoma_index: int) -> None:
        super().__init__(cfg, class_names=list(class_names), melanoma_index=int(melanoma_index))
        cfg = self.cfg
        self.class_names = list(class_names)
        self.melanoma_index = int(melanoma_index)
        self.set_model(build_model(cfg["model"], num_classes=len(class_names)),
                       bool(cfg["trainer"].get("channels_last")))
        self.criterion = build_classification_loss(cfg["loss"])
        reg_name = cfg["loss"].get("regulariser") or "none"
        self.regulariser = build_regulariser(reg_name, cfg["loss"].get("params") or {})
        self.reg_weights: dict[str, float] = dict(cfg["loss"].get("weights") or DEFAULT_WEIGHTS)
        if cfg["model"].get("attention") == "softmax" and not self.regulariser.suits_softmax:
            log.warning("loss.regulariser=%s with model.attention=softmax: softmax maps sum to 1, so a Dice "
                        "term against a mask is badly scaled (the paper regularises sigmoid attention)", reg_name)
        self.val_auroc = ValidationAUROC()

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
        self.check_finite(loss, batch_idx)
        bs = batch["label"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("train_cls_loss", cls_loss, on_step=False, on_epoch=True, batch_size=bs)
        if reg.requires_grad or float(reg) != 0.0:
            self.log("train_reg_loss", reg, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    # -- validation: AUC of the melanoma column, for model selection ---------------------------
    def on_validation_epoch_start(self) -> None:
        self.val_auroc.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch["image"])
        cls_loss = self.criterion(out.logits.float(), batch["label"])
        probs = torch.softmax(out.logits.detach().float(), dim=1)
        self.val_auroc.update(probs[:, self.melanoma_index], (batch["label"] == self.melanoma_index).long())
        self.log("val_loss", cls_loss.detach(), prog_bar=True, batch_size=batch["label"].shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        # compute() gathers every rank's scores under DDP (torchmetrics' sync), so each rank logs the same AUC.
        self.log("val_auc", self.val_auroc.compute(), prog_bar=True, sync_dist=False, rank_zero_only=False)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "melanoma_index": self.melanoma_index}


class ValidationAUROC(BinaryAUROC):
    """Exact ROC AUC of the melanoma scores (torchmetrics, synced across DDP ranks); 0.5 when the split holds
    one class only (nothing to rank; torchmetrics would say 0 and pick a checkpoint by noise), NaN when a
    score is not finite."""

    def __init__(self) -> None:
        super().__init__(thresholds=None)

    def compute(self) -> Tensor:
        if isinstance(self.preds, list) and not self.preds:
            return torch.tensor(0.5)
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        if not bool(torch.isfinite(preds).all()):
            return torch.tensor(math.nan)
        if target.numel() == 0 or bool(target.min() == target.max()):
            return torch.tensor(0.5)
        return super().compute()
