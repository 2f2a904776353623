"""Sweeps on a SLURM cluster, through submitit: one job per arm x seed, resumable, never submitted twice.

``attnmel sweep FILE --launcher slurm`` submits every arm x seed that has not finished as one sbatch job
(:func:`submit_sweep`). Each job runs :func:`run_job`, which is :func:`attnmel.sweep.one.run_one`: the same
train -> evaluate -> score-attention steps as a local sweep, resuming what the run folder already holds.

- **Resources** (:class:`SlurmResources`): the sweep file's ``slurm:`` block (top level, then
  ``datasets.<d>.slurm``), then the command line. ``trainer.num_nodes`` becomes ``--nodes`` and
  ``trainer.devices`` ``--ntasks-per-node`` (Lightning wants one task per device under SLURM) and, on
  GPU, ``--gpus-per-node``.
- **Requeue**: sbatch asks SLURM for ``USR1`` ``signal_delay_s`` before the time limit; inside the job
  Lightning's ``SLURMEnvironment(auto_requeue=True)`` (set in :func:`attnmel.train.run.build_trainer`)
  saves ``hpc_ckpt_<n>.ckpt`` in the run folder and calls ``scontrol requeue``. A requeued (or preempted,
  or ``scontrol requeue``-d) job starts :func:`run_job` again, which resumes from the newest of
  ``hpc_ckpt_*.ckpt`` and ``checkpoints/last.ckpt``.
- **No double submission**: the job id goes to ``RUN_DIR/slurm/job.json``; a resubmitted sweep asks
  ``squeue`` (then ``sacct`` where accounting exists) and leaves queued and running jobs alone.
- **Logs**: submitit's folder is ``RUN_DIR/slurm/``: ``<jobid>_0_log.out`` / ``.err`` per job.
- **Errors**: an option sbatch rejects is reported as sbatch's own message, in one line.

The cluster is reached only through :class:`Backend` (submit, states): :class:`SlurmBackend` (sbatch via
submitit, squeue/sacct) for real clusters; :class:`LocalBackend` (submitit's ``LocalExecutor``, process ids)
runs the same path on a machine without SLURM (``make test-slow``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from attnmel.errors import AttnMelError
from attnmel.io import write_json, write_text
from attnmel.sweep.spec import RunPlan
from attnmel.train.rundir import RunDir

log = logging.getLogger("attnmel.sweep")

LAUNCHERS = ("local", "slurm")
# SLURM job states by what they mean for a run (squeue %T / sacct State, upper case, suffixes dropped).
QUEUED_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                 "SUSPENDED", "STOPPED", "SPECIAL_EXIT"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}


def check_launcher(name: str) -> str:
    """``local`` or ``slurm``; anything else is a one-line error."""
    if name not in LAUNCHERS:
        raise AttnMelError(f"unknown launcher '{name}' (known: {', '.join(LAUNCHERS)})")
    return name


# -- resources -------------------------------------------------------------------------------------
@dataclass
class SlurmResources:
    """What each job asks SLURM for (per run; the trainer's devices / nodes add tasks and GPUs)."""

    partition: str | None = None
    gpus_per_run: int | None = None   # per node; default: trainer.devices when the run trains on GPUs
    cpus_per_run: int | None = None   # --cpus-per-task
    mem_gb: float | None = None       # --mem, per node
    time_min: int = 60                # --time
    account: str | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)  # extra sbatch options, e.g. {qos: high}
    signal_delay_s: int = 90          # USR1 this long before the time limit: checkpoint and requeue

    def merged(self, other: dict[str, Any], source: str) -> SlurmResources:
        """A copy with ``other`` (a ``slurm:`` mapping or CLI values; None = keep) on top, checked."""
        known = {f.name for f in fields(self)}
        out = asdict(self)
        for key, value in other.items():
            if key not in known:
                raise AttnMelError(f"{source}: unknown slurm option '{key}' (known: {', '.join(sorted(known))})")
            if value is None:
                continue
            if key == "sbatch":
                out["sbatch"] = {**out["sbatch"], **_sbatch_mapping(value, source)}
            else:
                out[key] = _typed(key, value, source)
        return SlurmResources(**out)


_TYPES: dict[str, Callable[[Any], Any]] = {"partition": str, "account": str, "gpus_per_run": int,
                                           "cpus_per_run": int, "time_min": int, "signal_delay_s": int,
                                           "mem_gb": float}


def _typed(key: str, value: Any, source: str) -> Any:
    try:
        v = _TYPES[key](value)
    except (TypeError, ValueError):
        raise AttnMelError(f"{source}: slurm option '{key}' must be {_TYPES[key].__name__}, got {value!r}") from None
    if key != "partition" and key != "account" and v < 0:
        raise AttnMelError(f"{source}: slurm option '{key}' must not be negative, got {value!r}")
    return v


