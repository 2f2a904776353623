"""The data path on the real ISIC 2017 set at the CPU recipe's step rate (part of ``make bench``'s data part).

With the 256-px set at hand (``ATTNMEL_ISIC2017_256``, else ``../shared/data/isic2017-256`` from the working
directory; skipped without it) and the recipe ``experiments/isic2017_cpu.yaml``:

* ``stages``: seconds per image of each per-item stage of the training pipeline, in one thread (what a
  DataLoader worker has): the cache read (memory-mapped arrays), the joint geometry (random-resized crop,
  rot90, flips, rotation), the colour jitter, and to-float + normalise;
* ``loop``: ``steps`` real training steps of the recipe (forward, loss, backward, optimiser, in the recipe's
  precision) fed by the recipe's DataLoader: the share of each step spent waiting for the next batch.
  Target: under 10 %.

The recipe's config decides everything (image size, augmentation, workers, batch size), so the figures follow
the recipe when it changes.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

RECIPE = Path(__file__).resolve().parents[2] / "experiments" / "isic2017_cpu.yaml"
WAIT_TARGET = 0.10


def real_root() -> Path | None:
    """The 256-px ISIC 2017 tree, or None when this machine has none."""
    env = os.environ.get("ATTNMEL_ISIC2017_256")
    root = Path(env) if env else Path("../shared/data/isic2017-256")
    return root if (root / "ISIC-2017_Training_Data").is_dir() else None


def _recipe(root: Path, cache_dir: Path, overrides: Sequence[str] = ()) -> dict:
    from attnmel.config import load_config

    return load_config(RECIPE, [f"data.root={root}", f"data.cache_dir={cache_dir}", "trainer.progress_bar=false",
                                *overrides])


def stage_times(ds: Any, n: int) -> dict[str, float]:
    """CPU milliseconds per item of each stage of ``ds``'s training pipeline over its first ``n`` items.

    CPU time of this thread (``time.thread_time``), not wall time: on a shared machine the wall clock also
    counts the time other processes held the core, and the figures would then say more about the load."""
    from attnmel.data.transforms import _finish, _to_tv

    t = ds.transform
    acc = {"cache_read": 0.0, "geometry": 0.0, "colour_jitter": 0.0, "to_float_normalise": 0.0}
    gen = torch.Generator().manual_seed(0)
    clock = time.thread_time
    for j in range(n):
        t0 = clock()
        img, mask, _ = ds.source.get(int(ds.rows[j]))
        t1 = clock()
        timg, ms = _to_tv(img, {"mask": mask} if ds.with_mask else {})
        p = t.params(timg.shape[-2], timg.shape[-1], gen)
        timg = t.apply(timg, p, t.size)
        ms = {k: t.apply(m, p, t.size) for k, m in ms.items()}
        t2 = clock()
        timg = t.jitter(timg, p)
        t3 = clock()
        _finish(timg, ms, t.mean, t.std)
        t4 = clock()
        for k, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            acc[k] += dt
    return {k: round(1000 * v / n, 3) for k, v in acc.items()}


def loop_wait(cfg: dict, dm: Any, steps: int) -> dict[str, Any]:
    """``steps`` training steps of the recipe fed by its DataLoader: seconds waiting for batches vs in total."""
    from attnmel.train.module import ClassificationModule
    from attnmel.train.run import resolve_precision

    module = ClassificationModule(cfg, dm.class_names, dm.melanoma_index)
    opt = torch.optim.SGD(module.parameters(), lr=float(cfg["optim"]["lr"]), momentum=0.9)
    bf16 = resolve_precision(cfg).startswith("bf16")
    module.train()
    it = iter(dm.train_dataloader())
    next(it)  # workers started, first batch (not timed)
    wait = total = model_cpu = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        c1 = time.process_time()  # this process's threads: the model step (the loader works in its own process)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cls_loss, reg, _ = module._step(batch)
        (cls_loss + reg).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model_cpu += time.process_time() - c1
        wait += t1 - t0
        total += time.perf_counter() - t0
    return {"steps": steps, "batch_size": int(cfg["data"]["batch_size"]),
            "num_workers": int(cfg["data"]["num_workers"]), "precision": "bf16-mixed" if bf16 else "32-true",
            "step_s": round(total / steps, 4), "model_cpu_s_per_step": round(model_cpu / steps, 4),
            "threads": torch.get_num_threads(),
            "wait_s": round(wait / steps, 4), "wait_share": round(wait / total, 4),
            "images_per_second": round(steps * int(cfg["data"]["batch_size"]) / total, 1)}


def run_real(steps: int = 30, items: int = 256, root: Path | None = None,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The real-set section of ``data.json`` (``{"skipped": why}`` without the set); ``root`` / ``overrides``
    (``key=value`` on the recipe): another tree or smaller settings (the tests)."""
    root = root or real_root()
    if root is None:
        return {"skipped": "no ISIC 2017 256-px set (ATTNMEL_ISIC2017_256 or ../shared/data/isic2017-256)"}
    from attnmel.data.datamodule import AttnMelDataModule

    with tempfile.TemporaryDirectory(prefix="attnmel-bench-real-") as tmp:
        cfg = _recipe(root, Path(tmp), overrides)
        dm = AttnMelDataModule(cfg, progress=False)
        t0 = time.perf_counter()
        ds = dm.dataset("train")
        build_s = time.perf_counter() - t0
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what a DataLoader worker gets
        try:
            stages = stage_times(ds, min(items, len(ds)))
        finally:
            torch.set_num_threads(threads)
        loop = loop_wait(cfg, dm, steps)
    slowest = max(stages, key=stages.get)
    idle = idle_projection(stages, loop)
    return {"root": str(root), "recipe": RECIPE.name, "train_items_per_epoch": len(ds),
            "image_size": int(cfg["data"]["image_size"]), "cache_build_s": round(build_s, 2),
            "stages_ms_per_image": stages, "slowest_stage": slowest, "loop": loop, "idle_projection": idle,
            "wait_target": WAIT_TARGET,
            "pass": loop["wait_share"] < WAIT_TARGET and idle["wait_share"] < WAIT_TARGET,
            "load_average": os.getloadavg()}


