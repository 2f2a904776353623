"""Multi-process training through Lightning's DDP strategy: two CPU processes, gloo backend."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.slow
def test_two_process_ddp_on_cpu(synthetic_root, tmp_path):
    # A fresh interpreter: DDP launches subprocesses that re-run the entry point.
    cmd = [sys.executable, "-m", "attnmel.cli", "train", "--config", str(EXPERIMENTS / "synthetic.yaml"),
           f"data.root={synthetic_root}", f"out_dir={tmp_path}", "name=ddp", "data.image_size=64",
           "data.resize=64", "data.batch_size=4", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}",
           "model.width=0.25", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.strategy=ddp", "trainer.progress_bar=false"]
    env = {**os.environ, "PL_TORCH_DISTRIBUTED_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # Two processes split the 29 training images: each rank ran ceil(29/2/4) - drop_last batches.
    assert ckpt["global_step"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classification"]["n_images"] > 0
