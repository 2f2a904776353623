"""Smoke runs of the benchmark code that has no other test: ``make bench``'s train and export parts and the
``make bench-gpu`` script, at their tiny sizes on the CPU (so the GPU script is known to run before a GPU is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_bench_train_and_export_parts_tiny(tmp_path: Path) -> None:
    _run(["-m", "attnmel.bench", "--only", "train,export", "--tiny", "--out", str(tmp_path / "bench")], tmp_path)
    train = json.loads((tmp_path / "bench" / "train.json").read_text())
    assert train["mode"] == "tiny" and train["steps_timed"] >= 1
    assert train["train_images_per_s"] > 0 and train["bare_model_step"]["images_per_s"] > 0
    assert 0.0 <= train["data_wait_share"] < 1.0
    # Images trained = the oversampled training split (12 images, melanoma rows x4), first step untimed.
    assert train["fit_images_per_s"] > 0 and train["test_auc"] is not None
    export = json.loads((tmp_path / "bench" / "export.json").read_text())
    assert export["onnxruntime"]["images_per_s"] > 0 and export["pytorch_fp32"]["images_per_s"] > 0
    assert max(export["max_abs_diff_vs_pytorch_fp32"].values()) < 1e-4


@pytest.mark.slow
def test_bench_gpu_script_runs_tiny_on_cpu(tmp_path: Path) -> None:
    _run(["-m", "attnmel.bench.gpu", "--tiny", "--out", str(tmp_path / "gpu.json")], tmp_path)
    out = json.loads((tmp_path / "gpu.json").read_text())
    assert out["errors"] == {} and out["tiny"] is True
    runs = out["model"]["runs"]
    assert {(r["precision"], r["mode"]) for r in runs} == {("fp32", "train"), ("fp32", "infer"),
                                                            ("bf16", "train"), ("bf16", "infer")}
    assert all(r["images_per_s"] > 0 for r in runs)
    assert out["train"]["data_wait_share"] is not None and out["train"]["report"]["n_images"] == 4
