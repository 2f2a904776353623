"""``make bench`` part ``evaluate``: ``evaluate`` of a shortcut-benchmark run, all its splits, timed.

A synthetic set with the shortcut benchmark's extra test splits (``test_reversed``, ``test_absent``) and a run
folder with untrained weights (the weights do not change the cost); the preprocessing cache is built first, so
the figure is what ``attnmel evaluate RUN`` costs after training: ``val``, the two extra splits and ``test``.
Also counted: how often the checkpoint is read (once since the run is opened once; five times before).

Only APIs that predate the change are used (``make_untrained_run``, ``evaluate_tests``,
``rundir.read_checkpoint``), so ``python attnmel/bench/evaluate.py`` run from an older checkout measures the
"before" figure with the same code. ``ATTNMEL_BENCH_TINY=1``: a few small images (a smoke run).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SPLITS = ("val", "test_reversed", "test_absent", "test")


def run(out_json: Path = Path("reports/bench/evaluate.json")) -> dict[str, Any]:
    """Time ``evaluate_tests`` on the shortcut benchmark's splits; write ``out_json``."""
    import torch

    from attnmel.bench.report import make_untrained_run
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.io import write_json
    from attnmel.train import rundir
    from attnmel.train.run import evaluate_tests

    tiny = os.environ.get("ATTNMEL_BENCH_TINY") == "1"
    n, size = (60, 64) if tiny else (1500, 96)
    loads: list[Path] = []
    read = rundir.read_checkpoint

    def counting(path: Path) -> dict:
        loads.append(path)
        return read(path)

    with tempfile.TemporaryDirectory(prefix="attnmel-bench-evaluate-") as tmp:
        run_dir = make_untrained_run(
            Path(tmp) / "runs" / "shortcut", Path(tmp) / "syn", image_size=64, width=0.25, cache_dir=Path(tmp) / "c",
            overrides=["data.resize=72", "data.batch_size=32", f"data.synthetic.n={n}", f"data.synthetic.size={size}",
                       "data.synthetic.spurious=true", "data.synthetic.extra_tests=[reversed, absent]",
                       "trainer.accelerator=cpu"])
        cfg = rundir.load_run(run_dir).cfg
        dm = AttnMelDataModule(cfg, progress=False)
        counts = {s: len(dm.dataset(s, train=False)) for s in ("train", *SPLITS)}  # builds every split's cache
        rundir.read_checkpoint = counting
        try:
            t0 = time.perf_counter()
            evaluate_tests(run_dir)
            wall = time.perf_counter() - t0
        finally:
            rundir.read_checkpoint = read
        metrics = rundir.read_metrics(run_dir)
    out = {
        "what": "evaluate of a shortcut-benchmark run (untrained attnmel width 0.25, 64 px): val, test_reversed, "
                "test_absent and test, preprocessing cache built beforehand",
        "images": counts, "wall_s": round(wall, 2), "checkpoint_reads": len(loads),
        "splits_scored": sorted(k for k in metrics if k.startswith("classification")),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    write_json(out_json, out)
    print(f"evaluate: {wall:.1f} s for {sum(counts[s] for s in SPLITS)} images in {len(SPLITS)} splits, "
          f"{len(loads)} checkpoint read(s)", flush=True)
    return out


if __name__ == "__main__":
    run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports/bench/evaluate.json"))