def _sbatch_mapping(value: Any, source: str) -> dict[str, Any]:
    """``{qos: high}`` or ``["qos=high", "--exclusive"]`` -> sbatch long options without dashes."""
    if isinstance(value, dict):
        return {str(k).lstrip("-"): v for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out: dict[str, Any] = {}
        for item in value:
            key, sep, val = str(item).lstrip("-").partition("=")
            if not key:
                raise AttnMelError(f"{source}: empty sbatch option {item!r}")
            out[key] = val if sep else True
        return out
    raise AttnMelError(f"{source}: 'sbatch' must be a mapping or a list of KEY=VALUE, got {value!r}")


def resources_from(spec_slurm: dict[str, Any], cli: dict[str, Any], sweep_file: Path | str) -> SlurmResources:
    """Defaults <- the sweep file's ``slurm:`` blocks (already merged by the spec) <- the command line."""
    return SlurmResources().merged(spec_slurm or {}, str(sweep_file)).merged(cli, "command line")


def _devices(t: dict[str, Any]) -> int | None:
    d = t.get("devices", 1)
    if isinstance(d, (list, tuple)):
        return len(d)
    try:
        n = int(d)
    except (TypeError, ValueError):
        return None  # "auto"
    return None if n < 0 else n


def job_parameters(cfg: dict[str, Any], res: SlurmResources, job_name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor.update_parameters`` keywords for one run's config."""
    t = cfg.get("trainer") or {}
    nodes = int(t.get("num_nodes", 1) or 1)
    on_gpu = str(t.get("accelerator", "auto")) in ("gpu", "cuda") or (
        str(t.get("accelerator")) == "auto" and res.gpus_per_run)
    devices = _devices(t)
    if devices is None:  # devices: auto / -1 -> as many as the job gets
        devices = res.gpus_per_run or 1
    gpus = res.gpus_per_run if res.gpus_per_run is not None else (devices if on_gpu else 0)
    params: dict[str, Any] = {"job_name": job_name, "time": res.time_min, "nodes": nodes,
                              "ntasks_per_node": devices, "signal_delay_s": res.signal_delay_s,
                              "stderr_to_stdout": False}
    if gpus:
        params["gpus_per_node"] = gpus
    for key, name in (("partition", "partition"), ("cpus_per_run", "cpus_per_task"), ("account", "account")):
        if getattr(res, key) is not None:
            params[name] = getattr(res, key)
    if res.mem_gb is not None:
        params["mem"] = f"{max(1, int(round(res.mem_gb * 1024)))}M"
    # USR1 (not submitit's USR2) is Lightning's auto-requeue signal; submitit's handler stays idle.
    params["additional_parameters"] = {"requeue": True, **res.sbatch, "signal": f"USR1@{res.signal_delay_s}"}
    return params


# -- the job record in the run folder ----------------------------------------------------------------
def job_record_path(run_dir: Path) -> Path:
    return RunDir(run_dir).job_file


def read_job_record(run_dir: Path) -> dict[str, Any] | None:
    path = job_record_path(run_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("%s: unreadable job record, ignored", path)
        return None
    return data if isinstance(data, dict) and data.get("job_id") else None


def write_job_record(run_dir: Path, backend: str, job_id: str, params: dict[str, Any]) -> None:
    old = read_job_record(run_dir) or {}
    history = list(old.get("history", [])) + ([old["job_id"]] if old.get("job_id") else [])
    write_json(job_record_path(run_dir), {"backend": backend, "job_id": str(job_id), "submitted_at": time.time(),
                                          "parameters": params, "history": history})


# -- backends --------------------------------------------------------------------------------------
class Backend:
    """Where jobs go: ``submit`` one run, ask ``states`` of job ids (``queued``/``running``/``ended``)."""

    name = "?"

    def submit(self, plan: RunPlan, params: dict[str, Any]) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:  # pragma: no cover - interface
        raise NotImplementedError


def _category(state: str) -> str:
    s = state.strip().upper().split()[0].rstrip("+") if state.strip() else ""
    if s in QUEUED_STATES:
        return "queued"
    if s in RUNNING_STATES:
        return "running"
    return "ended"


def sbatch_message(error: BaseException) -> str:
    """sbatch's own complaint (``sbatch: error: ...``) out of submitit's multi-line exception, in one line."""
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    picked = [ln for ln in lines if ln.startswith("sbatch:")]
    # Several "sbatch: error:" lines lead up to the one that says why (often "sbatch: fatal: ...").
    picked = [ln for ln in picked if ln.startswith("sbatch: fatal")] or picked
    if not picked:
        picked = ([ln for ln in lines if "error" in ln.lower() and "Traceback" not in ln] or lines[-1:]
                  or [type(error).__name__])
    return "; ".join(dict.fromkeys(picked))[:500]


class SlurmBackend(Backend):
    """sbatch through submitit's ``SlurmExecutor``; states from ``squeue``, then ``sacct``."""

    name = "slurm"

    def __init__(self) -> None:
        missing = [c for c in ("sbatch", "squeue") if shutil.which(c) is None]
        if missing:
            raise AttnMelError(f"--launcher slurm: {', '.join(missing)} not found on PATH "
                               "(is this a SLURM login node?)")

    def submit(self, plan: RunPlan, params: dict[str, Any]) -> str:
        import submitit

        # No "%j" in the folder: every job of a run (resubmissions too) logs into RUN_DIR/slurm/.
        executor = submitit.SlurmExecutor(folder=str(RunDir(plan.run_dir).slurm_dir.resolve()),
                                          max_num_timeout=0)
        executor.update_parameters(**params)
        noise = io.StringIO()
        try:
            with contextlib.redirect_stderr(noise):  # submitit prints sbatch's stderr itself on failure
                job = executor.submit(run_job, _plan_data(plan))
        except Exception as e:  # noqa: BLE001 - submitit wraps sbatch's exit status in several types
            raise AttnMelError(f"sbatch rejected the job for {plan.run_dir}: {sbatch_message(e)}") from None
        return str(job.job_id)

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = [str(j) for j in job_ids]
        found: dict[str, str] = {}
        for jid in ids:  # one at a time: squeue fails the whole list when one id is unknown
            out = _squeue(jid)
            for line in out.splitlines():
                key, _, state = line.partition("|")
                if key.strip() == jid:
                    found[jid] = _category(state)
        rest = [j for j in ids if j not in found]
        if rest and shutil.which("sacct"):
            out = _run_quiet(["sacct", "-n", "-P", "-X", "-j", ",".join(rest), "-o", "JobIDRaw,State"])
            for line in (out or "").splitlines():
                key, _, state = line.partition("|")
                if key.strip() in rest:
                    found[key.strip()] = _category(state)
        return {j: found.get(j, "ended") for j in ids}  # unknown to both: long gone


def _squeue(job_id: str) -> str:
    """``squeue`` lines of one job; "" when SLURM no longer knows it. Any other failure is an error: taking a
    queued job for ended would submit it twice."""
    try:
        proc = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%i|%T"], capture_output=True,
                              text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AttnMelError(f"squeue failed ({type(e).__name__}): cannot tell which jobs still run; "
                           "nothing submitted") from None
    if proc.returncode == 0:
        return proc.stdout
    message = " ".join(proc.stderr.split())
    if "invalid job id" in message.lower():
        return ""
    raise AttnMelError(f"squeue failed: {message or f'exit status {proc.returncode}'}: cannot tell which jobs "
                       "still run; nothing submitted")


def _run_quiet(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


class LocalBackend(Backend):
    """submitit's ``LocalExecutor``: the job path without SLURM (job id = process id of the job)."""

    name = "local-submitit"

    def submit(self, plan: RunPlan, params: dict[str, Any]) -> str:
        import submitit

        executor = submitit.LocalExecutor(folder=str(RunDir(plan.run_dir).slurm_dir.resolve()))
        executor.update_parameters(timeout_min=int(params.get("time", 60)))
        job = executor.submit(run_job, _plan_data(plan))
        return str(job.job_id)

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:
        out = {}
        for jid in job_ids:
            out[str(jid)] = "running" if _pid_alive(int(jid)) else "ended"
        return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child that nobody reaped yet is a zombie: ended
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# -- the job itself --------------------------------------------------------------------------------
def _plan_data(plan: RunPlan) -> dict[str, Any]:
    return {"arm": plan.arm, "seed": plan.seed, "cfg": plan.cfg}


def run_job(plan_data: dict[str, Any]) -> dict[str, Any]:
    """What a job runs: :func:`attnmel.sweep.one.run_one` on the plan (resumes from the run folder)."""
    from attnmel.sweep.one import run_one

    logging.basicConfig(level=logging.INFO, format="attnmel: %(levelname)s: %(message)s")
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        import torch

        torch.set_num_threads(int(cpus))
    plan = RunPlan(arm=plan_data["arm"], seed=int(plan_data["seed"]), cfg=plan_data["cfg"])
    log.info("run %s seed %s in %s (SLURM job %s, restart %s)", plan.arm, plan.seed, plan.run_dir,
             os.environ.get("SLURM_JOB_ID", "-"), os.environ.get("SLURM_RESTART_COUNT", "0"))
    result = run_one(plan)
    if result.status == "failed":
        log.error("run failed: %s", result.error)
    return asdict(result)


# -- submitting a sweep ------------------------------------------------------------------------------
def _job_name(plan: RunPlan) -> str:
    return f"attnmel-{Path(plan.cfg['out_dir']).parent.name}-{plan.arm}-s{plan.seed}"[:120]


def submit_sweep(plans: list[RunPlan], resources: SlurmResources, backend: Backend,
                 on_result: Callable[[Any, int, int], None] | None = None) -> list[Any]:
    """Submit every plan that is neither finished nor already queued/running; one RunResult per plan.

    Statuses: ``skipped`` (finished), ``queued`` / ``running`` (a job of an earlier call is still in
    SLURM: not submitted again), ``queued`` (submitted now, job id in ``RunResult.job_id``).
    """
    from attnmel.sweep.one import RunResult, check_same_run
    from attnmel.sweep.state import run_finished

    report = on_result or (lambda r, i, n: None)
    records = {i: read_job_record(p.run_dir) for i, p in enumerate(plans)}
    live = backend.states([r["job_id"] for r in records.values() if r])
    results: list[Any] = []
    for i, plan in enumerate(plans):
        rec = records[i]
        state = live.get(rec["job_id"]) if rec else None
        if state in ("queued", "running"):
            res = RunResult(plan.arm, plan.seed, str(plan.run_dir), state, job_id=rec["job_id"])
        elif run_finished(plan.run_dir):
            res = RunResult(plan.arm, plan.seed, str(plan.run_dir), "skipped", job_id=rec["job_id"] if rec else None)
        else:
            check_same_run(plan.run_dir, plan.cfg)
            params = job_parameters(plan.cfg, resources, _job_name(plan))
            job_id = backend.submit(plan, params)
            RunDir(plan.run_dir).error_file.unlink(missing_ok=True)
            write_job_record(plan.run_dir, backend.name, job_id, params)
            res = RunResult(plan.arm, plan.seed, str(plan.run_dir), "queued", job_id=job_id)
        results.append(res)
        report(res, i + 1, len(plans))
    return results


def refresh(results: list[Any], backend: Backend) -> list[Any]:
    """Statuses now: a job still in SLURM keeps ``queued``/``running``; an ended one is ``done`` when its
    run finished, else ``failed`` (its ``error.txt``, or a line naming the job and its log)."""
    from attnmel.sweep.one import RunResult
    from attnmel.sweep.state import run_finished

    ids = [r.job_id for r in results if r.job_id and r.status in ("queued", "running")]
    live = backend.states(ids) if ids else {}
    out = []
    for r in results:
        if r.status not in ("queued", "running"):
            out.append(r)
            continue
        state = live.get(r.job_id, "ended")
        run_dir = Path(r.run_dir)
        if state in ("queued", "running"):
            out.append(RunResult(r.arm, r.seed, r.run_dir, state, job_id=r.job_id))
        elif run_finished(run_dir):
            out.append(RunResult(r.arm, r.seed, r.run_dir, "done", job_id=r.job_id))
        else:
            err = RunDir(run_dir).error_file
            if err.is_file():
                message = (err.read_text(encoding="utf-8").splitlines() or ["failed"])[0]
            else:
                log_err = RunDir(run_dir).slurm_dir / f"{r.job_id}_0_log.err"
                message = f"job {r.job_id} ended before the run finished (see {log_err})"
                write_text(err, message + "\n")
            out.append(RunResult(r.arm, r.seed, r.run_dir, "failed", error=message, job_id=r.job_id))
    return out


def wait(results: list[Any], backend: Backend, poll_s: float = 5.0, timeout_s: float | None = None,
         on_change: Callable[[Any], None] | None = None) -> list[Any]:
    """Poll until no job is queued or running (or ``timeout_s`` passed); the final statuses."""
    start = time.monotonic()
    current = refresh(results, backend)
    seen = {(r.arm, r.seed): r.status for r in current}
    while any(r.status in ("queued", "running") for r in current):
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise AttnMelError(f"jobs still queued or running after {timeout_s:.0f}s; run the sweep again later "
                               "for the summary (nothing is submitted twice)")
        time.sleep(poll_s)
        current = refresh(current, backend)
        for r in current:
            if seen.get((r.arm, r.seed)) != r.status:
                seen[(r.arm, r.seed)] = r.status
                if on_change:
                    on_change(r)
    return current


def backend_for(name: str) -> Backend:
    """The backend of a launcher name (``slurm``; ``local-submitit`` for tests without SLURM)."""
    if name == "slurm":
        return SlurmBackend()
    if name == "local-submitit":
        return LocalBackend()
    raise AttnMelError(f"unknown launcher '{name}' (known: {', '.join(LAUNCHERS)})")

