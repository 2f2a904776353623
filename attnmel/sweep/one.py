"""One arm x seed of a sweep: train (or resume), evaluate and score attention, with every failure recorded.

Its own module so that the local runner (:mod:`attnmel.sweep.run`) and the cluster jobs
(:mod:`attnmel.sweep.slurm`) both run the same :func:`run_one` and import it, not each other.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from attnmel import config as config_mod
from attnmel.errors import AttnMelError
from attnmel.io import write_text
from attnmel.sweep.spec import RunPlan
from attnmel.sweep.state import ERROR_FILE, attention_done, classification_done, read_metrics, run_finished
from attnmel.train.rundir import update_metrics

log = logging.getLogger("attnmel.sweep")

# Keys that make a run folder "the same run": a mismatch means the sweep file changed under it.
IDENTITY_KEYS = (("seed",), ("task",), ("data", "dataset"), ("data", "root"), ("data", "image_size"),
                 ("data", "num_classes"), ("model",), ("loss",), ("optim",))


@dataclass
class RunResult:
    """What happened to one arm x seed."""

    arm: str
    seed: int
    run_dir: str
    status: str  # done | skipped | failed; on a cluster also queued | running
    seconds: float = 0.0
    error: str | None = None
    job_id: str | None = None  # the cluster job (``--launcher slurm``)


def _get(cfg: dict[str, Any], keys: tuple[str, ...]) -> Any:
    node: Any = cfg
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    return node


def check_same_run(run_dir: Path, cfg: dict[str, Any]) -> None:
    """Refuse to resume a run folder whose saved config differs from what the sweep now asks for."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    saved = config_mod.read_yaml(path)
    for keys in IDENTITY_KEYS:
        if _get(saved, keys) != _get(cfg, keys):
            raise AttnMelError(f"{run_dir}: holds a run with a different {'.'.join(keys)} than the sweep now "
                               "asks for (the sweep file changed?): delete that folder or use --out")


# -- one run ---------------------------------------------------------------------------------------
def _train(cfg: dict[str, Any], resume: bool = False) -> Path:
    from attnmel.train.run import train

    return train(cfg, resume=resume)


def _evaluate(run_dir: Path) -> None:
    from attnmel.train.run import evaluate_tests

    evaluate_tests(run_dir)


def attention_split(run_dir: Path) -> str:
    """The split whose lesion masks score the attention maps: ``test`` when every test image has a mask, else
    ``val`` when every validation image has one (ISIC 2017: the test masks are not public, so the paper's
    Jaccard protocol runs on validation), else ``test`` (the report then says why there is no score)."""
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.train.rundir import read_config

    dm = AttnMelDataModule(read_config(run_dir), progress=False)
    for split in ("test", "val"):
        try:
            if dm.index(split).has_masks:
                return split
        except AttnMelError:
            continue
    return "test"


def _score_attention(run_dir: Path) -> None:
    """Write the ``attention`` section of ``metrics.json`` (or ``attention_skipped`` with the reason), on the
    split :func:`attention_split` names (the section's ``split`` says which)."""
    from attnmel.report.build import build_report

    try:
        build_report(run_dir, split=attention_split(run_dir))
    except AttnMelError as e:
        # Data without lesion masks cannot be scored; remember why so a resumed sweep does not retry.
        if "mask" in str(e).lower():
            update_metrics(run_dir, {"attention_skipped": str(e)})
        else:
            raise
    if not attention_done(read_metrics(run_dir)):
        update_metrics(run_dir, {"attention_skipped": "the report wrote no attention section"})


def is_rank_zero() -> bool:
    """False inside the extra processes of a DDP job (see :func:`attnmel.data.datamodule.process_rank`)."""
    from attnmel.data.datamodule import process_rank

    return process_rank() == 0


