"""Running a sweep: every arm x seed as a normal run folder, resumable, one failure never stops the rest.

Per run (``<out>/<sweep>-<dataset>/<arm>/seed<k>/``):

- finished (``metrics.json`` has ``classification`` and an ``attention`` section, or a recorded reason why
  attention cannot be scored): skipped;
- interrupted (``checkpoints/last.ckpt``, no test metrics yet): ``train(cfg, resume=True)``, which also
  finishes a run whose training ended but whose evaluation did not;
- otherwise trained from scratch (``train`` evaluates on the test split);
- then attention quality is scored with :func:`attnmel.report.build.build_report` (its ``attention``
  section of ``metrics.json``) when that module is importable; a run whose data has no lesion masks
  records ``attention_skipped`` instead, so it is not retried forever.

A failing run (any exception: bad config, out of memory, NaN loss) is written to ``error.txt`` in its run
folder and reported; the sweep goes on. Exit status 0 when every run finished, 1 otherwise.

A run whose ``trainer.*`` asks for several devices or nodes (Lightning DDP) runs in its own process,
``python -m attnmel.sweep.run --plan <json>``: Lightning's DDP launcher re-executes the command that
started it once per extra rank, and that command must be the single run, not the whole sweep. Ranks
other than 0 only train; rank 0 evaluates, scores attention and reports.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from attnmel import config as config_mod
from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_json, write_text
from attnmel.sweep.spec import RunPlan, SweepSpec, load_sweep, plan_runs, sweep_dir_of

log = logging.getLogger("attnmel.sweep")

ERROR_FILE = "error.txt"
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


# -- state of a run folder -------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> dict[str, Any]:
    """``metrics.json`` of a run, or ``{}`` when missing or unreadable."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def classification_done(metrics: dict[str, Any]) -> bool:
    return isinstance(metrics.get("classification"), dict) and bool(metrics["classification"])


def attention_done(metrics: dict[str, Any]) -> bool:
    return bool(metrics.get("attention")) or bool(metrics.get("attention_skipped"))


def run_finished(run_dir: Path) -> bool:
    """Test metrics and attention scores (or the reason there are none) are both in ``metrics.json``."""
    m = read_metrics(run_dir)
    return classification_done(m) and attention_done(m)


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
    from attnmel.train.run import evaluate

    evaluate(run_dir, split="test")


def _score_attention(run_dir: Path) -> None:
    """Write the ``attention`` section of ``metrics.json`` (or ``attention_skipped`` with the reason)."""
    from attnmel.train.run import update_metrics

    try:
        from attnmel.report.build import build_report
    except ImportError:
        log.warning("%s: attnmel.report.build is not available: attention quality not scored", run_dir)
        return
    try:
        build_report(run_dir, split="test")
    except AttnMelError as e:
        # Data without lesion masks cannot be scored; remember why so a resumed sweep does not retry.
        if "mask" in str(e).lower():
            update_metrics(run_dir, {"attention_skipped": str(e)})
        else:
            raise
    if not attention_done(read_metrics(run_dir)):
        update_metrics(run_dir, {"attention_skipped": "the report wrote no attention section"})


