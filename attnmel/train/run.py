"""A run folder, ``runs/<name>/``: train into it, and evaluate / predict from it without repeating flags.

Layout: ``config.yaml`` (the full resolved config), ``checkpoints/best.ckpt`` (best validation AUC) and
``last.ckpt``, ``metrics.json``, ``predictions.csv``, ``logs/`` (CSV + TensorBoard), ``report/``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnmel import config as config_mod
from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_json, write_text

log = logging.getLogger("attnmel.train")

BEST, LAST = "best.ckpt", "last.ckpt"
HPC_PREFIX = "hpc_ckpt_"  # Lightning's SLURM auto-requeue checkpoints, in the run folder


@dataclass
class LoadedRun:
    """What :func:`load_run` gives back: everything needed to use a trained run."""

    run_dir: Path
    cfg: dict
    model: nn.Module
    class_names: list[str]
    melanoma_index: int
    checkpoint: Path


def run_dir_of(cfg: dict) -> Path:
    return Path(cfg["out_dir"]) / str(cfg["name"])


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
    """
    p = str(cfg["trainer"]["precision"])
    if p != "auto":
        return p
    accel = str(cfg["trainer"]["accelerator"])
    if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    try:
        cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        cpu_bf16 = False
    return "bf16-mixed" if cpu_bf16 else "32-true"


def build_trainer(cfg: dict, run_dir: Path, *, callbacks_extra: list | None = None):
    """The Lightning Trainer of a run: checkpoints by the selection metric, CSV + TensorBoard logs."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    t = cfg["trainer"]
    monitor = selection_metric(cfg)
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode="max",
                           save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    # A second callback for last.ckpt: Lightning's save_last only writes when a top-k checkpoint was saved too.
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    callbacks: list = [best, last]
    if t.get("early_stopping_patience"):
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=int(t["early_stopping_patience"])))
    callbacks += callbacks_extra or []
    plugins = _cluster_plugins()
    loggers = [CSVLogger(run_dir, name="logs", version="csv")]
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
    )
    if plugins:
        kwargs["plugins"] = plugins
    for k in ("limit_train_batches", "limit_val_batches"):
        if t.get(k) is not None:
            kwargs[k] = t[k]
    return pl.Trainer(**kwargs)


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
    ``callbacks``: extra Lightning callbacks (the training benchmark's step timer)."""
    import pytorch_lightning as pl

    _quiet_lightning()
    run_dir = run_dir_of(cfg)
    last = resume_checkpoint(run_dir) if resume else None
    if resume:
        if last is None:
            raise file_error(run_dir / "checkpoints" / LAST, "no checkpoint to resume from (train without --resume first)")
        cfg = _resume_config(config_mod.read_yaml(run_dir / "config.yaml"), cfg)
        log.info("%s: resuming from %s", run_dir, last)
    elif resume_checkpoint(run_dir) is not None or any((run_dir / "checkpoints").glob("*.ckpt")):
        raise file_error(run_dir, "run folder already holds checkpoints: pass --resume to continue it, "
                                  "or name=<new name> for a new run")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", config_mod.dump(cfg))
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    module, dm = build_module_and_data(cfg)
    trainer = build_trainer(cfg, run_dir, callbacks_extra=callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True if resume else None)
    if trainer.interrupted:
        raise AttnMelError(f"{run_dir}: training interrupted; continue it with `attnmel train --resume {run_dir}`")
    if not (run_dir / "checkpoints" / BEST).is_file():
        raise file_error(run_dir, "training finished without a checkpoint (was there any validation data?)")
    if evaluate_after and trainer.is_global_zero:
        evaluate(run_dir, split="test")
    return run_dir


def _resume_config(saved: dict, new: dict) -> dict:
    # Only the schedule may change on resume (more epochs); everything else is the saved run's.
    out = dict(saved, out_dir=new["out_dir"], name=new["name"])
    out["trainer"] = {**saved["trainer"], "max_epochs": new["trainer"]["max_epochs"]}
    return out


def build_module_and_data(cfg: dict):
    """The LightningModule and DataModule a config describes."""
    from attnmel.data.datamodule import AttnMelDataModule

    dm = AttnMelDataModule(cfg)
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


# -- loading a run ------------------------------------------------------------------------------
def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (``weights_only=True``), with one-line errors."""
    if not path.is_file():
        raise file_error(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise file_error(path, f"not a readable AttnMel checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "attnmel" not in ckpt:
        raise file_error(path, "not an AttnMel checkpoint (no state_dict / attnmel section)")
    return ckpt


def load_run(run_dir: str | Path, which: str = BEST) -> LoadedRun:
    """Config and model (best weights, CPU, eval mode) of a run folder."""
    from attnmel.models import build_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise file_error(run_dir, "run folder not found")
    ckpt_path = run_dir / "checkpoints" / which
    ckpt = read_checkpoint(ckpt_path)
    meta = ckpt["attnmel"]
    cfg = meta["config"]
    model_cfg = {**cfg["model"], "pretrained": "none"}
    if cfg.get("task", "classification") == "segmentation":
        from attnmel.models.segmentation import build_segmenter

        model = build_segmenter(model_cfg["name"], model_cfg)
    else:
        model = build_model(model_cfg, num_classes=len(meta["class_names"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise file_error(ckpt_path, f"weights do not fit model '{model_cfg['name']}' "
                                    f"({str(e).splitlines()[0][:160]})") from None
    model.eval()
    return LoadedRun(run_dir, cfg, model, list(meta.get("class_names", [])), int(meta.get("melanoma_index", 1)),
                     ckpt_path)


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
        from attnmel.train.segment import evaluate_segmentation

        return evaluate_segmentation(run, split)
    dm = AttnMelDataModule(run.cfg)
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
    write_predictions_csv(run.run_dir / f"predictions{suffix}.csv", ids, probs, run.class_names)
    update_metrics(run.run_dir, {f"classification{suffix}": metrics, "split": split, **extra,
                                 "checkpoint": str(run.checkpoint.relative_to(run.run_dir))})
    return metrics


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


def update_metrics(run_dir: Path, section: dict) -> dict:
    """Merge ``section`` into the run's ``metrics.json`` (written atomically)."""
    import json

    path = Path(run_dir) / "metrics.json"
    current: dict = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("%s: unreadable, rewritten", path)
    current.update(section)
    write_json(path, current)
    return current
