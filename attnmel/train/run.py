"""Training into a run folder (:mod:`attnmel.train.rundir`), and evaluating from it without repeating flags.

Nothing is lost on a fault: checkpoints are written to a temporary file beside them and renamed
(an atomic CheckpointIO), a resume appends to ``logs/csv/metrics.csv`` and keeps the best score even
when the folder moved, Ctrl-C ends with a message and a resumable ``last.ckpt``, and a second process on
the same folder is refused.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnmel import config as config_mod
from attnmel.errors import AttnMelError, file_error
from attnmel.io import atomic_path, write_text
from attnmel.train.rundir import (
    BEST,
    CONFIG,
    LAST,
    LoadedRun,
    checkpoint_path,
    load_run,
    lock_run,
    predictions_path,
    read_checkpoint,
    record_split,
    run_dir_of,
    update_metrics,
)

log = logging.getLogger("attnmel.train")
HPC_PREFIX = "hpc_ckpt_"  # Lightning's SLURM auto-requeue checkpoints, in the run folder


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*isinstance.*treespec.*")
    # On a SLURM login node every local run would be told to prepend `srun`; cluster jobs go through sbatch.
    warnings.filterwarnings("ignore", message=".*`srun` command is available on your system but is not used.*")


def selection_metric(cfg: dict) -> str:
    """What picks the best checkpoint: validation AUC (classifiers) or mean Jaccard (segmenters)."""
    return "val_jaccard" if cfg.get("task", "classification") == "segmentation" else "val_auc"


def resolve_precision(cfg: dict) -> str:
    """``trainer.precision: auto``: bf16 autocast where the hardware computes bf16 natively, else fp32.

    bf16 autocast with channels-last was the fastest setting of the model benchmark on a CPU with
    avx512_bf16 (about 2x fp32, same predicted classes); on a CPU without bf16 units it is emulated and slower.
    ``ATTNMEL_BF16=off|on`` overrides the CPU's answer (:mod:`attnmel.models.precision`).
    """
    p = str(cfg["trainer"]["precision"])
    if p != "auto":
        return p
    accel = str(cfg["trainer"]["accelerator"])
    if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    from attnmel.models.precision import has_fast_bf16

    return "bf16-mixed" if has_fast_bf16("cpu") else "32-true"


def _atomic_checkpoint_io():
    """A Lightning CheckpointIO that writes a checkpoint to a temporary file in its own folder, then renames it.

    Lightning's own stages the file elsewhere and moves it across filesystems, so a full disk left a
    truncated ``last.ckpt``. Here the previous checkpoint survives any failed write.
    """
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
            save_checkpoint_atomically(checkpoint, Path(path))

    return AtomicCheckpointIO()


def save_checkpoint_atomically(checkpoint: dict, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename; a failure keeps the old file."""
    import io

    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        raise file_error(path, f"cannot write checkpoint ({e.strerror or e}); the previous one is kept") from None


