"""End-to-end training benchmark: a real ``attnmel train`` (the ``isic2017`` recipe) on a generated ISIC-sized set.

Writes an ISIC 2017 tree (``ISIC-2017_<Split>_Data`` JPEGs of 1024x768 to 4000x3000, Part 1 masks, Part 3
CSVs; ``.cache/attnmel/bench/isic-<mode>``, reused), then runs :func:`attnmel.train.run.train` on
``experiments/isic2017.yaml`` (``pretrained: none``: no weights can be downloaded here; one epoch, one pass)
with a callback that times every training step:

- ``train_images_per_s``: images / time of the training loop (first step excluded: worker start-up);
- ``data_wait_share``: the share of each step spent between the previous step's end and this step's start,
  i.e. waiting for the loader (target on a GPU: < 10 %);
- ``fit_images_per_s``: images / wall time of ``trainer.fit`` (validation and checkpoints included);
- ``setup_s``: from the call to the first step (reading the split, building the preprocessing cache).

Beside it, the bare model step (:func:`attnmel.bench.model.measure`: the same model, size, batch, precision
and memory format on a tensor already in memory), so that the framework's and the loader's overhead show.

Modes: ``cpu`` (``make bench``: 48 training images, batch 8, 224 px); ``gpu`` (``make bench-gpu``: the
ISIC 2017 sizes, 2000 / 150 / 600, batch 32, bf16-mixed, then ``attnmel report`` on the 600 test images);
``tiny`` (a smoke test of the same code: a few small images, 64 px, width 0.125, CPU).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from attnmel.io import write_json
from attnmel.train.rundir import RunDir

SPLITS = {"train": "Training", "val": "Validation", "test": "Test_v2"}
# (width, height, share of images): ISIC 2017 is mostly ~1024x768 with a tail of large dermatoscope images.
SIZES = ((1024, 768, 0.6), (2048, 1536, 0.25), (4000, 3000, 0.15))
MODES: dict[str, dict[str, Any]] = {
    "cpu": {"counts": {"train": 48, "val": 8, "test": 8}, "sizes": SIZES[:1], "image_size": 224, "width": 1.0,
            "batch": 8, "workers": 2, "accelerator": "cpu"},
    "gpu": {"counts": {"train": 2000, "val": 150, "test": 600}, "sizes": SIZES, "image_size": 224, "width": 1.0,
            "batch": 32, "workers": 8, "accelerator": "gpu", "precision": "bf16-mixed"},
    "tiny": {"counts": {"train": 12, "val": 4, "test": 4}, "sizes": ((320, 240, 1.0),), "image_size": 64,
             "width": 0.125, "batch": 4, "workers": 0, "accelerator": "cpu", "resize": 72},
}
MELANOMA_SHARE = 374 / 2000
TREE_VERSION = 1


# -- the generated ISIC tree -------------------------------------------------------------------------
def _sizes_for(n: int, sizes: tuple[tuple[int, int, float], ...]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i, (w, h, share) in enumerate(sizes):
        k = n - len(out) if i == len(sizes) - 1 else int(round(n * share))
        out += [(w, h)] * k
    rng = np.random.default_rng(0)
    return [out[i] for i in rng.permutation(len(out))]


def _write_one(args: tuple[Path, Path, str, int, int, int]) -> None:
    from attnmel.bench.data import _fake_dermoscopy

    data_dir, mask_dir, image_id, w, h, seed = args
    img = _fake_dermoscopy(w, h, seed)
    yy, xx = np.ogrid[:h, :w]
    rng = np.random.default_rng(seed)
    cx, cy, rx, ry = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6), w * 0.22, h * 0.25
    mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8) * 255
    for arr, path, fmt in ((img, data_dir / f"{image_id}.jpg", "JPEG"),
                           (mask, mask_dir / f"{image_id}_segmentation.png", "PNG")):
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(arr).save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        os.replace(tmp, path)


def make_isic_tree(root: Path, counts: dict[str, int], sizes: tuple[tuple[int, int, float], ...],
                   workers: int | None = None) -> Path:
    """An ISIC 2017 tree of fake dermoscopy JPEGs (mixed sizes), lesion masks and labels; reused when complete."""
    root = Path(root)
    marker = root / "attnmel_bench_tree.json"
    want = {"v": TREE_VERSION, "counts": counts, "sizes": [list(s) for s in sizes]}
    try:
        if json.loads(marker.read_text()) == want:
            return root
    except (OSError, ValueError):
        pass
    jobs: list[tuple[Path, Path, str, int, int, int]] = []
    next_id = 0
    for split, n in counts.items():
        tag = SPLITS[split]
        data_dir, mask_dir = root / f"ISIC-2017_{tag}_Data", root / f"ISIC-2017_{tag}_Part1_GroundTruth"
        data_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        rows = ["image_id,melanoma,seborrheic_keratosis"]
        n_mel = max(1, int(round(n * MELANOMA_SHARE)))
        for k, (w, h) in enumerate(_sizes_for(n, sizes)):
            image_id = f"ISIC_{next_id:07d}"
            rows.append(f"{image_id},{1.0 if k % max(1, n // n_mel) == 0 else 0.0},0.0")
            jobs.append((data_dir, mask_dir, image_id, w, h, next_id))
            next_id += 1
        (root / f"ISIC-2017_{tag}_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    with ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1)) as ex:
        list(ex.map(_write_one, jobs))
    marker.write_text(json.dumps(want))
    return root


# -- timing the training loop ---------------------------------------------------------------------------
def _step_timer():
    """A Lightning callback: per training step, the wait for its batch and the step itself (CUDA synced)."""
    import pytorch_lightning as pl
    import torch

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.waits: list[float] = []
            self.steps: list[float] = []
            self.images = self.all_images = 0
            self.t_fit_start = self.t_fit_end = self.t_first = None
            self._last_end: float | None = None
            self._start = 0.0

        def on_fit_start(self, trainer, module) -> None:
            self.t_fit_start = time.perf_counter()

        def on_fit_end(self, trainer, module) -> None:
            self.t_fit_end = time.perf_counter()

        def on_train_epoch_start(self, trainer, module) -> None:
            self._last_end = None  # the gap after validation is not a data wait

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            now = time.perf_counter()
            if self.t_first is None:
                self.t_first = now
            elif self._last_end is not None:
                self.waits.append(now - self._last_end)
            self._start = now

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if torch.cuda.is_available() and module.device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            n = int(batch["image"].shape[0])
            self.all_images += n
            if self.all_images > n:  # the first step (worker start-up, allocator warm-up) is not timed
                self.steps.append(now - self._start)
                self.images += n
            self._last_end = now

    return StepTimer()


def train_config(root: Path, mode: dict[str, Any], out: Path, cache_dir: Path) -> dict[str, Any]:
    """``experiments/isic2017.yaml`` on the generated tree, sized for the bench mode."""
    from attnmel import config as config_mod

    over = [f"data.root={root}", "model.pretrained=none", "trainer.max_epochs=1", "data.epoch_repeats=1",
            f"data.batch_size={mode['batch']}", f"data.eval_batch_size={mode['batch']}",
            f"data.num_workers={mode['workers']}", f"data.image_size={mode['image_size']}",
            f"data.resize={mode.get('resize', 256)}", f"model.width={mode['width']}",
            f"trainer.accelerator={mode['accelerator']}", "trainer.progress_bar=false",
            f"data.cache_dir={cache_dir}", f"out_dir={out.parent}", f"name={out.name}", "trainer.log_every_n_steps=1"]
    if mode.get("precision"):
        over.append(f"trainer.precision={mode['precision']}")
    recipe = Path(__file__).resolve().parents[2] / "experiments" / "isic2017.yaml"
    return config_mod.load_config(recipe if recipe.is_file() else None, over)


def bare_step(cfg: dict[str, Any], device: str) -> dict[str, Any]:
    """The model step alone, at the run's size, batch, precision and memory format."""
    from attnmel.bench.model import measure
    from attnmel.train.inference import resolve_precision

    precision = "bf16" if resolve_precision(cfg).startswith("bf16") else "fp32"
    size, batch = int(cfg["data"]["image_size"]), int(cfg["data"]["batch_size"])
    warm, iters = (3, 10) if device == "cuda" else (1, 2 if size >= 160 else 5)
    r = measure("attnmel", precision, bool(cfg["trainer"].get("channels_last", True)), "train", size, batch,
                device=device, warmup=warm, iters=iters, width=float(cfg["model"]["width"]))
    return {k: r[k] for k in ("precision", "channels_last", "size", "batch", "images_per_s") if k in r}


