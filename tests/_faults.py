"""Shared by the fault tests (split out of tests/test_robustness.py): tiny configs, a trained and a made run
folder, one-line error reading, and tmpfs mounts (root only; skipped otherwise)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from attnmel import config as config_mod

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def tiny_overrides(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"data.root={root}", f"out_dir={out}", f"name={name}", "data.image_size=64", "data.resize=64",
            "data.batch_size=8", "data.num_workers=0", f"data.cache_dir={out / 'cache'}", "trainer.max_epochs=1",
            "trainer.progress_bar=false", "model.width=0.125", "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1", *extra]


def tiny_cfg(root: Path, out: Path, name: str, *extra: str) -> dict:
    return config_mod.load_config(EXPERIMENTS / "synthetic.yaml", tiny_overrides(root, out, name, *extra))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnmel: error: ") and "\n" not in err, err
    return err


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".attnmel.lock"))
    return dest


def csv_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "logs" / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted({int(float(r["epoch"])) for r in rows if r.get("epoch") and r.get("val_auc")})



def mount_tmpfs(path: Path, size: str, *opts: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *opts]), "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
