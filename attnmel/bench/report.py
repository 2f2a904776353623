"""Bench: time ``build_report`` for a run over 600 synthetic test images at 224 px (train-free).

The run is an untrained AttnMel-CNN (``pretrained: none``, the paper's full width) whose checkpoint is saved
the way training saves it (``ClassificationModule.on_save_checkpoint``), over a generated synthetic set
whose test split has 600 images. The report's own timings (``metrics.json`` -> ``report.timings_s``) give
the share spent in inference, attributions and drawing. Target: under 10 minutes on 2 CPU cores.

``ATTNMEL_BENCH_REPORT_LIMIT=<n>`` times the report over the first n test images only and extrapolates the
per-image parts linearly to 600 (the JSON says so). ``ATTNMEL_BENCH_REPORT_IG=<n>`` also times a report with
Integrated Gradients over n images and projects it to 600 (``integrated_gradients_estimate``).

:func:`ig_speed` (``integrated_gradients_speed`` in the JSON) times Integrated Gradients per image at 224 px as
the report ran it before (fp32, contiguous, BatchNorm unfolded, 32 interpolated images per pass) against today's
settings (:func:`attnmel.explain.attributions.integrated_gradients_maps` defaults), alternating the two per image
so that both see the same machine load, and gives the Spearman rank correlation of bf16 maps with fp32 ones.
``fp32_ceiling`` (:func:`ig_ceiling`) sets "now" against the fastest any fp32 implementation could run here:
IG's counted floating-point operations over this CPU's measured matmul rate.
``ATTNMEL_BENCH_IG_IMAGES=<n>`` (default 2) sets the images timed; 0 skips it.
``ATTNMEL_BENCH_IG_CONVERGENCE_RUN=<run dir>`` adds ``integrated_gradients_convergence`` (:func:`ig_convergence`:
8, 16 and 32 steps in fp32 and in bf16 against 128 fp32 steps: speed and completeness error per setting, printed
as a table, and the fastest setting within the 5 % bound) on that trained run's first
``ATTNMEL_BENCH_IG_CONVERGENCE_IMAGES`` (32) test images.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from attnmel.errors import AttnMelError
from attnmel.io import atomic_path, write_json, write_text
from attnmel.train.rundir import RunDir

N_TEST = 600
IMAGE_SIZE = 224
TARGET_S = 600.0
# synthetic.plan gives the test split n - round(0.6 n) - round(0.2 n) images: 3000 -> 600.
N_TOTAL = 3000
PER_IMAGE_PARTS = ("data", "inference", "attributions", "scoring")


def make_untrained_run(run_dir: Path, data_root: Path, *, image_size: int = IMAGE_SIZE, model: str = "attnmel",
                       width: float = 1.0, cache_dir: Path | None = None, overrides: Sequence[str] = ()) -> Path:
    """A run folder (its config and best checkpoint, as training writes them) with untrained weights."""
    from attnmel import config as config_mod
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.train.module import ClassificationModule

    run_dir = Path(run_dir)
    cfg = config_mod.load_config(None, [
        f"out_dir={run_dir.parent}", f"name={run_dir.name}", "data.dataset=synthetic", f"data.root={data_root}",
        "data.center_crop=1.0", f"data.resize={image_size}", f"data.image_size={image_size}", "data.num_workers=0",
        f"data.cache_dir={cache_dir or Path('.cache/attnmel')}", f"model.name={model}", "model.pretrained=none",
        f"model.width={width}", *overrides])
    dm = AttnMelDataModule(cfg, progress=False)
    dm.prepare_data()  # a configured synthetic set is made here, as training makes it (a run's readers never do)
    torch.manual_seed(int(cfg["seed"]))
    module = ClassificationModule(cfg, dm.class_names, dm.melanoma_index)
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(ckpt)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunDir(run_dir)
    write_text(folder.config_file, config_mod.dump(cfg))
    with atomic_path(folder.best) as tmp:
        torch.save(ckpt, tmp)
    return run_dir


def _dataset(root: Path) -> Path:
    """The bench's synthetic set (3000 images at 224 px, 600 in test), generated once and reused."""
    from attnmel.data.synthetic import MARKER, generate

    marker = root / MARKER
    want = {"n": N_TOTAL, "size": IMAGE_SIZE, "seed": 0, "spurious": False}
    if marker.is_file():
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            if meta.get("complete") and all(meta.get(k) == v for k, v in want.items()):
                return root
        except (OSError, json.JSONDecodeError):
            pass
    return generate(root, n=N_TOTAL, size=IMAGE_SIZE, seed=0, spurious=False, progress=False)


