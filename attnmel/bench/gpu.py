"""``make bench-gpu``: the GPU figures in one prepared run (about 10 minutes on one GPU), ``reports/bench/gpu.json``.

1. the model benchmark's GPU section: AttnMel-CNN at 224 px, batch 32, fp32 vs bf16-mixed, training and
   inference images per second and peak memory (:func:`attnmel.bench.model.gpu_section`);
2. a real ``attnmel train`` with the ``isic2017`` recipe on a generated ISIC-sized set (2000 / 150 / 600
   JPEGs of 1024x768 to 4000x3000; :mod:`attnmel.bench.train`, mode ``gpu``): images per second end to end
   and the share of step time spent waiting for data (target < 10 %);
3. ``attnmel report`` on the 600 test images of that run.

``--tiny`` runs the same code on the CPU at smoke-test sizes (no GPU needed; the tests run it), so the
script is known to work before a GPU is lent. Each part's failure is recorded and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from attnmel.io import write_json


def run(out_json: Path, tiny: bool = False) -> dict[str, Any]:
    """Run the three parts; returns (and writes) ``{"model": ..., "train": ..., "errors": ...}``."""
    import torch

    from attnmel.bench import model, train

    cuda = torch.cuda.is_available() and not tiny
    if not cuda and not tiny:
        raise SystemExit("bench-gpu: no CUDA device here (use --tiny for a CPU smoke run of this script)")
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tiny": tiny,
                           "device": torch.cuda.get_device_name(0) if cuda else "cpu (tiny smoke run)",
                           "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
                           "errors": {}}
    t0 = time.perf_counter()
    parts = {
        "model": lambda: model.gpu_section("cuda", 224, 32) if cuda else model.gpu_section("cpu", 64, 2),
        "train": lambda: train.run(out_json.with_name("gpu_train.json"), "gpu" if cuda else "tiny",
                                   report_images=True),
    }
    for name, fn in parts.items():
        t = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - one part failing must not lose the others' figures
            out["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        print(f"== bench-gpu {name}: {time.perf_counter() - t:.0f} s", flush=True)
        write_json(out_json, out)  # after every part: a run cut short still leaves its figures
    out["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out_json, out)
    print(json.dumps({k: v for k, v in out.items() if k != "model"}, indent=1, default=str)[:4000])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnmel.bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("reports/bench/gpu.json"))
    p.add_argument("--tiny", action="store_true", help="CPU smoke run at tiny sizes")
    a = p.parse_args(argv)
    out = run(a.out, tiny=a.tiny)
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
