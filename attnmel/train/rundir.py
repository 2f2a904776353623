"""The run folder, ``<out_dir>/<name>/``: the one owner of its layout, config, checkpoints, metrics and lock.

Every path inside a run folder is a property of :class:`RunDir`, and no other module spells a run-folder file
name (``tests/train/test_rundir.py`` greps the package). Layout: ``config.yaml`` (the full resolved config),
``checkpoints/best.ckpt`` (best validation metric) and ``last.ckpt``, ``hpc_ckpt_<n>.ckpt`` (SLURM requeue),
``metrics.json``, ``predictions[_<split>].csv``, ``logs/`` (CSV + TensorBoard), ``report/index.html``,
``svm.npz`` (``model.svm``), ``masks/<dataset>/`` (a segmentation run's predicted masks), ``export/model.onnx`` +
``export/model.json``, ``slurm/job.json`` (cluster jobs), ``error.txt`` (a sweep run's failure),
``data_split.csv`` (a copy of the drawn or user-given split the run trained on, for datasets without official
splits).

Which config a run uses (one rule for every command): the checkpoint's embedded config defines the run.
``config.yaml`` may be edited in the keys of :data:`attnmel.config.RESUME_MAY_CHANGE` only (data paths,
devices, epochs), and every command that reads a run (``train --resume``, ``evaluate``, ``predict``,
``report``, ``segment``) applies those edits. An edit to any other key is never applied: ``--resume``
refuses it in one line (it would train a different run); the read-only commands warn, naming the key. The same
keys define "the same run" for a sweep (:meth:`RunDir.check_same_run`).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from attnmel import config as config_mod
from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_json, write_text

if TYPE_CHECKING:  # torch is imported where a checkpoint is read: metrics readers (report index) stay light
    from torch import nn

log = logging.getLogger("attnmel.train")

BEST, LAST = "best.ckpt", "last.ckpt"
CONFIG, METRICS = "config.yaml", "metrics.json"
LOCK = ".attnmel.lock"
HPC_PREFIX = "hpc_ckpt_"  # Lightning's SLURM auto-requeue checkpoints, in the run folder
SVM_FILE = "svm.npz"
CALIBRATION_FILE = "calibration.json"  # temperature scaling (attnmel.train.calibration)
ONNX_FILE, SIDECAR_FILE = "model.onnx", "model.json"
JOB_FILE = "job.json"
ERROR_FILE = "error.txt"
SPLIT_FILE = "data_split.csv"  # the drawn (or data.split_file) split the run trained on
CHECKPOINTS, LOGS, REPORT, EXPORT, SLURM, MASKS = "checkpoints", "logs", "report", "export", "slurm", "masks"
REPORT_PAGE = "index.html"


@dataclass(frozen=True)
class RunDir:
    """One run folder: every path in it, and its readers. ``RunDir(path)``; :meth:`of_config` for a config's."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of_config(cls, cfg: dict) -> RunDir:
        """``<out_dir>/<name>``."""
        return cls(Path(cfg["out_dir"]) / str(cfg["name"]))

    # -- paths
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, which: str = BEST) -> Path:
        """``checkpoints/<which>`` (:data:`BEST` or :data:`LAST`)."""
        return self.checkpoints_dir / which

    @property
    def best(self) -> Path:
        return self.checkpoint(BEST)

    @property
    def last(self) -> Path:
        return self.checkpoint(LAST)

    def hpc_checkpoints(self) -> list[Path]:
        """Lightning's SLURM requeue checkpoints, ``hpc_ckpt_<n>.ckpt``."""
        return sorted(self.path.glob(f"{HPC_PREFIX}*.ckpt"))

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    def predictions(self, split: str = "test") -> Path:
        """``predictions.csv`` for the test split, ``predictions_<split>.csv`` for every other."""
        return self.path / ("predictions.csv" if split == "test" else f"predictions_{split}.csv")

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT

    def report_dir_for(self, tag: str = "") -> Path:
        """``report/``, or ``report_<tag>/`` for a report on other data (``tag``: ``external_<dataset>_<folder>``)."""
        return self.report_dir if not tag else self.path / f"{REPORT}_{tag}"

    @property
    def report_page(self) -> Path:
        return self.report_dir / REPORT_PAGE

    @property
    def svm_file(self) -> Path:
        return self.path / SVM_FILE

    @property
    def calibration_file(self) -> Path:
        """The temperature fitted on val and its verdict on test (:mod:`attnmel.train.calibration`)."""
        return self.path / CALIBRATION_FILE

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT

    @property
    def slurm_dir(self) -> Path:
        return self.path / SLURM

    @property
    def job_file(self) -> Path:
        return self.slurm_dir / JOB_FILE

    @property
    def error_file(self) -> Path:
        return self.path / ERROR_FILE

    @property
    def split_file(self) -> Path:
        """The copy of the split the run trained on (datasets without official splits)."""
        return self.path / SPLIT_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    def masks_dir(self, dataset: str) -> Path:
        """Where a segmentation run keeps its predicted masks of ``dataset``: ``masks/<dataset>/``."""
        return self.path / MASKS / dataset

    # -- state
    def is_run(self) -> bool:
        """Whether this is a run folder (it has a ``config.yaml``)."""
        return self.config_file.is_file()

    def is_segmentation_run(self) -> bool:
        """Whether this is a run folder of a segmentation run (its config says ``task: segmentation``)."""
        if not self.is_run():
            return False
        try:
            saved = config_mod.read_yaml(self.config_file)
        except AttnMelError:
            return False
        return isinstance(saved, dict) and saved.get("task") == "segmentation"

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint an interrupted run resumes from: the newest of ``last.ckpt`` and the SLURM requeue
        checkpoints; None when there is neither."""
        found = [p for p in [self.last, *self.hpc_checkpoints()] if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None

    def has_checkpoints(self) -> bool:
        return self.resume_checkpoint() is not None or any(self.checkpoints_dir.glob("*.ckpt"))

    # -- readers
    def read_config(self) -> dict:
        """The run's ``config.yaml``, checked against the schema (not yet against its checkpoint)."""
        path = self.config_file
        return config_mod.merge(config_mod.defaults(), config_mod.read_yaml(path), source=str(path))

    def saved_config_summary(self) -> dict:
        """``config.yaml`` read leniently (``{}`` when missing or unreadable): for listings such as the index."""
        try:
            saved = config_mod.read_yaml(self.config_file)
        except AttnMelError:
            return {}
        return saved if isinstance(saved, dict) else {}

    def metrics(self) -> dict[str, Any]:
        """``metrics.json``, or ``{}`` when missing or unreadable."""
        data, _ = read_metrics_file(self.metrics_file)
        return data or {}

    def merged_metrics(self, section: dict) -> dict:
        """``metrics.json`` with ``section`` merged in (nothing written: the report stages it, see
        :func:`attnmel.report.build.build_report`)."""
        path = self.metrics_file
        current: dict = {}
        if path.is_file():
            data, problem = read_metrics_file(path)
            if data is None:
                log.warning("%s: %s; rewritten", path, problem)
            current = data or {}
        current.update(section)
        return current

    def update_metrics(self, section: dict) -> dict:
        """Merge ``section`` into ``metrics.json`` (written atomically)."""
        current = self.merged_metrics(section)
        write_json(self.metrics_file, current)
        return current

    def record_split(self, split_file: Path | None) -> Path | None:
        """Copy the split the run trains on (``split_file``: the drawn split in the cache, or ``data.split_file``)
        into :attr:`split_file`; ``None`` (the dataset ships its splits) writes nothing.

        A resumed run keeps its first copy: if the stored split was edited since, it warns, since the continued
        training then no longer sees the split the copy records."""
        if split_file is None:
            return None
        target = self.split_file
        try:
            text = Path(split_file).read_text(encoding="utf-8")
        except OSError as e:
            raise file_error(split_file, f"cannot read the split ({e.strerror})") from None
        if target.is_file():
            if target.read_text(encoding="utf-8") != text:
                log.warning("%s: the split changed since this run started (%s); the copy keeps the first one",
                            target, split_file)
            return target
        write_text(target, text)
        return target

    def check_same_run(self, cfg: dict) -> None:
        """Refuse a config that describes another run than the one this folder holds.

        "The same run" has one definition: every key outside :data:`attnmel.config.RESUME_MAY_CHANGE` equal
        (the rule ``train --resume`` applies); a folder without a ``config.yaml`` holds no run yet.
        """
        if not self.is_run():
            return
        changed = config_mod.frozen_changes(self.read_config(), cfg)
        if changed:
            raise file_error(self.path, f"holds a run with a different {changed[0]} than now asked for (the sweep "
                                        "file changed?): delete that folder or use another output folder")