def _cpu_s() -> float:
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
LEGACY_IG = {"precision": "fp32", "channels_last": False, "fold_bn": False, "internal_batch_size": 32}


def ig_speed(n_images: int = 2, size: int = IMAGE_SIZE, width: float = 1.0, n_steps: int = 32,
             corr_steps: int = 8, seed: int = 0) -> dict:
    """Seconds per image of Integrated Gradients, the report's former settings vs the current defaults, and the
    rank agreement of bf16 with fp32 maps, on an untrained AttnMel-CNN (``width``) and random ``size``-px images."""
    import numpy as np
    from scipy.stats import spearmanr

    from attnmel.explain.attributions import ig_autocast, integrated_gradients_maps
    from attnmel.models import build_model

    torch.manual_seed(seed)
    model = build_model({"name": "attnmel", "pretrained": "none", "width": width}, 2).eval()
    x = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(seed))
    t = torch.ones(n_images, dtype=torch.long)
    times: dict[str, list[float]] = {"before": [], "now": []}
    maps: dict[str, list[torch.Tensor]] = {"before": [], "now": []}
    for kw in (LEGACY_IG, {}):  # warm-up: oneDNN picks and caches its kernels on the first call of each
        integrated_gradients_maps(model, x[:1], t[:1], n_steps=1, **kw)
    for i in range(n_images):  # alternated, so that a change of machine load hits both alike
        for name, kw in (("before", LEGACY_IG), ("now", {})):
            t0 = time.perf_counter()
            maps[name].append(integrated_gradients_maps(model, x[i:i + 1], t[i:i + 1], n_steps=n_steps, **kw))
            times[name].append(time.perf_counter() - t0)
    fp32 = integrated_gradients_maps(model, x[:1], t[:1], n_steps=corr_steps, precision="fp32")
    t0 = time.perf_counter()
    bf16 = integrated_gradients_maps(model, x[:1], t[:1], n_steps=corr_steps, precision="bf16")
    bf16_s = time.perf_counter() - t0
    before, now = float(np.mean(times["before"])), float(np.mean(times["now"]))
    same = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(maps["before"], maps["now"]))
    return {
        "what": f"Integrated Gradients ({n_steps} steps) per image at {size} px, untrained AttnMel-CNN width "
                f"{width}, random input; before = {LEGACY_IG}, now = the defaults (BatchNorm folded, channels-last, "
                f"16 per pass, bf16 autocast where the CPU has bf16)",
        "n_images": n_images, "before_s_per_image": round(before, 2), "now_s_per_image": round(now, 2),
        "speedup": round(before / now, 2) if now else None,
        "now_uses_bf16": ig_autocast("auto", torch.device("cpu")),
        "max_relative_difference_now_vs_before": same,
        "bf16_vs_fp32": {"n_steps": corr_steps,
                         "spearman": float(spearmanr(fp32.flatten().numpy(), bf16.flatten().numpy()).statistic),
                         "bf16_s": round(bf16_s, 2),
                         "note": "bf16 autocast on this CPU" + ("" if ig_autocast("auto", torch.device("cpu"))
                                                                 else " is emulated (no bf16 units): slower, same "
                                                                      "rounding")},
        "per_image_s": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
        "fp32_ceiling": ig_ceiling(now, n_steps, size, width),
    }


