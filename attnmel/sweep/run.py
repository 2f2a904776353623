"""Running a sweep: every arm x seed as a normal run folder, resumable, one failure never stops the rest.

Per run (``<out>/<sweep>-<dataset>/<arm>/seed<k>/``):

- finished (``metrics.json`` has ``classification`` and an ``attention`` section, or a recorded reason why
  attention cannot be scored): skipped;
- interrupted (``checkpoints/last.ckpt``, no test metrics yet): ``train(cfg, resume=True)``, which also
  finishes a run whose training ended but whose evaluation did not;
- otherwise trained from scratch (``train`` evaluates on the test split);
- then attention quality is scored with :func:`attnmel.report.build.score_attention` (the report's numbers
  only, no page or figures: the ``attention`` section of ``metrics.json``); a run whose data has no lesion
  masks (a :class:`~attnmel.errors.MissingMasksError`) records ``attention_skipped`` instead, so it is not
  retried forever. ``attnmel report RUN`` draws a run's page when wanted.

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
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.markup import escape

from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_json, write_text
from attnmel.sweep.one import (  # noqa: F401 - the per-run API, also reached through this module
    RunResult,
    _default_runner,
    _one_line,
    _worker_init,
    check_same_run,
    is_rank_zero,
    run_one,
    run_one_isolated,
    wants_own_process,
)
from attnmel.sweep.spec import RunPlan, SweepSpec, load_sweep, plan_runs, sweep_dir_of
from attnmel.train.rundir import RunDir

log = logging.getLogger("attnmel.sweep")

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
                    write_text(RunDir(plan.run_dir).error_file, message + "\n")
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
        tail = f"  {escape(r.error)}" if r.error else ""
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


def write_test_labels(sweep_dir: Path, cfg: dict[str, Any], split: str = "test") -> Path | None:
    """``test_labels.csv`` (image_id, melanoma 0/1) of the sweep's test split, for the paired tests; another
    split (the synthetic set's ``test_reversed``, ...) goes to ``<split>_labels.csv``."""
    path = sweep_dir / f"{split}_labels.csv"
    try:
        from attnmel.data.datamodule import AttnMelDataModule

        dm = AttnMelDataModule(cfg, need_masks=False, need_dermo=False, progress=False)
        index = dm.index(split)
    except Exception as e:  # noqa: BLE001 - without labels only the paired tests are lost
        log.warning("%s labels unavailable (%s): no paired tests", split, _one_line(e))
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
                  f"= {len(plans)} runs in {escape(str(sweep_dir))}"
                  + (f", {jobs} in parallel" if jobs > 1 and backend is None else "")
                  + (f", as {backend.name} jobs" if backend is not None else ""))
    start = time.perf_counter()
    if spec.dataset == "synthetic":
        # Generate each synthetic set once, up front, so parallel runs never race to write it (an arm may
        # train on its own set, e.g. the shortcut sweep's artefact-free control).
        for cfg in {p.cfg["data"]["root"]: p.cfg for p in plans}.values():
            _prepare_data(cfg)
    if backend is None:
        results = execute(plans, jobs, _progress_printer(console), runner)
    else:
        results = _run_on_cluster(spec, plans, backend, slurm_options or {}, console, wait, wait_timeout_s)
    _write_labels(sweep_dir, plans[0].cfg)
    paths = write_summary(sweep_dir, spec, results)
    return _report_end(console, spec, results, paths["md"], start)


def _write_labels(sweep_dir: Path, cfg: dict[str, Any]) -> None:
    """``test_labels.csv`` (and ``<split>_labels.csv`` of the synthetic set's extra test splits), once."""
    from attnmel.data.synthetic import extra_test_splits

    if not (sweep_dir / "test_labels.csv").is_file():
        write_test_labels(sweep_dir, cfg)
    for split in extra_test_splits(cfg["data"]):
        if not (sweep_dir / f"{split}_labels.csv").is_file():
            write_test_labels(sweep_dir, cfg, split)


def _report_end(console, spec: SweepSpec, results: list[RunResult], summary_md: Path, start: float) -> int:
    """The closing lines (finished / queued / running / failed) and the exit status: 1 if a run failed."""
    failed = [r for r in results if r.status == "failed"]
    pending = [r for r in results if r.status in ("queued", "running")]
    if pending:
        console.print(f"sweep {spec.name}: {len(results) - len(failed) - len(pending)} finished, "
                      f"{sum(r.status == 'queued' for r in pending)} queued, "
                      f"{sum(r.status == 'running' for r in pending)} running, {len(failed)} failed; run the same "
                      f"command again for the summary (nothing is submitted twice): {escape(str(summary_md))}")
    else:
        console.print(f"sweep {spec.name}: {len(results) - len(failed)}/{len(results)} runs finished in "
                      f"{time.perf_counter() - start:.0f}s; summary: {escape(str(summary_md))}")
    for r in failed:
        console.print(escape(f"  failed: {r.arm} seed {r.seed}: {r.error} (see {RunDir(r.run_dir).error_file})"),
                      soft_wrap=True)
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