def is_rank_zero() -> bool:
    """False inside the extra processes Lightning's DDP launcher starts (they set LOCAL_RANK / NODE_RANK),
    and in the tasks of a SLURM job other than the first (SLURM_PROCID)."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


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
    except BaseException as e:  # noqa: BLE001 - one arm's failure (OOM, NaN, bug) must not stop the sweep
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


# -- the sweep -------------------------------------------------------------------------------------
def execute(plans: list[RunPlan], jobs: int = 1, on_result: Callable[[RunResult, int, int], None] | None = None,
            runner: Callable[[RunPlan], RunResult] | None = None) -> list[RunResult]:
    """Run the plans, one after another (``jobs`` = 1) or in ``jobs`` spawned processes; results in plan order."""
    total = len(plans)
    results: dict[int, RunResult] = {}
    report = on_result or (lambda r, i, n: None)
    if jobs <= 1 or total <= 1:
        run = runner or _default_runner
        for i, plan in enumerate(plans):
            results[i] = run(plan)
            report(results[i], len(results), total)
        return [results[i] for i in range(total)]

    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(runner or _default_runner, plan): i for i, plan in enumerate(plans)}
        for fut in as_completed(futures):
            i = futures[fut]
            plan = plans[i]
            try:
                results[i] = fut.result()
            except Exception as e:  # noqa: BLE001 - a worker killed (e.g. by the OOM killer) breaks its future
                message = f"worker process failed: {_one_line(e)}"
                try:
                    write_text(plan.run_dir / ERROR_FILE, message + "\n")
                except OSError:
                    pass
                results[i] = RunResult(plan.arm, plan.seed, str(plan.run_dir), "failed", 0.0, message)
            report(results[i], len(results), total)
    return [results[i] for i in range(total)]


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _progress_printer(console) -> Callable[[RunResult, int, int], None]:
    colours = {"done": "green", "skipped": "cyan", "failed": "red", "queued": "yellow", "running": "blue"}

    def show(r: RunResult, i: int, n: int) -> None:
        colour = colours.get(r.status, "white")
        tail = f"  {r.error}" if r.error else ""
        where = f"job {r.job_id}" if r.job_id else f"{r.seconds:7.1f}s"
        count = f"[{i}/{n}] " if n else ""
        console.print(f"{count}{r.arm:<16} seed {r.seed:<3} [{colour}]{r.status:<7}[/{colour}] "
                      f"{where}{tail}", markup=True, soft_wrap=True)

    return show


def _check_same_dataset(sweep_dir: Path, spec: SweepSpec) -> None:
    """Refuse to resume a sweep folder that holds the runs of another dataset."""
    record = sweep_dir / "sweep.json"
    if not record.is_file():
        return
    try:
        held = json.loads(record.read_text(encoding="utf-8")).get("dataset")
    except (json.JSONDecodeError, OSError):
        raise file_error(record, "unreadable sweep record; remove it or the folder to start the sweep anew") from None
    if held and held != spec.dataset:
        raise file_error(sweep_dir, f"holds the '{held}' runs of this sweep; to run it on '{spec.dataset}' too, "
                                    f"pass --out <another folder>")


def write_sweep_record(sweep_dir: Path, spec: SweepSpec, overrides: list[str]) -> None:
    """``sweep.json``: which file, dataset, arms and seeds the folder holds (the summary reads it)."""
    write_json(sweep_dir / "sweep.json", {
        "sweep_file": str(spec.path), "name": spec.name, "dataset": spec.dataset, "base": str(spec.base),
        "description": spec.description, "baseline": spec.baseline, "seeds": spec.seeds,
        "arms": [{"name": a.name, "label": a.label, "paper": a.paper, "overrides": a.overrides} for a in spec.arms],
        "overrides": overrides,
    })


def write_test_labels(sweep_dir: Path, cfg: dict[str, Any]) -> Path | None:
    """``test_labels.csv`` (image_id, melanoma 0/1) of the sweep's test split, for the paired tests."""
    path = sweep_dir / "test_labels.csv"
    try:
        from attnmel.data.datamodule import AttnMelDataModule

        dm = AttnMelDataModule(cfg, need_masks=False, need_dermo=False, progress=False)
        index = dm.index("test")
    except Exception as e:  # noqa: BLE001 - without labels only the paired tests are lost
        log.warning("test labels unavailable (%s): no paired tests", _one_line(e))
        return None
    mel = index.melanoma_index
    rows = ["image_id,melanoma"] + [f"{s.image_id},{int(s.label == mel)}" for s in index.samples]
    write_text(path, "\n".join(rows) + "\n")
    return path