def idle_projection(stages: dict[str, float], loop: dict[str, Any]) -> dict[str, float]:
    """The data wait on an idle machine, from CPU times (load-independent): a worker needs the stages' CPU
    time per batch, the model step takes its CPU time spread over its threads; the loader keeps up when
    ``num_workers`` workers make a batch in less than a step. ``wait_share``: max(0, data - step) / step."""
    per_batch = sum(stages.values()) / 1000 * loop["batch_size"] / max(1, loop["num_workers"])
    step = loop["model_cpu_s_per_step"] / max(1, loop["threads"])
    wait = max(0.0, per_batch - step)
    return {"data_s_per_batch_per_worker": round(per_batch, 4), "step_s": round(step, 4),
            "wait_share": round(wait / (step + wait), 4) if step + wait > 0 else 0.0}


def print_real(r: dict[str, Any]) -> None:
    if "skipped" in r:
        print(f"real set: skipped ({r['skipped']})")
        return
    st = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_ms_per_image"].items())
    lp = r["loop"]
    print(f"real set ({r['recipe']}, {r['image_size']} px): per image ms: {st}; slowest: {r['slowest_stage']}")
    print(f"  {lp['steps']} steps x {lp['batch_size']} ({lp['precision']}, {lp['num_workers']} workers): "
          f"{lp['step_s']:.3f} s/step, waiting {100 * lp['wait_share']:.1f} % (target < "
          f"{100 * r['wait_target']:.0f} %); load {r['load_average'][0]:.1f}")
    idle = r["idle_projection"]
    print(f"  idle machine (CPU times): a batch takes a worker {idle['data_s_per_batch_per_worker']:.3f} s, a step "
          f"{idle['step_s']:.3f} s: waiting {100 * idle['wait_share']:.1f} %; pass: {'yes' if r['pass'] else 'NO'}")
