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
from typing import Any, Sequence

import numpy as np
import torch

from attnmel import config as config_mod
from attnmel.errors import AttnMelError, file_error
from attnmel.io import atomic_path, write_text
from attnmel.train.inference import TrainedRun, open_run, resolve_precision, score_loader
from attnmel.train.masks import resolve_mask_source
from attnmel.train.rundir import BEST, LAST, RunDir, checkpoint_path, lock_run, read_checkpoint, resume_checkpoint

__all__ = ["evaluate", "evaluate_split", "evaluate_tests", "resolve_precision", "resume_checkpoint", "train"]

log = logging.getLogger("attnmel.train")


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

    return AppendingCSVLogger(run_dir, name=RunDir(run_dir).logs_dir.name, version="csv")


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
    folder = RunDir(run_dir)
    ckpt_dir = folder.checkpoints_dir
    # Lightning appends ".ckpt" to these names: the files are the folder's BEST and LAST.
    best = _checkpoint_callback(dirpath=ckpt_dir, filename=Path(BEST).stem, monitor=monitor, mode="max", save_top_k=1,
                                auto_insert_metric_name=False, enable_version_counter=False)
    # A second callback for last.ckpt: Lightning's save_last only writes when a top-k checkpoint was saved too.
    last = _checkpoint_callback(dirpath=ckpt_dir, filename=Path(LAST).stem, monitor=None, save_top_k=1,
                                auto_insert_metric_name=False, enable_version_counter=False)
    callbacks: list = [best, last, *_weight_averaging(cfg)]
    if t.get("early_stopping_patience"):
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=int(t["early_stopping_patience"])))
    callbacks += callbacks_extra or []
    loggers = [_csv_logger(run_dir, resume_epoch)]
    try:
        loggers.append(TensorBoardLogger(run_dir, name=folder.logs_dir.name, version="tensorboard",
                                         default_hp_metric=False))
    except ModuleNotFoundError:  # tensorboard is optional at run time
        pass
    precision = resolve_precision(cfg)
    if str(t["precision"]) == "auto" and precision == "32-true":
        # The CPU recipes were timed with bf16 units; without them a step is 2.6x (avx512_bf16) to 7x (AMX) slower.
        log.info("trainer.precision auto -> fp32: this CPU has no bf16 units (avx512_bf16 or AMX), so training "
                 "takes several times longer than the bf16 timings in docs/BENCHMARKS.md")
    kwargs: dict[str, Any] = dict(
        max_epochs=int(t["max_epochs"]), accelerator=t["accelerator"], devices=t["devices"],
        num_nodes=int(t["num_nodes"]), strategy=t["strategy"], precision=precision,
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


def _weight_averaging(cfg: dict) -> list:
    """``optim.ema`` > 0: Lightning's EMA callback. It swaps the average in for validation (so the best
    checkpoint is chosen on it) and saves it as the checkpoint's ``state_dict``, with the raw weights under
    ``current_model_state`` for a resume; every reader of a run therefore scores the average."""
    decay = float(cfg["optim"].get("ema") or 0.0)
    if decay <= 0.0:
        return []
    from pytorch_lightning.callbacks import EMAWeightAveraging

    return [EMAWeightAveraging(decay=decay, use_buffers=True)]


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


def train(cfg: dict, *, resume: bool = False, evaluate_after: bool = True, callbacks: list | None = None) -> Path:
    """Train a classifier (or segmenter) into its run folder; returns the folder.

    ``resume``: continue from the newest of ``checkpoints/last.ckpt`` and a SLURM requeue checkpoint
    (:func:`resume_checkpoint`); ``cfg`` may differ from the checkpoint's config only in
    :data:`attnmel.config.RESUME_MAY_CHANGE` (anything else is refused in one line). ``callbacks``: extra
    Lightning callbacks (the training benchmark's step timer).
    """
    _quiet_lightning()
    run_dir = RunDir.of_config(cfg).path
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
    elif RunDir(run_dir).has_checkpoints():
        raise file_error(run_dir, "run folder already holds checkpoints: pass --resume to continue it, "
                                  "or name=<new name> for a new run")
    cfg = resolve_mask_source(cfg)  # before any DataModule exists, and before the config is saved
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(RunDir(run_dir).config_file, config_mod.dump(cfg))
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    module, dm = build_module_and_data(cfg)
    RunDir(run_dir).record_split(dm.index("train").split_file)
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
    """The LightningModule and DataModule of a config whose ``data.masks`` is resolved (:func:`train` does it).

    Whether the training split must carry masks is the DataModule's decision (``loss.regulariser``); reading
    the splits here makes a missing mask a one-line error before the Trainer starts.
    """
    from attnmel.data.datamodule import AttnMelDataModule

    dm = AttnMelDataModule(cfg)
    if cfg.get("task", "classification") == "segmentation":
        from attnmel.train.segmentation import SegmentationModule

        return SegmentationModule(cfg), dm
    from attnmel.train.module import ClassificationModule

    dm.prepare_data()
    dm.setup("fit")
    return ClassificationModule(cfg, dm.class_names, dm.melanoma_index), dm


# -- evaluation ---------------------------------------------------------------------------------
def evaluate(run_dir: str | Path, split: str = "test", device: str | None = None, *, overrides: Sequence[str] = (),
             dataset: str | None = None, root: str | Path | None = None) -> dict:
    """Score a run on a split (loaded once, on ``device`` or ``trainer.accelerator``): see :func:`evaluate_split`.

    ``overrides``: keys that describe the data (``data.artefact_flags=...``); ``dataset`` + ``root``: score
    every image of another dataset instead (external validation), under its own name
    (:mod:`attnmel.train.external`), with the attention maps' Jaccard where it has lesion masks."""
    from attnmel.train.external import data_view

    run = open_run(run_dir, device)
    view = data_view(run.cfg, split, overrides, dataset, root) if (overrides or dataset or root) else None
    return evaluate_split(run, split, view)


def _evaluate_segmenter(run: TrainedRun) -> dict:
    """A segmenter is scored on ``test`` where it has lesion masks, else on ``val`` (the ISIC 2017 test masks are
    not in every copy of the set), saying so; with masks on neither, training still ends cleanly."""
    from attnmel.train.segment import split_has_masks

    for split in ("test", "val"):
        if split_has_masks(run.cfg, split):
            if split != "test":
                log.warning("%s: split 'test' has no lesion masks; the segmenter is scored on '%s' instead",
                            run.cfg["data"]["root"], split)
            return evaluate_split(run, split)
    log.warning("%s: no split has lesion masks; the segmenter was not scored", run.cfg["data"]["root"])
    return {}


def evaluate_split(run: TrainedRun, split: str = "test", view: Any = None) -> dict:
    """Score an opened run on a split: ``metrics.json`` (``classification[_<split>]`` and ``calibration[_<split>]``,
    or ``segmentation`` / ``attributes`` for a segmentation run) and ``predictions[_<split>].csv``. ``view``
    (:func:`attnmel.train.external.data_view`): the data-describing overrides, or external data scored under
    its own name. Scoring the run's own test split first fits the temperature on val (:func:`calibrate`); every
    split's probabilities (external data's too) are scaled by it when it was kept (:mod:`attnmel.train.calibration`)."""
    from attnmel.metrics.classification import classification_metrics, write_predictions_csv
    from attnmel.train.calibration import apply_kept, read_calibration
    from attnmel.train.external import DataView, attention_jaccard, run_on_view, warn_small_images

    folder = run.folder
    if run.cfg.get("task", "classification") == "segmentation":
        from attnmel.train.segment import evaluate_attributes, evaluate_segmentation
        from attnmel.train.segmentation import segmentation_outputs

        if segmentation_outputs(run.cfg) != ("lesion",):  # ISIC 2018 Task 2: the official attribute score
            scores = evaluate_attributes(run, split)
            folder.update_metrics({"attributes": scores, "split": split})
            return scores
        scores = evaluate_segmentation(run, split)
        folder.update_metrics({"segmentation": scores, "split": split})
        return scores
    view = view or DataView(run.cfg, split)
    run, split = run_on_view(run, view), view.split
    loader = run.data().eval_dataloader(split)
    if view.tag:
        warn_small_images(run.data().index(split).samples, int(view.cfg["data"]["image_size"]), run.data().root)
    scored = score_loader(run, loader)
    if not scored.ids:
        raise AttnMelError(f"{run.cfg['data']['root']}: split '{split}' has no images")
    suffix = view.suffix()
    extra: dict = {}
    if run.uses_svm:
        extra[f"classification_softmax_only{suffix}"] = classification_metrics(
            scored.labels, scored.softmax, run.class_names, run.melanoma_index)
    # Scoring test (re)fits the temperature on val; every split then reports the kept one's probabilities.
    fit = split == "test" and not view.tag
    cal = _calibrate_or_keep(run, (scored.probs, scored.labels)) if fit else read_calibration(run.run_dir)
    probs = apply_kept(scored.probs, cal)
    metrics = classification_metrics(scored.labels, probs, run.class_names, run.melanoma_index)
    extra.update(_artefact_metrics(view, run.data(), split, scored.ids, scored.labels, probs, run.melanoma_index))
    if view.tag:
        if getattr(loader.dataset, "with_mask", False):
            metrics["attention_jaccard"] = attention_jaccard(run.model, loader, run.melanoma_index)
        metrics.update(dataset=view.cfg["data"]["dataset"], root=str(view.cfg["data"]["root"]))
        extra["external"] = sorted({*(folder.metrics().get("external") or []), view.tag})
    else:
        extra["split"] = split
    write_predictions_csv(folder.predictions(view.tag or split), scored.ids, probs, run.class_names)
    folder.update_metrics({f"classification{suffix}": metrics, **extra,
                           f"calibration{suffix}": calibration_section(scored.labels, probs, run.melanoma_index, cal),
                           "checkpoint": str(run.checkpoint.relative_to(run.run_dir))})
    return metrics


def calibrate(run: TrainedRun, test: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Fit the temperature on the validation split's probabilities and judge it on test
    (:func:`attnmel.train.calibration.fit_and_judge`; ``test``: its probabilities and labels when already
    scored); writes ``RUN/calibration.json``."""
    from attnmel.train.calibration import fit_and_judge

    val = score_loader(run, run.data().eval_dataloader("val"))
    if not val.ids:
        raise AttnMelError(f"{run.cfg['data']['root']}: split 'val' has no images")
    if test is None:
        scored = score_loader(run, run.data().eval_dataloader("test"))
        test = (scored.probs, scored.labels)
    return fit_and_judge(run.run_dir, (val.probs, val.labels), test, run.melanoma_index,
                         checkpoint=str(run.checkpoint.relative_to(run.run_dir)))


def _calibrate_or_keep(run: TrainedRun, test: tuple[np.ndarray, np.ndarray]) -> dict | None:
    """:func:`calibrate`; where the tree has no usable validation split (a test-only copy of a dataset), the
    run's earlier ``calibration.json`` (if any) with a one-line warning, instead of failing the test scores."""
    from attnmel.train.calibration import read_calibration

    try:
        return calibrate(run, test=test)
    except AttnMelError as e:
        earlier = read_calibration(run.run_dir)
        log.warning("no temperature fitted (%s); %s", str(e).splitlines()[0],
                    "keeping the run's earlier temperature" if earlier else "probabilities unscaled")
        return earlier


def calibration_section(labels: np.ndarray, probs: np.ndarray, melanoma_index: int, cal: dict | None) -> dict:
    """metrics.json ``calibration[_<split>]``: ECE and reliability bins of the reported p(melanoma), and whether
    a temperature was applied to them."""
    from attnmel.metrics.calibration import calibration_summary

    out = calibration_summary(np.asarray(labels) == melanoma_index, probs[:, melanoma_index])
    out["temperature_applied"] = float(cal["temperature"]) if cal and cal.get("kept") else None
    return out


def _artefact_metrics(view, dm, split: str, ids, labels, probs, mel: int) -> dict:
    """``artefacts<suffix>``: AUC and mean melanoma probability with / without each flagged artefact, where
    ``data.artefact_flags`` is set (:mod:`attnmel.metrics.artefacts`)."""
    flags_path = view.cfg["data"].get("artefact_flags")
    if not flags_path:
        return {}
    from attnmel.data.artefacts import read_flags
    from attnmel.metrics.artefacts import artefact_stratified

    flags = read_flags(flags_path, [s.image_id for s in dm.index(split).samples])
    is_mel = np.asarray(labels) == mel
    return {f"artefacts{view.suffix()}": artefact_stratified(flags, list(ids), is_mel, probs[:, mel])}


def evaluate_tests(run_dir: str | Path, device: str | None = None) -> dict:
    """``evaluate`` on ``test``; returns its metrics. A synthetic set with ``data.synthetic.extra_tests`` (the
    shortcut benchmark) is scored first on ``val`` and on each extra test split (``test_reversed``, ...),
    so that metrics.json holds them side by side (``classification_val``, ``classification_test_reversed``).
    The run is loaded once and one DataModule serves every split."""
    from attnmel.data.synthetic import extra_test_splits

    run = open_run(run_dir, device)
    if run.cfg.get("task", "classification") == "segmentation":
        return _evaluate_segmenter(run)
    extra = extra_test_splits(run.cfg["data"])
    if extra and run.cfg.get("task", "classification") == "classification":
        calibrate(run)  # first, so that val and the extra splits get the same temperature as test
    for split in ("val", *extra) if extra else ():
        evaluate_split(run, split)
    return evaluate_split(run, "test")  # last, so metrics.json's "split" stays "test"
