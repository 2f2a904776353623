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

from attnmel.errors import AttnMelError, MissingMasksError
from attnmel.io import write_text
from attnmel.ranks import is_rank_zero
from attnmel.sweep.spec import RunPlan
from attnmel.sweep.state import attention_done, classification_done, read_metrics, run_finished
from attnmel.train.rundir import RunDir, update_metrics

__all__ = ["RunResult", "check_same_run", "is_rank_zero", "run_one", "run_one_isolated", "wants_own_process"]

log = logging.getLogger("attnmel.sweep")

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


def check_same_run(run_dir: Path, cfg: dict[str, Any]) -> None:
    """Refuse to resume a run folder whose saved config is another run than the sweep now asks for: the one
    definition of "the same run", :meth:`attnmel.train.rundir.RunDir.check_same_run` (the resume rule)."""
    RunDir(run_dir).check_same_run(cfg)


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
    """Write the ``attention`` section of ``metrics.json`` (or ``attention_skipped`` with the reason): the
    report's numbers only (:func:`attnmel.report.build.score_attention`), no page, no figures, on the split
    :func:`attention_split` names (the section's ``split`` says which)."""
    from attnmel.report.build import score_attention

    split = attention_split(run_dir)
    try:
        numbers = score_attention(run_dir, split=split)
        if numbers and split != "test":
            # score_attention files another split's numbers under attention_<split>, as the report does; the
            # sweep's section is `attention` whatever the split (its `split` field says which).
            update_metrics(run_dir, {"attention": numbers})
    except MissingMasksError as e:
        # Data without lesion masks cannot be scored; remember why so a resumed sweep does not retry.
        update_metrics(run_dir, {"attention_skipped": str(e)})
    if not attention_done(read_metrics(run_dir)):
        update_metrics(run_dir, {"attention_skipped": "the report wrote no attention section"})


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
    train_fn = train_fn or _train
    evaluate_fn = evaluate_fn or _evaluate
    attention_fn = attention_fn or _score_attention
    run_dir = plan.run_dir
    folder = RunDir(run_dir)
    start = time.perf_counter()
    try:
        if run_finished(run_dir):
            return RunResult(plan.arm, plan.seed, str(run_dir), "skipped")
        check_same_run(run_dir, plan.cfg)
        folder.error_file.unlink(missing_ok=True)
        if not classification_done(read_metrics(run_dir)):
            if folder.resume_checkpoint() is not None:  # last.ckpt, or a SLURM requeue's hpc_ckpt
                train_fn(plan.cfg, resume=True)
            elif folder.best.is_file():
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
            write_text(folder.error_file, f"{message}\n\n{traceback.format_exc()}")
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
        write_text(RunDir(plan.run_dir).error_file, message + "\n")
    except OSError:
        pass
    return RunResult(plan.arm, plan.seed, str(plan.run_dir), "failed", time.perf_counter() - start, message)


def _default_runner(plan: RunPlan) -> RunResult:
    """One run here, or in its own process when it uses DDP."""
    return run_one_isolated(plan) if wants_own_process(plan.cfg) else run_one(plan)
