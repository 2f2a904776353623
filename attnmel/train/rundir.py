"""The run folder, ``<out_dir>/<name>/``: its paths, config, checkpoints, metrics, predictions and lock.

Layout: ``config.yaml`` (the full resolved config), ``checkpoints/best.ckpt`` (best validation metric) and
``last.ckpt``, ``metrics.json``, ``predictions[_<split>].csv``, ``logs/`` (CSV + TensorBoard), ``report/``,
``data_split.csv`` (a copy of the drawn or user-given split the run trained on, for datasets without official
splits).

Which config a run uses (one rule for every command): the checkpoint's embedded config defines the run.
``config.yaml`` may be edited in the keys of :data:`attnmel.config.RESUME_MAY_CHANGE` only (data paths,
devices, epochs), and every command that reads a run (``train --resume``, ``evaluate``, ``predict``,
``report``, ``segment``) applies those edits. An edit to any other key is never applied: ``--resume``
refuses it in one line (it would train a different run); the read-only commands warn, naming the key.
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


@dataclass
class LoadedRun:
    """What :func:`load_run` gives back: everything needed to use a trained run."""

    run_dir: Path
    cfg: dict
    model: nn.Module
    class_names: list[str]
    melanoma_index: int
    checkpoint: Path


# -- paths -------------------------------------------------------------------------------------
def run_dir_of(cfg: dict) -> Path:
    """``<out_dir>/<name>``."""
    return Path(cfg["out_dir"]) / str(cfg["name"])


def checkpoint_path(run_dir: str | Path, which: str = BEST) -> Path:
    return Path(run_dir) / "checkpoints" / which


def predictions_path(run_dir: str | Path, split: str = "test") -> Path:
    """``predictions.csv`` for the test split, ``predictions_<split>.csv`` for every other."""
    return Path(run_dir) / ("predictions.csv" if split == "test" else f"predictions_{split}.csv")


# -- lock --------------------------------------------------------------------------------------
@contextmanager
def lock_run(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder for this process; a second process is refused in one line.

    Only the first process of a DDP job takes the lock: the others are its helpers, not competitors.
    """
    from filelock import FileLock, Timeout

    from attnmel.data.datamodule import process_rank

    if process_rank() != 0:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK)
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
    path = Path(run_dir) / CONFIG
    return config_mod.merge(config_mod.defaults(), config_mod.read_yaml(path), source=str(path))


def effective_config(run_dir: str | Path, ckpt_cfg: dict, overrides: Iterable[str] = (), *,
                     resuming: bool = False) -> dict:
    """The checkpoint's config with the allowed edits of ``config.yaml`` and of ``overrides`` applied.

    ``out_dir`` and ``name`` are the folder's own (a moved run works where it is now). An edit to a key
    outside :data:`attnmel.config.RESUME_MAY_CHANGE` is never applied: ``resuming``, it is refused in one
    line naming its source and the key; otherwise (evaluate, predict, report) it is ignored with a warning.
    """
    run_dir = Path(run_dir)
    schema = config_mod.defaults()
    base = config_mod.merge(schema, ckpt_cfg, source=f"{run_dir}: checkpoint config")
    cfg = base
    if (run_dir / CONFIG).is_file():
        where = str(run_dir / CONFIG)
        edited = config_mod.merge(base, config_mod.read_yaml(run_dir / CONFIG), schema=schema, source=where)
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
        return None, f"metrics.json unreadable ({e.__class__.__name__})"
    return (data, "") if isinstance(data, dict) else (None, "metrics.json is not a mapping")


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a run, or ``{}`` when missing or unreadable."""
    data, _ = read_metrics_file(Path(run_dir) / METRICS)
    return data or {}


def merged_metrics(run_dir: str | Path, section: dict) -> dict:
    """The run's ``metrics.json`` with ``section`` merged in (nothing written)."""
    path = Path(run_dir) / METRICS
    current: dict = {}
    if path.is_file():
        data, problem = read_metrics_file(path)
        if data is None:
            log.warning("%s: %s; rewritten", path, problem)
        current = data or {}
    current.update(section)
    return current


def update_metrics(run_dir: str | Path, section: dict) -> dict:
    """Merge ``section`` into the run's ``metrics.json`` (written atomically)."""
    current = merged_metrics(run_dir, section)
    write_json(Path(run_dir) / METRICS, current)
    return current


def record_split(run_dir: str | Path, split_file: Path | None) -> Path | None:
    """Copy the split the run trains on (``split_file``: the drawn split in the cache, or ``data.split_file``)
    into the run folder as ``data_split.csv``; ``None`` (the dataset ships its splits) writes nothing.

    A resumed run keeps its first copy: if the stored split was edited since, it warns, since the continued
    training then no longer sees the split the copy records."""
    from attnmel.data.samples import RUN_SPLIT_FILE

    if split_file is None:
        return None
    target = Path(run_dir) / RUN_SPLIT_FILE
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