def _checkpoint_callback(**kwargs: Any):
    """A ModelCheckpoint that keeps its best score when the run folder was moved or copied.

    Lightning drops ``best_model_score`` when the saved ``dirpath`` differs from today's, so a resumed,
    moved run replaced ``best.ckpt`` with a worse epoch. The run folder's layout is fixed (``checkpoints/``
    beside ``config.yaml``), so the saved state is this folder's wherever it now is.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    class RunCheckpoint(ModelCheckpoint):
        @property
        def state_key(self) -> str:
            # ModelCheckpoint's key holds the class name: keep it, so runs saved before still restore.
            return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            saved_dir = state_dict.get("dirpath", self.dirpath)
            super().load_state_dict({**state_dict, "dirpath": self.dirpath})
            if saved_dir != self.dirpath and state_dict.get("best_model_path"):
                self.best_model_path = os.path.join(self.dirpath, os.path.basename(state_dict["best_model_path"]))
                self.best_k_models = ({self.best_model_path: self.best_model_score}
                                      if self.best_model_score is not None else {})
                self.kth_best_model_path = self.best_model_path
                if self.best_model_score is not None:
                    self.kth_value = self.best_model_score
                self.last_model_path = ""

    return RunCheckpoint(**kwargs)


def _csv_logger(run_dir: Path, resume_epoch: int | None):
    """The CSV logger of ``logs/csv/metrics.csv``; on resume it appends instead of starting the file again.

    Rows of epochs after the checkpoint's (an epoch interrupted half-way) are dropped first, so every epoch
    appears once.
    """
    import csv

    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            path = Path(self.metrics_file_path)
            if not path.is_file():
                return
            if resume_epoch is None:
                path.unlink()  # a fresh run: nothing of an earlier run belongs here
                return
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                fields = list(reader.fieldnames or [])
                rows = [r for r in reader if not r.get("epoch") or _epoch_of(r["epoch"]) <= resume_epoch]
            with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
                w = csv.DictWriter(out, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)
            self.metrics_keys = fields

    class AppendingCSVLogger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return AppendingCSVLogger(run_dir, name="logs", version="csv")


def _epoch_of(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return -1.0


# Words of Lightning's messages -> the key they are about (for a one-line error naming the key).
_TRAINER_KEYS = (("precision", "precision"), ("strategy", "strategy"), ("num_nodes", "num_nodes"),
                 ("accelerator", "accelerator"), ("gpu", "accelerator"), ("cuda", "accelerator"),
                 ("mps", "accelerator"), ("tpu", "accelerator"), ("device", "devices"),
                 ("limit_train_batches", "limit_train_batches"), ("limit_val_batches", "limit_val_batches"))


def _trainer_error(cfg: dict, e: BaseException) -> AttnMelError:
    text = " ".join(str(e).split()) or e.__class__.__name__
    low = text.lower()
    key = next((k for word, k in _TRAINER_KEYS if word in low), None)
    t = cfg["trainer"]
    if key is None:
        named = ", ".join(f"trainer.{k}={t[k]!r}" for k in ("accelerator", "devices", "strategy", "precision"))
        return AttnMelError(f"config: Lightning refused the trainer settings ({named}): {text[:300]}")
    return AttnMelError(f"config: trainer.{key}={t.get(key)!r} refused by Lightning: {text[:300]}")


def build_trainer(cfg: dict, run_dir: Path, *, callbacks_extra: list | None = None,
                  resume_epoch: int | None = None):
    """The Lightning Trainer of a run: checkpoints by the selection metric, CSV + TensorBoard logs.

    ``resume_epoch``: the epoch of the checkpoint being resumed (the CSV log is appended to, after it).
    A setting Lightning refuses becomes a one-line error naming the ``trainer.*`` key.
    """
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.callbacks import EarlyStopping
    from pytorch_lightning.loggers import TensorBoardLogger

    t = cfg["trainer"]
    monitor = selection_metric(cfg)
    ckpt_dir = run_dir / "checkpoints"
    best = _checkpoint_callback(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max", save_top_k=1,
                                auto_insert_metric_name=False, enable_version_counter=False)
    # A second callback for last.ckpt: Lightning's save_last only writes when a top-k checkpoint was saved too.
    last = _checkpoint_callback(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                auto_insert_metric_name=False, enable_version_counter=False)
    callbacks: list = [best, last]
    if t.get("early_stopping_patience"):
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=int(t["early_stopping_patience"])))
    callbacks += callbacks_extra or []
    loggers = [_csv_logger(run_dir, resume_epoch)]
    try:
        loggers.append(TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False))
    except ModuleNotFoundError:  # tensorboard is optional at run time
        pass
    kwargs: dict[str, Any] = dict(
        max_epochs=int(t["max_epochs"]), accelerator=t["accelerator"], devices=t["devices"],
        num_nodes=int(t["num_nodes"]), strategy=t["strategy"], precision=resolve_precision(cfg),
        callbacks=callbacks, logger=loggers, log_every_n_steps=int(t["log_every_n_steps"]),
        enable_progress_bar=bool(t["progress_bar"]), enable_model_summary=False,
        deterministic=bool(t["deterministic"]), default_root_dir=run_dir, num_sanity_val_steps=0,
        plugins=[_atomic_checkpoint_io(), *_cluster_plugins()],
    )
    for k in ("limit_train_batches", "limit_val_batches"):
        if t.get(k) is not None:
            kwargs[k] = t[k]
    try:
        return pl.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as e:
        raise _trainer_error(cfg, e) from None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says whether and how the run can be resumed."""