def wants_own_process(cfg: dict[str, Any]) -> bool:
    """Whether a run may use several devices or nodes (DDP), so it must run as its own process.

    ``devices: auto`` / ``-1`` count as several: on a multi-GPU machine Lightning then picks DDP.
    """
    t = cfg.get("trainer") or {}
    devices = t.get("devices", 1)
    single = devices in (1, "1") or (isinstance(devices, (list, tuple)) and len(devices) == 1)
    return not single or int(t.get("num_nodes", 1) or 1) > 1 or "ddp" in str(t.get("strategy", "")).lower()


def run_one(plan: RunPlan, train_fn: Callable[..., Path] | None = None,
            evaluate_fn: Callable[[Path], None] | None = None,
            attention_fn: Callable[[Path], None] | None = None) -> RunResult:
    """Bring one arm x seed to "finished", resuming what exists; never raises (failure -> ``error.txt``)."""
    from attnmel.train.run import resume_checkpoint

    train_fn = train_fn or _train
    evaluate_fn = evaluate_fn or _evaluate
    attention_fn = attention_fn or _score_attention
    run_dir = plan.run_dir
    start = time.perf_counter()
    try:
        if run_finished(run_dir):
            return RunResult(plan.arm, plan.seed, str(run_dir), "skipped")
        check_same_run(run_dir, plan.cfg)
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        ckpts = run_dir / "checkpoints"
        if not classification_done(read_metrics(run_dir)):
            if resume_checkpoint(run_dir) is not None:  # last.ckpt, or a SLURM requeue's hpc_ckpt
                train_fn(plan.cfg, resume=True)
            elif (ckpts / "best.ckpt").is_file():
                evaluate_fn(run_dir)
            else:
                train_fn(plan.cfg, resume=False)
        if not is_rank_zero():
            return RunResult(plan.arm, plan.seed, str(run_dir), "done", time.perf_counter() - start)
        if not attention_done(read_metrics(run_dir)):
            attention_fn(run_dir)
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            # Ctrl-C, or the scheduler's SIGTERM (Lightning raises SIGTERMException, a SystemExit) when a
            # job is requeued or cancelled: not the run's failure; a requeued job resumes.
            raise
        message = _one_line(e)
        if not is_rank_zero():
            return RunResult(plan.arm, plan.seed, str(run_dir), "failed", time.perf_counter() - start, message)
        try:
            write_text(run_dir / ERROR_FILE, f"{message}\n\n{traceback.format_exc()}")
        except OSError:
            pass
        return RunResult(plan.arm, plan.seed, str(run_dir), "failed", time.perf_counter() - start, message)
    return RunResult(plan.arm, plan.seed, str(run_dir), "done", time.perf_counter() - start)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    if isinstance(e, AttnMelError):
        return text or name
    return f"{name}: {text}" if text else name


def _worker_init(threads: int) -> None:
    # Parallel arms share the cores: without this each process would start one thread per core.
    import torch

    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING, format="attnmel: %(levelname)s: %(message)s")


def run_one_isolated(plan: RunPlan) -> RunResult:
    """:func:`run_one` in a fresh ``python -m attnmel.sweep.run --plan`` process (DDP-safe)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attnmel-sweep-") as tmp:
        plan_path, result_path = Path(tmp) / "plan.json", Path(tmp) / "result.json"
        plan_path.write_text(json.dumps({"arm": plan.arm, "seed": plan.seed, "cfg": plan.cfg}), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "attnmel.sweep.run", "--plan", str(plan_path),
                               "--result", str(result_path)], check=False)
        if result_path.is_file():
            return RunResult(**json.loads(result_path.read_text(encoding="utf-8")))
    message = f"run process exited with status {proc.returncode} without a result"
    try:
        write_text(plan.run_dir / ERROR_FILE, message + "\n")
    except OSError:
        pass
    return RunResult(plan.arm, plan.seed, str(plan.run_dir), "failed", time.perf_counter() - start, message)


def _default_runner(plan: RunPlan) -> RunResult:
    """One run here, or in its own process when it uses DDP."""
    return run_one_isolated(plan) if wants_own_process(plan.cfg) else run_one(plan)