def run(out_json: Path = Path("reports/bench/train.json"), mode_name: str | None = None,
        report_images: bool | None = None) -> dict[str, Any]:
    """Generate (or reuse) the tree, train one epoch with the step timer, time the bare step; JSON out."""
    import tempfile

    import torch

    from attnmel.train.inference import resolve_precision
    from attnmel.train.run import train

    mode_name = mode_name or os.environ.get("ATTNMEL_BENCH_TRAIN_MODE", "cpu")
    mode = MODES[mode_name]
    device = "cuda" if mode["accelerator"] == "gpu" else "cpu"
    cache = Path(".cache/attnmel")
    t0 = time.perf_counter()
    root = make_isic_tree(cache / "bench" / f"isic-{mode_name}", mode["counts"], mode["sizes"])
    t_generate = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="attnmel-bench-train-") as tmp:
        # A fresh preprocessing cache each time: its build is part of what the first epoch costs.
        run_dir = Path(tmp) / "runs" / f"isic2017-{mode_name}"
        cfg = train_config(root, mode, run_dir, Path(tmp) / "cache")
        timer = _step_timer()
        t_call = time.perf_counter()
        train(cfg, callbacks=[timer])
        t_total = time.perf_counter() - t_call
        metrics = RunDir(run_dir).metrics()
        report = _report(run_dir) if (report_images if report_images is not None else mode_name == "gpu") else None
    steps, waits = np.array(timer.steps), np.array(timer.waits)
    loop = float(steps.sum() + waits.sum())
    out = {
        "what": f"attnmel train, experiments/isic2017.yaml (pretrained none, 1 epoch, 1 pass) on a generated ISIC "
                f"2017 tree, mode {mode_name}",
        "mode": mode_name, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "precision": resolve_precision(cfg), "images": dict(mode["counts"]),
        "image_sizes": [f"{w}x{h}" for w, h, _ in mode["sizes"]], "batch": mode["batch"],
        "num_workers": mode["workers"], "image_size": mode["image_size"], "width": mode["width"],
        "steps_timed": int(len(steps)),
        "train_images_per_s": timer.images / loop if loop > 0 else None,
        "data_wait_share": float(waits.sum() / loop) if loop > 0 else None,
        "data_wait_target": 0.10,
        "fit_images_per_s": timer.all_images / (timer.t_fit_end - timer.t_fit_start)
        if timer.t_fit_end and timer.t_fit_start else None,
        "setup_s": round(timer.t_first - t_call, 2) if timer.t_first else None,
        "command_s": round(t_total, 2), "generate_s": round(t_generate, 1),
        "bare_model_step": bare_step(cfg, device),
        "test_auc": metrics.get("classification", {}).get("auc"),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    bare = out["bare_model_step"]["images_per_s"]
    out["train_over_bare"] = out["train_images_per_s"] / bare if out["train_images_per_s"] and bare else None
    if report is not None:
        out["report"] = report
    write_json(out_json, out)
    print(f"train ({mode_name}): {out['train_images_per_s']:.1f} img/s in the loop (bare model step "
          f"{bare:.1f}), data wait {100 * (out['data_wait_share'] or 0):.1f} % of step time, "
          f"fit {out['fit_images_per_s'] or 0:.1f} img/s, setup {out['setup_s']} s", flush=True)
    return out


def _report(run_dir: Path) -> dict[str, Any]:
    """``attnmel report`` on the run's test split (600 images in gpu mode): seconds and the report's shares."""
    from attnmel.report.build import build_report

    t0 = time.perf_counter()
    build_report(run_dir, split="test", reports_root=None)
    wall = time.perf_counter() - t0
    rep = RunDir(run_dir).metrics()["report"]
    return {"n_images": rep.get("n_images"), "wall_s": round(wall, 1), "timings_s": rep.get("timings_s")}

