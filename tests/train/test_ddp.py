"""Multi-process training through Lightning's DDP strategy: two CPU processes, gloo backend."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnmel.data.readers import read_split

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


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
    # Two processes split the training images: each rank gets ceil(n/2) of them and runs full batches of 4
    # (drop_last), about half the steps a single process runs over all n (n // 4).
    n = len(read_split("synthetic", synthetic_root, "train").samples)
    assert ckpt["global_step"] == math.ceil(n / 2) // 4
    assert ckpt["global_step"] < n // 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classification"]["n_images"] > 0


def _auroc_on_rank(rank: int, world: int, port: int, preds: torch.Tensor, target: torch.Tensor, results) -> None:
    import torch.distributed as dist

    from attnmel.train.module import ValidationAUROC

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        metric = ValidationAUROC()
        for i in range(rank * 4, len(preds), world * 4):  # interleaved batches of 4, as a sharded loader gives
            metric.update(preds[i:i + 4], target[i:i + 4])
        results.put((rank, float(metric.compute())))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_validation_auc_is_synced_across_ranks():
    # Each of two gloo processes sees half of the validation scores; both must report the AUC of all of them.
    import socket

    import torch.multiprocessing as mp
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (40,), generator=gen)
    preds = (torch.rand(40, generator=gen) + 0.4 * target).clamp(0, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_auroc_on_rank, args=(r, 2, port, preds, target, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    expected = roc_auc_score(target.numpy(), preds.numpy())
    own = [i for i in range(40) if (i // 4) % 2 == 0]  # rank 0's share
    half = roc_auc_score(target[own].numpy(), preds[own].numpy())
    assert got[0] == pytest.approx(expected, abs=1e-6) and got[1] == pytest.approx(expected, abs=1e-6)
    assert abs(half - expected) > 1e-3  # a rank's own share alone would give another number
