"""Export benchmark: the ONNX model in onnxruntime (CPU) next to PyTorch, inference images per second.

AttnMel-CNN (untrained, the paper's width) is exported as ``attnmel export`` does it (the same graph:
probabilities + attention maps; :mod:`attnmel.train.export`) and timed at 224 px, batch 8, against PyTorch
on the same input: fp32 eager, and ``precision: auto``'s setting (bf16 autocast + channels-last where the
CPU has bf16). Also the max abs difference of the ORT outputs from PyTorch fp32. Writes
``reports/bench/export.json``. ``ATTNMEL_BENCH_TINY=1``: 64 px, width 0.125, batch 2 (a smoke test).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from attnmel.io import write_json


def _rate(fn: Callable[[], Any], batch: int, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return batch * iters / (time.perf_counter() - t0)


def run(out_json: Path = Path("reports/bench/export.json"), size: int | None = None, batch: int | None = None,
        width: float | None = None) -> dict[str, Any]:
    """Export, then time onnxruntime and PyTorch inference on one batch; JSON out."""
    import onnxruntime as ort

    from attnmel.models.vgg import AttnMelCNN
    from attnmel.train.export import _ClassifierGraph, _export_onnx
    from attnmel.train.inference import resolve_precision
    from attnmel.train.rundir import ONNX_FILE

    tiny = os.environ.get("ATTNMEL_BENCH_TINY") == "1"
    size = size or (64 if tiny else 224)
    batch = batch or (2 if tiny else 8)
    width = width or (0.125 if tiny else 1.0)
    warmup, iters = (1, 2) if tiny else (2, 5)
    torch.manual_seed(0)
    graph = _ClassifierGraph(AttnMelCNN(2, width=width).eval(), cam=False).eval()
    names = ["probabilities", "attention_pool3", "attention_pool4"]
    x = torch.randn(batch, 3, size, size)
    with tempfile.TemporaryDirectory(prefix="attnmel-bench-export-") as tmp:
        path = Path(tmp) / ONNX_FILE
        t0 = time.perf_counter()
        _export_onnx(graph, x, path, names)
        export_s = time.perf_counter() - t0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {"image": x.numpy()}
        ort_rate = _rate(lambda: session.run(None, feed), batch, warmup, iters)
        got = session.run(None, feed)
    with torch.inference_mode():
        ref = graph(x)
        fp32_rate = _rate(lambda: graph(x), batch, warmup, iters)
        auto = resolve_precision({"trainer": {"precision": "auto", "accelerator": "cpu"}})
        cl_graph = graph.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def default_step() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=auto.startswith("bf16")):
                return cl_graph(x_cl)

        default_rate = _rate(default_step, batch, warmup, iters)
    diffs = {n: float(np.abs(g - r.numpy()).max()) for n, g, r in zip(names, got, ref)}
    out = {
        "what": f"AttnMel-CNN (width {width}, untrained) inference at {size} px, batch {batch}, CPU",
        "onnxruntime": {"images_per_s": ort_rate, "version": ort.__version__,
                        "threads": opts.intra_op_num_threads},
        "pytorch_fp32": {"images_per_s": fp32_rate},
        "pytorch_default": {"images_per_s": default_rate, "precision": auto, "channels_last": True},
        "onnxruntime_over_pytorch_fp32": ort_rate / fp32_rate,
        "onnxruntime_over_pytorch_default": ort_rate / default_rate,
        "max_abs_diff_vs_pytorch_fp32": diffs, "export_s": round(export_s, 1),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    write_json(out_json, out)
    print(f"export: onnxruntime {ort_rate:.1f} img/s, PyTorch fp32 {fp32_rate:.1f}, PyTorch {auto} channels-last "
          f"{default_rate:.1f} (max abs diff {max(diffs.values()):.1e})", flush=True)
    return out