def _cluster_plugins() -> list:
    """Inside a SLURM job: Lightning's SLURM environment with auto-requeue. On USR1 (which
    ``attnmel sweep --launcher slurm`` asks sbatch to send before the time limit) it saves
    ``hpc_ckpt_<n>.ckpt`` in the run folder and requeues the job, which resumes from it."""
    import signal

    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)]


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint an interrupted run resumes from: the newest of ``checkpoints/last.ckpt`` and the
    SLURM requeue checkpoints ``hpc_ckpt_<n>.ckpt``; None when there is neither."""
    run_dir = Path(run_dir)
    found = [p for p in [run_dir / "checkpoints" / LAST, *run_dir.glob(f"{HPC_PREFIX}*.ckpt")] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def train(cfg: dict, *, resume: bool = False, evaluate_after: bool = True, callbacks: list | None = None) -> Path:
    """Train a classifier (or segmenter) into its run folder; returns the folder.

    ``resume``: continue from the newest of ``checkpoints/last.ckpt`` and a SLURM requeue checkpoint
    (:func:`resume_checkpoint`); ``cfg`` may differ from the checkpoint's config only in
    :data:`attnmel.config.RESUME_MAY_CHANGE` (anything else is refused in one line). ``callbacks``: extra
    Lightning callbacks (the training benchmark's step timer).
    """
    _quiet_lightning()
    run_dir = run_dir_of(cfg)
    with lock_run(run_dir):
        return _train_locked(cfg, run_dir, resume, evaluate_after, callbacks)


def _train_locked(cfg: dict, run_dir: Path, resume: bool, evaluate_after: bool, callbacks: list | None) -> Path:
    import pytorch_lightning as pl

    last = resume_checkpoint(run_dir) if resume else None
    resume_epoch = None
    if resume:
        if last is None:
            raise file_error(checkpoint_path(run_dir, LAST), "no checkpoint to resume from (train without --resume "
                                                             "first)")
        ckpt = read_checkpoint(last)
        config_mod.check_resume_changes(ckpt["attnmel"]["config"], cfg, str(run_dir))
        resume_epoch = int(ckpt.get("epoch", 0))
        del ckpt
        log.info("%s: resuming from %s", run_dir, last)
    elif resume_checkpoint(run_dir) is not None or any((run_dir / "checkpoints").glob("*.ckpt")):
        raise file_error(run_dir, "run folder already holds checkpoints: pass --resume to continue it, "
                                  "or name=<new name> for a new run")
    cfg = resolve_mask_source(cfg)  # before any DataModule exists, and before the config is saved
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / CONFIG, config_mod.dump(cfg))
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    module, dm = build_module_and_data(cfg)
    record_split(run_dir, dm.index("train").split_file)
    trainer = build_trainer(cfg, run_dir, resume_epoch=resume_epoch, callbacks_extra=callbacks)
    _fit(trainer, module, dm, last, run_dir)
    if not checkpoint_path(run_dir, BEST).is_file():
        raise file_error(run_dir, "training finished without a checkpoint (was there any validation data?)")
    if evaluate_after and trainer.is_global_zero:
        evaluate_tests(run_dir)
    return run_dir


def _fit(trainer, module, dm, last: Path | None, run_dir: Path) -> None:
    """``trainer.fit``, with Ctrl-C turned into :class:`TrainingInterrupted` (Lightning exits with status 1)."""
    import signal

    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last else None,
                    weights_only=True if last else None)
    except SystemExit:
        if not trainer.interrupted:
            raise
        # Lightning ignores SIGINT from here on; give the user their Ctrl-C back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise _interrupted(run_dir) from None
    if trainer.interrupted:
        raise _interrupted(run_dir)


def _interrupted(run_dir: Path) -> TrainingInterrupted:
    if checkpoint_path(run_dir, LAST).is_file():
        return TrainingInterrupted(f"{run_dir}: training interrupted; the last finished epoch is kept: "
                                   f"continue with `attnmel train --resume {run_dir}`")
    return TrainingInterrupted(f"{run_dir}: training interrupted before the first epoch finished "
                               "(nothing to resume: train again)")


def build_module_and_data(cfg: dict):
    """The LightningModule and DataModule a config describes."""
    from attnmel.data.datamodule import AttnMelDataModule

    dm = AttnMelDataModule(resolve_mask_source(cfg))
    if cfg.get("task", "classification") == "segmentation":
        from attnmel.train.segmentation import SegmentationModule

        return SegmentationModule(cfg), dm
    from attnmel.losses.regularisers import needs_masks
    from attnmel.train.module import ClassificationModule

    dm.prepare_data()
    dm.setup("fit")
    target = needs_masks(cfg["loss"].get("regulariser") or "none")
    if target:
        dm.require_masks(target, reason=f"loss.regulariser={cfg['loss']['regulariser']}")
    return ClassificationModule(cfg, dm.class_names, dm.melanoma_index), dm


def resolve_mask_source(cfg: dict) -> dict:
    """``data.masks`` naming a segmentation run -> the folder of that run's masks for this dataset.

    The masks of every image of the dataset are predicted once (:func:`ensure_predicted_masks`), here in the
    train layer, so the DataModule only ever reads a folder of masks. Any other config comes back unchanged.
    """
    from attnmel.data.datamodule import is_segmentation_run

    d = cfg["data"]
    if not d.get("masks") or not is_segmentation_run(d["masks"]):
        return cfg
    out = ensure_predicted_masks(d["masks"], d["dataset"], d["root"], num_classes=int(d["num_classes"]))
    return {**cfg, "data": {**d, "masks": str(out)}}


def ensure_predicted_masks(seg_run_dir: str | Path, dataset: str, root: str | Path, num_classes: int = 2,
                           progress: bool = True) -> Path:
    """Masks of every image of a dataset (all splits) from a segmentation run, made once and kept.

    They live in ``<seg run>/masks/<dataset>/`` as ``<image_id>_segmentation.png``; images already done
    are skipped, so an interrupted pass resumes and a second classifier reuses them.
    """
    from attnmel.data.datamodule import predicted_masks_dir
    from attnmel.train.segment import check_segmentation_run, samples_without_masks, write_masks

    out = predicted_masks_dir(seg_run_dir, dataset)
    todo = samples_without_masks(dataset, root, out, num_classes=num_classes)
    if todo:
        from attnmel.train.segmentation import segmentation_outputs

        run = check_segmentation_run(load_run(seg_run_dir))
        if segmentation_outputs(run.cfg) != ("lesion",):
            raise AttnMelError(f"{seg_run_dir}: data.masks needs a lesion segmentation run; this one detects "
                               "attributes")
        write_masks(run, [s.image for s in todo], out, ids=[s.image_id for s in todo], progress=progress)
    return out


# -- evaluation ---------------------------------------------------------------------------------
@torch.inference_mode()
def predict_probs(model: nn.Module, loader, device: str = "cpu", with_features: bool = False):
    """Image ids, class probabilities (N, K) and labels (N,) over a DataLoader, batched, no gradients;
    ``with_features`` adds the penultimate features (N, D) as a fourth value."""
    model.to(device).eval()
    ids: list[str] = []
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    for batch in loader:
        out = model(batch["image"].to(device))
        probs.append(torch.softmax(out.logits.float(), dim=1).cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        if with_features:
            feats.append(out.features.float().cpu().numpy())
        ids += list(batch["image_id"])
    if not probs:
        empty = ([], np.zeros((0, 0)), np.zeros(0, dtype=int))
        return (*empty, np.zeros((0, 0))) if with_features else empty
    result = (ids, np.concatenate(probs), np.concatenate(labels))
    return (*result, np.concatenate(feats)) if with_features else result


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    """Score a run on a split: ``metrics.json`` (``classification`` section) and ``predictions.csv``."""
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.metrics.classification import classification_metrics, write_predictions_csv

    run = load_run(run_dir)
    if run.cfg.get("task", "classification") == "segmentation":
        from attnmel.train.segment import evaluate_attributes, evaluate_segmentation
        from attnmel.train.segmentation import segmentation_outputs

        if segmentation_outputs(run.cfg) != ("lesion",):  # ISIC 2018 Task 2: the official attribute score
            scores = evaluate_attributes(run, split)
            update_metrics(run.run_dir, {"attributes": scores, "split": split})
            return scores
        scores = evaluate_segmentation(run, split)
        update_metrics(run.run_dir, {"segmentation": scores, "split": split})
        return scores
    dm = AttnMelDataModule(resolve_mask_source(run.cfg), generate=False)
    loader = dm.eval_dataloader(split)
    use_svm = bool(run.cfg["model"].get("svm"))
    ids, probs, labels, *feats = predict_probs(run.model, loader, with_features=use_svm)
    if not ids:
        raise AttnMelError(f"{run.cfg['data']['root']}: split '{split}' has no images")
    extra: dict = {}
    if use_svm:
        softmax_only = classification_metrics(labels, probs, run.class_names, run.melanoma_index)
        probs = _svm_average(run, dm, probs, feats[0])
        extra["classification_softmax_only" + ("" if split == "test" else f"_{split}")] = softmax_only
    metrics = classification_metrics(labels, probs, run.class_names, run.melanoma_index)
    suffix = "" if split == "test" else f"_{split}"
    write_predictions_csv(predictions_path(run.run_dir, split), ids, probs, run.class_names)
    update_metrics(run.run_dir, {f"classification{suffix}": metrics, "split": split, **extra,
                                 "checkpoint": str(run.checkpoint.relative_to(run.run_dir))})
    return metrics


def evaluate_tests(run_dir: str | Path) -> dict:
    """``evaluate`` on ``test``; returns its metrics. A synthetic set with ``data.synthetic.extra_tests`` (the
    shortcut benchmark) is scored first on ``val`` and on each extra test split (``test_reversed``, ...),
    so that metrics.json holds them side by side (``classification_val``, ``classification_test_reversed``)."""
    from attnmel.data.synthetic import extra_test_splits

    extra = extra_test_splits(load_run(run_dir).cfg["data"])
    for split in ("val", *extra) if extra else ():
        evaluate(run_dir, split=split)
    return evaluate(run_dir, split="test")  # last, so metrics.json's "split" stays "test"


def _svm_average(run: LoadedRun, dm, softmax: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """The TMI 2017 fusion: fit (once, on the training split) the SVM on penultimate features, then average."""
    from attnmel.train.svm import SVM_FILE, FeatureSVM, average_with_svm, fit_feature_svm

    path = run.run_dir / SVM_FILE
    if path.is_file():
        svm = FeatureSVM.load(path)
    else:
        _, _, train_labels, train_feats = predict_probs(run.model, dm.eval_dataloader("train"), with_features=True)
        svm = fit_feature_svm(train_feats, train_labels, num_classes=len(run.class_names), seed=int(run.cfg["seed"]))
        svm.save(path)
    return average_with_svm(softmax, feats, svm)
