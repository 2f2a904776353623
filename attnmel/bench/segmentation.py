"""Segmentation benchmark: inference images per second at 224 px on this machine (U-Net, FCRN, Mask R-CNN),
fp32 and bf16 autocast; on a CUDA machine also training images per second.

Results go to ``reports/bench/segmentation.json`` (atomically). ``python -m attnmel.bench.segmentation``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

from attnmel.io import write_json
from attnmel.models.segmentation import build_segmenter

MODELS = {"unet": {"width": 1.0}, "fcrn": {"width": 1.0}, "maskrcnn": {"width": 1.0}}


def _autocast(precision: str, device: str):
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def infer_rate(name: str, size: int = 224, batch: int = 4, iters: int = 3, precision: str = "fp32",
               device: str = "cpu") -> float:
    """Images per second of ``forward`` (eval mode, no gradients) after one warm-up batch."""
    model = build_segmenter(name, {"name": name, "pretrained": "none", **MODELS[name]}).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    with _autocast(precision, device):
        model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def train_rate(name: str, size: int = 224, batch: int = 8, iters: int = 5, device: str = "cuda") -> float:
    """Training images per second (forward, Dice+BCE or Mask R-CNN loss, backward, SGD step)."""
    from attnmel.losses.segmentation import build_segmentation_loss

    model = build_segmenter(name, {"name": name, "pretrained": "none", **MODELS[name]}).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = build_segmentation_loss({"name": "dice_bce"})
    x = torch.randn(batch, 3, size, size, device=device)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2).float()
    mask = disc.expand(batch, 1, size, size).to(device)

    def step() -> None:
        if hasattr(model, "training_step_loss"):
            loss = model.training_step_loss(x, mask)
        else:
            loss = loss_fn(model(x), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def run(out_json: Path = Path("reports/bench/segmentation.json"), size: int = 224) -> dict[str, Any]:
    torch.manual_seed(0)
    result: dict[str, Any] = {"size": size, "threads": torch.get_num_threads(), "cpu_inference_images_per_s": {}}
    for name in MODELS:
        for precision in ("fp32", "bf16"):
            rate = infer_rate(name, size=size, precision=precision)
            result["cpu_inference_images_per_s"][f"{name}/{precision}"] = round(rate, 3)
            print(f"  {name:9s} {precision}: {rate:7.2f} images/s (inference, {size} px, CPU)", flush=True)
    if torch.cuda.is_available():
        result["gpu"] = {"device": torch.cuda.get_device_name(0), "train_images_per_s": {},
                         "inference_images_per_s": {}}
        for name in MODELS:
            result["gpu"]["train_images_per_s"][name] = round(train_rate(name, size=size, device="cuda"), 2)
            result["gpu"]["inference_images_per_s"][name] = round(
                infer_rate(name, size=size, batch=32, iters=10, device="cuda"), 2)
    else:
        result["gpu"] = None
        result["gpu_note"] = "no CUDA device on this machine: GPU training figures need one"
    write_json(out_json, result)
    return result


if __name__ == "__main__":
    run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports/bench/segmentation.json"))