def matmul_gflops(n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The machine's dense matrix-multiply rate (GFLOP/s, all of torch's threads): the ceiling that convolution
    kernels approach."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def ig_ceiling(now_s_per_image: float, n_steps: int = 32, size: int = IMAGE_SIZE, width: float = 1.0) -> dict:
    """How close Integrated Gradients runs to this CPU's fp32 arithmetic rate: floating-point operations of one
    interpolated image (forward + input gradient on the prepared model, counted by torch's ``FlopCounterMode``)
    x ``n_steps``, against :func:`matmul_gflops`. The floor is the fastest any fp32 implementation of the same
    ``n_steps``-point integral could run here."""
    from torch.utils.flop_counter import FlopCounterMode

    from attnmel.explain.attributions import prepared_model
    from attnmel.models import build_model

    torch.manual_seed(0)
    net = prepared_model(build_model({"name": "attnmel", "pretrained": "none", "width": width}, 2).eval())
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        net(x).logits[:, 1].sum().backward()
    gflop = counter.get_total_flops() / 1e9 * n_steps
    rate = matmul_gflops()
    floor = gflop / rate
    return {"what": f"fp32 arithmetic of IG ({n_steps} steps, {size} px, width {width}) against this CPU's "
                    "2048x2048 fp32 matmul rate",
            "gflop_per_image": round(gflop, 3), "matmul_gflops": round(rate, 1),
            "floor_s_per_image": round(floor, 3), "now_s_per_image": round(now_s_per_image, 2),
            "share_of_ceiling": round(floor / now_s_per_image, 3) if now_s_per_image else None}


COMPLETENESS_BOUND = 0.05  # the IG paper's: the attributions' sum within 5 % of f(x) - f(baseline)


