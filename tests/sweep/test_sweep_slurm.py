"""Cluster sweeps: launcher choice, resources, no double submission, requeue/resume.

Three levels:
- fast: resources and sbatch options from the sweep file and the CLI, the trainer's devices/nodes as SLURM
  resources, which runs a resubmitted sweep submits (the cluster seen through a recording backend);
- ``slow``: the same path through submitit's ``LocalExecutor`` (real job processes, no SLURM), with a run
  killed mid-training and resumed from ``last.ckpt``;
- ``slurm`` (``make test-slurm``, which starts a single-node cluster first): the real sbatch / squeue /
  scontrol path, a two-arm sweep, a rejected option, ``scontrol requeue`` and Lightning's USR1 auto-requeue.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from attnmel.errors import AttnMelError
from attnmel.sweep import run as sweep_run
from attnmel.sweep import slurm
from attnmel.sweep.spec import load_sweep, plan_runs
from tests.sweep._configs import base_config


def _sweep_file(tmp: Path, arms: list[dict[str, Any]], name: str = "tiny", **extra: Any) -> Path:
    base = base_config(tmp, precision="32-true")
    doc = {"base": {"synthetic": base.name}, "seeds": [0], "baseline": arms[0]["name"], "arms": arms, **extra}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


TWO_ARMS = [{"name": "none", "overrides": {"loss.regulariser": "none"}},
            {"name": "lesion",
             "overrides": {"loss.regulariser": "lesion", "loss.weights": {"pool3": 0.5, "pool4": 0.5}}}]


# -- fast: launcher, resources ---------------------------------------------------------------------
def test_unknown_launcher_is_one_line(tmp_path: Path) -> None:
    from attnmel.cli import main

    path = _sweep_file(tmp_path, TWO_ARMS)
    with pytest.raises(AttnMelError, match=r"^unknown launcher 'pbs' \(known: local, slurm\)$"):
        sweep_run.run_sweep(path, out_root=tmp_path / "out", launcher="pbs")
    assert main(["sweep", str(path), "--launcher", "pbs", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()  # nothing planned, nothing written


def test_resources_from_sweep_file_then_cli(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, TWO_ARMS, slurm={"partition": "gpu", "time_min": 240, "mem_gb": 32,
                                                   "sbatch": {"qos": "high"}},
                       datasets={"synthetic": {"slurm": {"partition": "debug", "cpus_per_run": 4}}})
    spec = load_sweep(path)
    res = slurm.resources_from(spec.slurm, {"time_min": 30, "account": "lab",
                                            "sbatch": ["constraint=a100", "--exclusive"],
                                            "partition": None}, spec.path)
    assert (res.partition, res.cpus_per_run, res.time_min, res.mem_gb, res.account) == ("debug", 4, 30, 32.0, "lab")
    assert res.sbatch == {"qos": "high", "constraint": "a100", "exclusive": True}
    with pytest.raises(AttnMelError, match=r"tiny\.yaml: unknown slurm option 'gpu' \(known: "):
        slurm.resources_from({"gpu": 1}, {}, spec.path)
    with pytest.raises(AttnMelError, match="command line: slurm option 'time_min' must be int"):
        slurm.resources_from({}, {"time_min": "soon"}, spec.path)


@pytest.mark.slow  # seconds each: make test stays under 2 minutes; make test-slow (CI) runs it
def test_shipped_sweep_files_slurm_blocks_resolve() -> None:
    repo = Path(__file__).resolve().parents[2]
    for name in ("paper", "regularisers", "attention"):
        spec = load_sweep(repo / "experiments" / "sweeps" / f"{name}.yaml", "isic2017")
        res = slurm.resources_from(spec.slurm, {}, spec.path)
        assert (res.gpus_per_run, res.time_min) == (1, 240)
        params = slurm.job_parameters(plan_runs(spec, "sweeps")[0].cfg, res, "j")
        assert params["gpus_per_node"] == 1 and params["ntasks_per_node"] == 1


def test_trainer_devices_and_nodes_become_slurm_resources() -> None:
    res = slurm.SlurmResources(partition="gpu", cpus_per_run=8, mem_gb=16, time_min=120, sbatch={"qos": "high"})
    gpu = slurm.job_parameters({"trainer": {"accelerator": "gpu", "devices": 4, "num_nodes": 2}}, res, "j")
    assert (gpu["nodes"], gpu["ntasks_per_node"], gpu["gpus_per_node"]) == (2, 4, 4)
    assert (gpu["partition"], gpu["cpus_per_task"], gpu["mem"], gpu["time"]) == ("gpu", 8, "16384M", 120)
    assert gpu["additional_parameters"] == {"requeue": True, "qos": "high", "signal": "USR1@90"}
    cpu = slurm.job_parameters({"trainer": {"accelerator": "cpu", "devices": 2, "num_nodes": 1}}, res, "j")
    assert cpu["ntasks_per_node"] == 2 and "gpus_per_node" not in cpu
    auto = slurm.job_parameters({"trainer": {"accelerator": "auto", "devices": "auto"}},
                                slurm.SlurmResources(gpus_per_run=2), "j")
    assert (auto["ntasks_per_node"], auto["gpus_per_node"]) == (2, 2)


def test_sbatch_message_is_one_line() -> None:
    err = RuntimeError("sbatch: error: invalid partition specified: nope\n"
                       "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert slurm.sbatch_message(err) == ("sbatch: error: invalid partition specified: nope; "
                                         "sbatch: error: Batch job submission failed: Invalid partition name specified")
    err = RuntimeError("sbatch: error: resolve_ctls_from_dns_srv\n"
                       "sbatch: fatal: Could not establish a configuration source")
    assert slurm.sbatch_message(err) == "sbatch: fatal: Could not establish a configuration source"


# -- fast: which runs a (re)submitted sweep submits --------------------------------------------------
class RecordingCluster(slurm.Backend):
    """The cluster as the sweep sees it: submissions get increasing ids; states are set by the test."""

    name = "recording"

    def __init__(self) -> None:
        self.submitted: list[tuple[str, int]] = []
        self.state: dict[str, str] = {}

    def submit(self, plan, params) -> str:
        self.submitted.append((plan.arm, plan.seed))
        job_id = str(100 + len(self.state))  # never reused, like SLURM's
        self.state[job_id] = "queued"
        return job_id

    def states(self, job_ids):
        return {j: self.state.get(j, "ended") for j in job_ids}


def _quiet_console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


def test_resubmission_skips_queued_running_and_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_run, "_prepare_data", lambda cfg: None)
    monkeypatch.setattr(sweep_run, "write_test_labels", lambda d, cfg: None)
    monkeypatch.setattr("attnmel.sweep.summary._rebuild_index", lambda root: None)
    path = _sweep_file(tmp_path, TWO_ARMS, seeds=[0, 1])
    out = tmp_path / "out"
    cluster = RecordingCluster()

    def sweep() -> int:
        return sweep_run.run_sweep(path, out_root=out, launcher="slurm", backend=cluster, console=_quiet_console())

    assert sweep() == 0
    assert sorted(cluster.submitted) == [("lesion", 0), ("lesion", 1), ("none", 0), ("none", 1)]
    runs = {(p.arm, p.seed): p.run_dir for p in plan_runs(load_sweep(path), out)}
    ids = {k: json.loads((d / "slurm" / "job.json").read_text())["job_id"] for k, d in runs.items()}
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["counts"] == {"done": 0, "queued": 4, "running": 0, "failed": 0, "missing": 0}

    # One job runs, one is still queued, one ended having finished its run, one ended without finishing.
    cluster.state[ids[("none", 0)]] = "running"
    cluster.state[ids[("none", 1)]] = "ended"
    d = runs[("none", 1)]
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps({"classification": {"auc": 0.9}, "attention_skipped": "no masks"}))
    cluster.state[ids[("lesion", 1)]] = "ended"
    cluster.submitted.clear()
    assert sweep() == 0
    assert cluster.submitted == [("lesion", 1)]  # only the run whose job ended unfinished
    record = json.loads((runs[("lesion", 1)] / "slurm" / "job.json").read_text())
    assert record["history"] == [ids[("lesion", 1)]] and record["job_id"] != ids[("lesion", 1)]
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["counts"] == {"done": 1, "queued": 2, "running": 1, "failed": 0, "missing": 0}
    md = (out / "tiny" / "summary.md").read_text()
    assert "Runs: 1 finished, 2 queued, 1 running, 0 failed." in md
    assert "`none` seed 0: running" in md

    # A job that ended without finishing its run, seen by --wait: failed, with the job's log named.
    cluster.state = dict.fromkeys(cluster.state, "ended")
    results = slurm.refresh([sweep_run.RunResult("lesion", 0, str(runs[("lesion", 0)]), "queued",
                                                 job_id=ids[("lesion", 0)])], cluster)
    assert results[0].status == "failed"
    assert f"job {ids[('lesion', 0)]} ended before the run finished" in results[0].error
    assert (runs[("lesion", 0)] / "error.txt").read_text().startswith(f"job {ids[('lesion', 0)]} ended")


def test_resume_checkpoint_prefers_the_newest(tmp_path: Path) -> None:
    from attnmel.train.run import resume_checkpoint

    assert resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    os.utime(last, ns=(1_000_000_000, 1_000_000_000))
    assert resume_checkpoint(tmp_path) == hpc  # Lightning's requeue checkpoint is newer
    os.utime(hpc, ns=(500_000_000, 500_000_000))
    assert resume_checkpoint(tmp_path) == last


# -- slow: submitit's LocalExecutor (real job processes, no SLURM) -----------------------------------
def _log_text(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run_dir / "slurm").glob("*_log.*")))


@pytest.mark.slow
def test_local_executor_sweep_and_resume_after_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _sweep_file(tmp_path, [{"name": "none", "overrides": {"loss.regulariser": "none"}}],
                       overrides={"trainer.max_epochs": 6})
    out = tmp_path / "out"
    backend = slurm.LocalBackend()
    assert sweep_run.run_sweep(path, out_root=out, backend=backend, launcher="slurm", console=_quiet_console()) == 0
    run_dir = next(p.run_dir for p in plan_runs(load_sweep(path), out))
    job = json.loads((run_dir / "slurm" / "job.json").read_text())
    # Resubmitting while the job runs submits nothing.
    assert sweep_run.run_sweep(path, out_root=out, backend=backend, launcher="slurm", console=_quiet_console()) == 0
    assert json.loads((run_dir / "slurm" / "job.json").read_text())["job_id"] == job["job_id"]
    # Stop the job once it has a checkpoint (SIGTERM, as a scheduler preempting it; submitit's controller
    # forwards it to the task), then resubmit: it resumes.
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert time.monotonic() < deadline, _log_text(run_dir)
        time.sleep(0.5)
    os.kill(int(job["job_id"]), signal.SIGTERM)
    while backend.states([job["job_id"]])[job["job_id"]] != "ended":
        assert time.monotonic() < deadline, _log_text(run_dir)
        time.sleep(0.5)
    assert not (run_dir / "error.txt").exists()  # a stopped job is not a failed run
    rc = sweep_run.run_sweep(path, out_root=out, backend=backend, launcher="slurm", wait=True, console=_quiet_console(),
                             wait_timeout_s=300)
    assert rc == 0, _log_text(run_dir)
    record = json.loads((run_dir / "slurm" / "job.json").read_text())
    assert record["history"] == [job["job_id"]]
    log = _log_text(run_dir)
    assert "resuming from" in log and "last.ckpt" in log
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "auc" in m["classification"] and m["attention"]["mean"]
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["counts"]["done"] == 1


# -- slurm: a real single-node cluster (make test-slurm) ---------------------------------------------
needs_slurm = pytest.mark.skipif(not (os.environ.get("SLURM_CONF") and shutil.which("sbatch")),
                                 reason="needs a SLURM cluster (make test-slurm starts one)")


def _scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True)


def _state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def _wait_for(cond, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.mark.slurm
@needs_slurm
def test_slurm_two_arm_sweep_summary_and_rejected_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    from attnmel.cli import main

    monkeypatch.chdir(tmp_path)
    path = _sweep_file(tmp_path, TWO_ARMS, slurm={"cpus_per_run": 1, "time_min": 10})
    # An option sbatch rejects: its own message, one line, exit 2, nothing submitted.
    assert main(["sweep", str(path), "--launcher", "slurm", "--out", "bad", "--partition", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the sweep's header line, then the error
    assert err[-1].startswith("attnmel: error: sbatch rejected the job for bad/tiny/none/seed0: ")
    assert "sbatch: error: invalid partition specified: nope" in err[-1] and "Traceback" not in "".join(err)
    assert main(["sweep", str(path), "--launcher", "slurm", "--out", "bad", "--sbatch", "frobnicate=1"]) == 2
    assert "sbatch: unrecognized option '--frobnicate=1'" in capsys.readouterr().err

    assert main(["sweep", str(path), "--launcher", "slurm", "--out", "out", "--wait"]) == 0
    sweep_dir = tmp_path / "out" / "tiny"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"done": 2, "queued": 0, "running": 0, "failed": 0, "missing": 0}
    assert "Runs: 2 finished, 0 queued, 0 running, 0 failed." in (sweep_dir / "summary.md").read_text()
    ids = []
    for arm in ("none", "lesion"):
        run_dir = sweep_dir / arm / "seed0"
        m = json.loads((run_dir / "metrics.json").read_text())
        assert "auc" in m["classification"] and m["attention"]["mean"]
        job = json.loads((run_dir / "slurm" / "job.json").read_text())
        ids.append(job["job_id"])
        assert job["parameters"]["cpus_per_task"] == 1
        log = (run_dir / "slurm" / f"{job['job_id']}_0_log.err").read_text()
        assert f"SLURM job {job['job_id']}, restart 0" in log  # the job's log is in the run folder
    assert "auc" in summary["arms"][1]["tests"]
    # Resubmitting a finished sweep submits nothing.
    assert main(["sweep", str(path), "--launcher", "slurm", "--out", "out"]) == 0
    assert [json.loads((sweep_dir / a / "seed0" / "slurm" / "job.json").read_text())["job_id"]
            for a in ("none", "lesion")] == ids


@pytest.mark.slurm
@needs_slurm
def test_slurm_requeue_resumes_and_nothing_is_submitted_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """seed 0: ``scontrol requeue`` (kill + requeue) -> resumes from last.ckpt; seed 1: USR1 (the time-limit
    warning) -> Lightning saves hpc_ckpt_1.ckpt and requeues the job itself -> it resumes."""
    monkeypatch.chdir(tmp_path)
    path = _sweep_file(tmp_path, [{"name": "none", "overrides": {"loss.regulariser": "none"}}], name="long",
                       seeds=[0, 1], overrides={"trainer.max_epochs": 10},
                       slurm={"cpus_per_run": 1, "time_min": 10})
    out = tmp_path / "out"

    def sweep(**kw: Any) -> int:
        return sweep_run.run_sweep(path, out_root=out, launcher="slurm", console=_quiet_console(), **kw)

    assert sweep() == 0
    runs = [p.run_dir for p in plan_runs(load_sweep(path), out)]
    ids = [json.loads((d / "slurm" / "job.json").read_text())["job_id"] for d in runs]
    assert sweep() == 0  # queued or running: not submitted again
    assert [json.loads((d / "slurm" / "job.json").read_text())["job_id"] for d in runs] == ids
    listed = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True).stdout.split()
    assert sorted(listed) == ["attnmel-long-none-s0", "attnmel-long-none-s1"]

    _wait_for(lambda: all((d / "checkpoints" / "last.ckpt").is_file() for d in runs), "a first checkpoint")
    _wait_for(lambda: all(_state(j) == "RUNNING" for j in ids), "both jobs running")
    _scontrol("requeue", ids[0])
    subprocess.run(["scancel", "--signal=USR1", ids[1]], check=True)
    _wait_for(lambda: (runs[1] / "hpc_ckpt_1.ckpt").is_file(), "Lightning's requeue checkpoint")
    # SLURM holds a requeued job back for two minutes (BeginTime); release it now.
    for j in ids:
        _wait_for(lambda j=j: _state(j) == "PENDING", f"job {j} requeued")
        _scontrol("update", f"JobId={j}", "StartTime=now")
    assert sweep(wait=True, wait_timeout_s=400) == 0
    # seed 1 was only signalled: its requeue (restart 1) is Lightning's own. It resumes from the newer of its
    # hpc_ckpt_1.ckpt and a last.ckpt written after it (the job trains on until SLURM stops it).
    for d, j, ckpts in zip(runs, ids, (("checkpoints/last.ckpt",), ("hpc_ckpt_1.ckpt", "checkpoints/last.ckpt"))):
        log = (d / "slurm" / f"{j}_0_log.err").read_text()
        assert f"SLURM job {j}, restart 1" in log, log[-2000:]
        assert any(f"resuming from {d / c}" in log for c in ckpts), log[-2000:]
        m = json.loads((d / "metrics.json").read_text())
        assert "auc" in m["classification"]
        assert json.loads((d / "slurm" / "job.json").read_text())["job_id"] == j  # same job, requeued
    summary = json.loads((out / "long" / "summary.json").read_text())
    assert summary["counts"]["done"] == 2


@pytest.mark.slurm
@needs_slurm
def test_slurm_ddp_run_gets_one_task_per_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.devices=2 (CPU DDP) -> --ntasks-per-node=2: two ranks, rank 0 evaluates and scores."""
    monkeypatch.chdir(tmp_path)
    path = _sweep_file(tmp_path, [{"name": "none", "overrides": {"loss.regulariser": "none"}}], name="ddp",
                       overrides={"trainer.devices": 2, "trainer.strategy": "ddp"},
                       slurm={"cpus_per_run": 1, "time_min": 10})
    out = tmp_path / "out"
    assert sweep_run.run_sweep(path, out_root=out, launcher="slurm", wait=True, wait_timeout_s=400,
                               console=_quiet_console()) == 0
    run_dir = next(p.run_dir for p in plan_runs(load_sweep(path), out))
    job = json.loads((run_dir / "slurm" / "job.json").read_text())
    assert job["parameters"]["ntasks_per_node"] == 2 and job["parameters"]["nodes"] == 1
    for task in (0, 1):  # one log per task, both in the run folder
        log_err = run_dir / "slurm" / f"{job['job_id']}_{task}_log.err"
        assert f"SLURM job {job['job_id']}, restart 0" in log_err.read_text()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "auc" in m["classification"] and m["attention"]["mean"]