def run_sweep(sweep_file: str | Path, dataset: str | None = None, jobs: int | None = None,
              out_root: str | Path = Path("sweeps"), overrides: Iterable[str] = (), *, console=None,
              runner: Callable[[RunPlan], RunResult] | None = None, launcher: str = "local",
              slurm_options: dict[str, Any] | None = None, wait: bool = False, backend=None,
              wait_timeout_s: float | None = None) -> int:
    """Run (or resume) a sweep and write its summary; returns 0 if every run finished, else 1.

    ``jobs``: runs in parallel processes; None takes the sweep file's ``jobs`` for the dataset (default 1).
    ``launcher="slurm"``: submit the runs as SLURM jobs instead (:mod:`attnmel.sweep.slurm`; resources from
    the sweep file's ``slurm:`` and ``slurm_options``), then, with ``wait``, poll until they ended; without
    it the summary shows them queued / running and the command returns 0 unless a run has failed.
    """
    from attnmel.sweep.summary import write_summary

    if launcher != "local":
        from attnmel.sweep import slurm

        backend = backend or slurm.backend_for(slurm.check_launcher(launcher))
    overrides = list(overrides)
    spec = load_sweep(sweep_file, dataset)
    jobs = spec.jobs if jobs is None else int(jobs)
    if jobs < 1:
        raise AttnMelError(f"--jobs must be at least 1, got {jobs}")
    plans = plan_runs(spec, out_root, overrides)
    sweep_dir = sweep_dir_of(spec, out_root)
    _check_same_dataset(sweep_dir, spec)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_sweep_record(sweep_dir, spec, overrides)
    console = console or _console()
    console.print(f"sweep {spec.name} on {spec.dataset}: {len(spec.arms)} arms x {len(spec.seeds)} seeds "
                  f"= {len(plans)} runs in {sweep_dir}" + (f", {jobs} in parallel" if jobs > 1 and backend is None else "")
                  + (f", as {backend.name} jobs" if backend is not None else ""))
    start = time.perf_counter()
    if spec.dataset == "synthetic":
        # Generate the shared synthetic set once, up front, so parallel runs never race to write it.
        _prepare_data(plans[0].cfg)
    if backend is None:
        results = execute(plans, jobs, _progress_printer(console), runner)
    else:
        results = _run_on_cluster(spec, plans, backend, slurm_options or {}, console, wait, wait_timeout_s)
    if not (sweep_dir / "test_labels.csv").is_file():
        write_test_labels(sweep_dir, plans[0].cfg)
    paths = write_summary(sweep_dir, spec, results)
    failed = [r for r in results if r.status == "failed"]
    pending = [r for r in results if r.status in ("queued", "running")]
    if pending:
        console.print(f"sweep {spec.name}: {len(results) - len(failed) - len(pending)} finished, "
                      f"{sum(r.status == 'queued' for r in pending)} queued, "
                      f"{sum(r.status == 'running' for r in pending)} running, {len(failed)} failed; run the same "
                      f"command again for the summary (nothing is submitted twice): {paths['md']}")
    else:
        console.print(f"sweep {spec.name}: {len(results) - len(failed)}/{len(results)} runs finished in "
                      f"{time.perf_counter() - start:.0f}s; summary: {paths['md']}")
    for r in failed:
        console.print(f"  failed: {r.arm} seed {r.seed}: {r.error} (see {Path(r.run_dir) / ERROR_FILE})", soft_wrap=True)
    return 1 if failed else 0


def _run_on_cluster(spec: SweepSpec, plans: list[RunPlan], backend, cli_options: dict[str, Any], console,
                    wait: bool, wait_timeout_s: float | None) -> list[RunResult]:
    """Submit the unfinished runs (not those queued or running already); with ``wait``, poll to the end."""
    from attnmel.sweep import slurm

    resources = slurm.resources_from(spec.slurm, cli_options, spec.path)
    show = _progress_printer(console)
    results = slurm.submit_sweep(plans, resources, backend, show)
    if wait:
        results = slurm.wait(results, backend, timeout_s=wait_timeout_s,
                             on_change=lambda r: show(r, 0, 0) if r.status != "running" else None)
    else:
        results = slurm.refresh(results, backend)
    return results


def _prepare_data(cfg: dict[str, Any]) -> None:
    try:
        from attnmel.data.datamodule import AttnMelDataModule

        AttnMelDataModule(cfg, need_masks=False, need_dermo=False, progress=False).prepare_data()
    except Exception as e:  # noqa: BLE001 - each run reports its own data problem
        log.warning("could not prepare the data up front: %s", _one_line(e))


def _main(argv: list[str] | None = None) -> int:
    """``python -m attnmel.sweep.run --plan PLAN.json --result RESULT.json``: one run in its own process."""
    import argparse
    from dataclasses import asdict

    p = argparse.ArgumentParser(prog="python -m attnmel.sweep.run")
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="attnmel: %(levelname)s: %(message)s")
    data = json.loads(args.plan.read_text(encoding="utf-8"))
    result = run_one(RunPlan(arm=data["arm"], seed=int(data["seed"]), cfg=data["cfg"]))
    if is_rank_zero():
        write_json(args.result, asdict(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