def ig_convergence(model: torch.nn.Module, images: torch.Tensor, steps: Sequence[int] = (8, 16, 32),
                   reference_steps: int = 128, precisions: Sequence[str] = ("fp32",)) -> dict:
    """How accurate and how fast Integrated Gradients is per setting (precision x Gauss-Legendre points), against
    an fp32 ``reference_steps`` one: Spearman rank correlation and Jaccard of the maps binarised the report's way
    (re-normalised to [0, 1], at 0.5), the completeness error |sum of attributions - (f(x) - f(0))| / |f(x) - f(0)|
    (captum's convergence delta over the fp32 model's gap) that the IG paper asks to keep within 5 %, and seconds
    per image. ``by_steps``: the fp32 rows by step count; ``by_setting``: every ``<precision>/<steps>``;
    ``fastest_within_bound``: the fastest setting whose median completeness error is within 5 %. Maps explain each
    image's predicted class."""
    import numpy as np
    from scipy.stats import spearmanr

    from attnmel.explain.attributions import integrated_gradients_maps, prepared_model
    from attnmel.explain.maps import binarise, postprocess_map, score_map

    with torch.no_grad():
        net = prepared_model(model)
        logits = net(images).logits
        targets = logits.argmax(dim=1)
        rows = torch.arange(len(images))
        gap = (logits[rows, targets] - net(torch.zeros_like(images)).logits[rows, targets]).abs().clamp_min(1e-6)

    def maps(n: int, precision: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        integrated_gradients_maps(model, images[:1], targets[:1], n_steps=1, precision=precision)  # warm-up
        t0 = time.perf_counter()
        m, delta = integrated_gradients_maps(model, images, targets, n_steps=n, precision=precision,
                                             return_delta=True)
        return m, delta.abs() / gap, time.perf_counter() - t0

    ref, _, _ = maps(reference_steps, "fp32")
    by_setting = {}
    for precision in precisions:
        for n in steps:
            m, err, secs = maps(n, precision)
            rho = [spearmanr(m[i].flatten(), ref[i].flatten()).statistic for i in range(len(images))]
            # The report's scoring of a map, with the reference's binarised map as the "lesion".
            jac = [score_map(m[i], binarise(postprocess_map(ref[i], tuple(ref[i].shape))))["jaccard"]
                   for i in range(len(images))]
            by_setting[f"{precision}/{n}"] = {
                "precision": precision, "n_steps": n, "spearman": round(float(np.mean(rho)), 4),
                "jaccard_binarised": round(float(np.mean(jac)), 4),
                "completeness_error_median": round(float(err.median()), 4),
                "share_within_5_percent": round(float((err <= COMPLETENESS_BOUND).float().mean()), 3),
                "s_per_image": round(secs / len(images), 3)}
    ok = [k for k, r in by_setting.items() if r["completeness_error_median"] <= COMPLETENESS_BOUND]
    return {"reference_steps": reference_steps, "n_images": len(images),
            "by_steps": {str(r["n_steps"]): r for r in by_setting.values() if r["precision"] == "fp32"},
            "by_setting": by_setting,
            "fastest_within_bound": min(ok, key=lambda k: by_setting[k]["s_per_image"]) if ok else None}


def print_ig_settings(conv: dict) -> None:
    """``make bench``'s table: speed and completeness error of each Integrated Gradients setting."""
    print(f"Integrated Gradients per setting ({conv['n_images']} images, against fp32 with "
          f"{conv['reference_steps']} steps):")
    print(f"  {'setting':<10} {'s/image':>8} {'completeness error (median)':>28} {'within 5 %':>10} {'Spearman':>9}")
    for k, r in conv["by_setting"].items():
        print(f"  {k:<10} {r['s_per_image']:>8.3f} {r['completeness_error_median']:>28.4f} "
              f"{r['share_within_5_percent']:>10.2f} {r['spearman']:>9.3f}")
    print(f"  fastest within the 5 % bound: {conv['fastest_within_bound']}")


def _convergence_on_run(run, n_images: int) -> dict:
    """:func:`ig_convergence` on the first ``n_images`` test images of a loaded trained run (e.g. ``runs/demo``)."""
    from attnmel.data.datamodule import AttnMelDataModule

    ds = AttnMelDataModule(run.cfg, progress=False).dataset("test")
    images = torch.stack([ds[i]["image"] for i in range(min(n_images, len(ds)))])
    conv = ig_convergence(run.model.eval(), images, precisions=("fp32", "bf16"))
    print_ig_settings(conv)
    return {"run": str(run.run_dir), **conv}


def run(out_json: Path, limit: int | None = None, integrated_gradients: bool = False,
        ig_images: int | None = None) -> dict:
    """Time the report over the 600-image test split (or its first ``limit`` images, extrapolated);
    ``ig_images``: also time Integrated Gradients over that many images and project it to 600."""
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.report.build import build_report
    from attnmel.train.rundir import load_run

    # Every setting is read (and a bad one refused) before the minutes of work, not after them.
    if limit is None:
        limit = _env_int("ATTNMEL_BENCH_REPORT_LIMIT", None)
    if ig_images is None:
        ig_images = _env_int("ATTNMEL_BENCH_REPORT_IG", None)
    n_ig = _env_int("ATTNMEL_BENCH_IG_IMAGES", 2)
    conv_images = _env_int("ATTNMEL_BENCH_IG_CONVERGENCE_IMAGES", 32)
    conv_run = os.environ.get("ATTNMEL_BENCH_IG_CONVERGENCE_RUN")
    conv = load_run(conv_run) if conv_run else None
    cache = Path(".cache/attnmel")
    t0 = time.perf_counter()
    data_root = _dataset(cache / "bench" / f"synthetic-{IMAGE_SIZE}-n{N_TOTAL}")
    t_generate = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="attnmel-bench-report-") as tmp:
        run_dir = make_untrained_run(Path(tmp) / "runs" / "untrained", data_root, cache_dir=cache)
        t0 = time.perf_counter()
        dm = AttnMelDataModule(load_run(run_dir).cfg, progress=False)
        n_split = len(dm.dataset("test"))  # builds the preprocessing cache (once per dataset, like training)
        t_cache = time.perf_counter() - t0
        t0, cpu0 = time.perf_counter(), _cpu_s()
        build_report(run_dir, split="test", integrated_gradients=integrated_gradients, limit=limit,
                     reports_root=None)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        metrics = RunDir(run_dir).metrics()
        ig_timings = None
        if ig_images:
            build_report(run_dir, split="test", integrated_gradients=True, limit=ig_images, reports_root=None)
            ig_timings = RunDir(run_dir).metrics()["report"]["timings_s"]
    out = _summary(metrics["report"], n_split, wall, cpu, integrated_gradients,
                   {"generate_dataset": round(t_generate, 1), "build_cache": round(t_cache, 1)},
                   ig_timings, ig_images)
    write_json(out_json, out)  # the report's figures are kept whatever the extras below do
    if n_ig > 0:
        out["integrated_gradients_speed"] = ig_speed(n_ig)
        write_json(out_json, out)
    if conv is not None:
        out["integrated_gradients_convergence"] = _convergence_on_run(conv, conv_images)
        write_json(out_json, out)
    return out