@dataclass
class LoadedRun:
    """What :func:`load_run` gives back: everything needed to use a trained run."""

    run_dir: Path
    cfg: dict
    model: nn.Module
    class_names: list[str]
    melanoma_index: int
    checkpoint: Path

    @property
    def folder(self) -> RunDir:
        return RunDir(self.run_dir)


# -- paths -------------------------------------------------------------------------------------
def run_dir_of(cfg: dict) -> Path:
    """``<out_dir>/<name>``."""
    return RunDir.of_config(cfg).path


def checkpoint_path(run_dir: str | Path, which: str = BEST) -> Path:
    return RunDir(run_dir).checkpoint(which)


def predictions_path(run_dir: str | Path, split: str = "test") -> Path:
    """``predictions.csv`` for the test split, ``predictions_<split>.csv`` for every other."""
    return RunDir(run_dir).predictions(split)


def resume_checkpoint(run_dir: str | Path) -> Path | None:
    """See :meth:`RunDir.resume_checkpoint`."""
    return RunDir(run_dir).resume_checkpoint()


# -- lock --------------------------------------------------------------------------------------
@contextmanager
def lock_run(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder for this process; a second process is refused in one line.

    Only the first process of a DDP job takes the lock: the others are its helpers, not competitors.
    """
    from filelock import FileLock, Timeout

    from attnmel.ranks import process_rank

    if process_rank() != 0:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(RunDir(run_dir).lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise file_error(run_dir, "run folder is in use by another attnmel process (wait for it to finish, "
                                  "or give name=<another name>)") from None
    try:
        yield
    finally:
        lock.release()


# -- config ------------------------------------------------------------------------------------
def read_config(run_dir: str | Path) -> dict:
    """The run's ``config.yaml``, checked against the schema (not yet against its checkpoint)."""
    return RunDir(run_dir).read_config()


def effective_config(run_dir: str | Path, ckpt_cfg: dict, overrides: Iterable[str] = (), *,
                     resuming: bool = False) -> dict:
    """The checkpoint's config with the allowed edits of ``config.yaml`` and of ``overrides`` applied.

    ``out_dir`` and ``name`` are the folder's own (a moved run works where it is now). An edit to a key
    outside :data:`attnmel.config.RESUME_MAY_CHANGE` is never applied: ``resuming``, it is refused in one
    line naming its source and the key; otherwise (evaluate, predict, report) it is ignored with a warning.
    """
    run_dir = Path(run_dir)
    folder = RunDir(run_dir)
    schema = config_mod.defaults()
    base = config_mod.merge(schema, ckpt_cfg, source=f"{run_dir}: checkpoint config")
    cfg = base
    if folder.is_run():
        where = str(folder.config_file)
        edited = config_mod.merge(base, config_mod.read_yaml(folder.config_file), schema=schema, source=where)
        edited.update(out_dir=base["out_dir"], name=base["name"])
        for key in config_mod.frozen_changes(base, edited):
            if resuming:
                raise AttnMelError(config_mod.frozen_change_message(where, key, base, edited))
            log.warning("%s: %s was edited (%r) but the checkpoint's value %r is used: only %s may be edited",
                        where, key, config_mod.get(edited, key), config_mod.get(base, key),
                        ", ".join(config_mod.RESUME_MAY_CHANGE))
            edited = config_mod.merge(edited, config_mod.expand_dotted({key: config_mod.get(base, key)}),
                                      schema=schema)
        cfg = edited
    overrides = list(overrides)
    if overrides:
        asked = config_mod.merge(cfg, config_mod.parse_overrides(overrides), schema=schema, source="command line")
        config_mod.check_resume_changes(cfg, asked, "command line")
        cfg = asked
    cfg.update(out_dir=str(run_dir.parent), name=run_dir.name)
    config_mod.validate(cfg)
    return cfg


def resume_config(run_dir: str | Path, overrides: Iterable[str] = ()) -> dict:
    """The config ``attnmel train --resume RUN_DIR key=value ...`` continues with."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise file_error(run_dir, "run folder not found")
    last = checkpoint_path(run_dir, LAST)
    if not last.is_file():
        raise file_error(last, "no checkpoint to resume from (train without --resume first)")
    return effective_config(run_dir, read_checkpoint(last)["attnmel"]["config"], overrides, resuming=True)


# -- checkpoints -------------------------------------------------------------------------------
def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (``weights_only=True``), with one-line errors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise file_error(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise file_error(path, f"not a readable AttnMel checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(ckpt.get("attnmel"), dict) \
            or not isinstance(ckpt["attnmel"].get("config"), dict):
        raise file_error(path, "not an AttnMel checkpoint (no state_dict / attnmel section)")
    return ckpt


def checkpoint_provenance(path: str | Path) -> dict[str, Any]:
    """Where a checkpoint came from, read without loading its weights (memory-mapped, ``weights_only``): the
    epoch it was saved at, the score that selected it (``monitor`` and ``best_score``: the best validation
    metric when it was saved, None for ``last.ckpt`` of a run that never improved) and the config it was
    trained with (before any edit of ``config.yaml``)."""
    import torch

    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise file_error(path, f"not a readable AttnMel checkpoint ({e.__class__.__name__})") from None
    monitor, best = None, None
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            monitor, best = str(state["monitor"]), float(state["best_model_score"])
    return {"epoch": ckpt.get("epoch"), "monitor": monitor, "best_score": best,
            "config": (ckpt.get("attnmel") or {}).get("config") or {}}


def load_run(run_dir: str | Path, which: str = BEST) -> LoadedRun:
    """Config and model (best weights, CPU, eval mode) of a run folder."""
    from attnmel.models import build_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise file_error(run_dir, "run folder not found")
    ckpt_path = checkpoint_path(run_dir, which)
    ckpt = read_checkpoint(ckpt_path)
    meta = ckpt["attnmel"]
    cfg = effective_config(run_dir, meta["config"])
    model_cfg = {**cfg["model"], "pretrained": "none"}
    if cfg.get("task", "classification") == "segmentation":
        from attnmel.models.segmentation import build_segmenter
        from attnmel.train.segmentation import segmentation_outputs

        model = build_segmenter(model_cfg["name"], model_cfg, out_channels=len(segmentation_outputs(cfg)))
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


# -- metrics.json ------------------------------------------------------------------------------
def read_metrics_file(path: str | Path) -> tuple[dict | None, str]:
    """``(metrics, "")``, or ``(None, why)`` when the file cannot be read or is not a JSON mapping."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{METRICS} unreadable ({e.__class__.__name__})"
    return (data, "") if isinstance(data, dict) else (None, f"{METRICS} is not a mapping")


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a run, or ``{}`` when missing or unreadable."""
    return RunDir(run_dir).metrics()


def update_metrics(run_dir: str | Path, section: dict) -> dict:
    """Merge ``section`` into the run's ``metrics.json`` (written atomically)."""
    return RunDir(run_dir).update_metrics(section)