def _env_int(name: str, default: int | None) -> int | None:
    """A non-negative integer setting from the environment; a bad value is a one-line error naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise AttnMelError(f"{name} must be a non-negative integer, got {raw!r}")
    return value


def _summary(rep: dict, n_split: int, wall: float, cpu: float, integrated_gradients: bool, setup_s: dict[str, float],
             ig_timings: dict | None, ig_images: int | None) -> dict:
    """The bench's JSON from the report's own timings, with the projection to the 600-image split."""
    timings = rep["timings_s"]
    n = int(rep["n_images"])
    total = float(timings["total"])
    shares = {k: round(float(timings.get(k, 0.0)) / total, 4) for k in
              ("inference", "attributions", "faithfulness", "randomisation", "drawing", "scoring", "data", "load")}
    per_image = sum(float(timings.get(k, 0.0)) for k in PER_IMAGE_PARTS)
    fixed = total - per_image
    projected = fixed + per_image * N_TEST / n if n else None
    out = {
        "what": f"build_report on an untrained AttnMel-CNN (width 1.0, pretrained none) over synthetic test "
                f"images at {IMAGE_SIZE} px, Integrated Gradients {'on' if integrated_gradients else 'off'}",
        "n_images": n, "n_test_split": n_split, "image_size": IMAGE_SIZE,
        "integrated_gradients": integrated_gradients,
        "total_s": round(total, 2), "wall_s": round(wall, 2), "timings_s": timings, "shares": shares,
        # CPU seconds of the report (user + system, every thread): on a busy machine, cpu_s / torch_threads
        # estimates the wall time the same work takes on idle cores.
        "cpu_s": round(cpu, 1), "cpu_s_per_thread": round(cpu / max(1, torch.get_num_threads()), 1),
        "per_image_s": round(per_image / n, 4) if n else None,
        "extrapolated": n != N_TEST,
        "total_s_600_images": round(projected, 1) if projected is not None else None,
        "target_s": TARGET_S,
        "meets_target": bool(projected is not None and projected < TARGET_S),
        "setup_s": setup_s,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }
    if out["extrapolated"]:
        out["note"] = (f"timed over the first {n} of {n_split} test images; data, inference, attributions and "
                       f"scoring scaled linearly to {N_TEST}, the rest (load, drawing, render) kept as measured")
    if ig_timings is not None and ig_images:
        ig_per_image = float(ig_timings["attributions"]) / ig_images
        out["integrated_gradients_estimate"] = {
            "n_images": ig_images, "timings_s": ig_timings,
            "attributions_per_image_s": round(ig_per_image, 3),
            "total_s_600_images": round((projected or 0.0) + ig_per_image * N_TEST, 1),
            "note": "Integrated Gradients (the default steps) timed on a few images; projected = the report without it "
                    "+ 600 x its per-image attribution time"}
    return out
