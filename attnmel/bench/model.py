"""Model benchmark: AttnMel-CNN training / inference throughput and peak memory.

CPU, at each size in ``sizes`` (224 = the paper's, 64 = the demo's), batch ``batch``:
fp32 vs bf16 autocast x contiguous vs channels-last, plus a straightforward eager fp32 reference
(torchvision's ``vgg16_bn().features`` + the attention head written out naively). The speed ratio
ours / reference comes from an in-process A/B that alternates iterations (same load for both); the
reference's own subprocess rows are kept for its memory figures.
Every CPU setting runs in its own subprocess (settings cannot warm or fragment each other's caches).
CPU memory: the kernel's peak-RSS mark (VmHWM) is reset after the warm-up, so ``peak_rss_mib`` is the
process's true peak during the timed loop and ``working_mem_mib`` that peak minus the resident size
just before it (activations, gradients, optimizer and allocator scratch; the weights are excluded).
``ru_maxrss`` is not used: on Linux a child inherits its parent's peak through fork/exec.
A numerics check compares bf16 and channels-last logits / features / maps with fp32 on the same
weights and input, and our model with the naive reference.
On a CUDA machine a GPU section adds 224 px, batch 32, fp32 vs bf16-mixed.

Results go to ``reports/bench/model.json`` (atomically). ``python -m attnmel.bench.model --help``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnmel.io import write_json

SETTINGS = [
    {"impl": "attnmel", "precision": "fp32", "channels_last": False},
    {"impl": "attnmel", "precision": "fp32", "channels_last": True},
    {"impl": "attnmel", "precision": "bf16", "channels_last": False},
    {"impl": "attnmel", "precision": "bf16", "channels_last": True},
    {"impl": "reference", "precision": "fp32", "channels_last": False},
]
MODES = ("train", "infer")
# bf16 keeps ~3 significant digits; 13 conv layers accumulate that into percent-level feature error.
BF16_REL_TOL = 0.05
FP32_REL_TOL = 1e-4


# ----------------------------------------------------------------------------- reference model
class NaiveAttnMel(nn.Module):
    """The eager reference: torchvision's vgg16_bn features and the spec's head, written out plainly."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        import torchvision

        self.features = torchvision.models.vgg16_bn(weights=None).features
        self.wl3 = nn.Conv2d(256, 256, 1, bias=False)
        self.wg3 = nn.Conv2d(512, 256, 1, bias=False)
        self.phi3 = nn.Conv2d(256, 1, 1)
        self.wl4 = nn.Conv2d(512, 256, 1, bias=False)
        self.wg4 = nn.Conv2d(512, 256, 1, bias=False)
        self.phi4 = nn.Conv2d(256, 1, 1)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (23, 33, 43):
                taps.append(x)
        l3, l4, g = taps
        maps = {}
        vecs = [g.mean(dim=(2, 3))]
        for name, l, wl, wg, phi in (("pool3", l3, self.wl3, self.wg3, self.phi3),
                                     ("pool4", l4, self.wl4, self.wg4, self.phi4)):
            up = F.interpolate(wg(g), size=l.shape[-2:], mode="bilinear", align_corners=False)
            a = torch.sigmoid(phi(F.relu(wl(l) + up)))
            maps[name] = a
            vecs.append((a * l).mean(dim=(2, 3)))
        feats = torch.cat(vecs, dim=1)
        return self.fc(feats), maps, feats

    def copy_from(self, model: nn.Module) -> NaiveAttnMel:
        """Take the weights of an :class:`AttnMelCNN` (sigmoid, both layers) so outputs are comparable."""
        self.features.load_state_dict(model.features.state_dict())
        for n in ("3", "4"):
            block = model.attention[f"pool{n}"]
            getattr(self, f"wl{n}").load_state_dict(block.W_l.state_dict())
            getattr(self, f"wg{n}").load_state_dict(block.W_g.state_dict())
            getattr(self, f"phi{n}").load_state_dict(block.phi.state_dict())
        self.fc.load_state_dict(model.classifier.state_dict())
        return self


def _build(impl: str, width: float = 1.0) -> nn.Module:
    from attnmel.models.vgg import AttnMelCNN

    torch.manual_seed(0)
    model = AttnMelCNN(2, width=width)
    return model if impl == "attnmel" else NaiveAttnMel(2).copy_from(model)


def _logits(out: Any) -> torch.Tensor:
    return out[0]


# ----------------------------------------------------------------------------- one CPU setting
def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mib() -> float:
    rss = _proc_status_mib("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _iterations(size: int, mode: str) -> tuple[int, int]:
    """(warm-up, timed) iterations: few at 224 so the whole bench stays within minutes on 2 cores."""
    if size >= 160:
        return (1, 2) if mode == "train" else (1, 3)
    return (2, 5) if mode == "train" else (2, 10)


def measure(impl: str, precision: str, channels_last: bool, mode: str, size: int, batch: int,
            device: str = "cpu", warmup: int | None = None, iters: int | None = None,
            width: float = 1.0) -> dict[str, Any]:
    """Throughput (images/s) and peak memory of one setting, measured in the current process
    (``width``: the backbone's channel multiplier, for tiny smoke runs). One function on purpose: build, warm up
    and time must share the model, the inputs and the timing loop exactly."""
    w0, n0 = _iterations(size, mode)
    warmup = w0 if warmup is None else warmup
    iters = n0 if iters is None else iters
    dev = torch.device(device)
    model = _build(impl, width).to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 2, (batch,), device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train(mode == "train")

    def step() -> None:
        if mode == "train":
            with autocast:
                loss = F.cross_entropy(_logits(model(x)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast:
                _logits(model(x))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    gc.collect()
    reset = dev.type == "cpu" and _reset_peak_rss()
    rss0 = _rss_mib()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = {"impl": impl, "precision": precision, "channels_last": channels_last, "mode": mode, "size": size,
           "batch": batch, "threads": torch.get_num_threads(), "iters": iters, "seconds_per_iter": dt / iters,
           "images_per_s": batch * iters / dt, "cpu_seconds_per_iter": cpu / iters,
           "images_per_cpu_s": batch * iters / cpu if cpu > 0 else None}
    if dev.type == "cuda":
        res["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        res["peak_mem_over_setup_mib"] = res["peak_mem_mib"] - base
    else:
        peak = _proc_status_mib("VmHWM") if reset else None
        res["rss_before_timed_mib"] = rss0
        res["peak_rss_mib"] = peak
        res["working_mem_mib"] = peak - rss0 if peak is not None else None
    return res


def _measure_in_subprocess(setting: dict[str, Any], mode: str, size: int, batch: int,
                           threads: int | None) -> dict[str, Any]:
    # Peak RSS of a fresh process = what this setting alone needs (set-up included).
    args = {**setting, "mode": mode, "size": size, "batch": batch}
    cmd = [sys.executable, "-m", "attnmel.bench.model", "--worker", json.dumps(args)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {**args, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker(args: dict[str, Any]) -> None:
    res = measure(args["impl"], args["precision"], args["channels_last"], args["mode"], args["size"], args["batch"])
    res["load_avg"] = os.getloadavg()[0]
    print(json.dumps(res))


# ----------------------------------------------------------------------------- numerics
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def numerics(size: int, batch: int, device: str = "cpu") -> dict[str, Any]:
    """Relative L2 errors vs our fp32 eager output (eval mode) on one input."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = _build("attnmel").to(dev).eval()
    ref = NaiveAttnMel(2).copy_from(model).to(dev).eval()
    x = torch.randn(batch, 3, size, size, device=dev)
    with torch.inference_mode():
        base = model(x)
        out: dict[str, Any] = {}
        r = ref(x)
        out["reference_fp32"] = _errors(base, r[0], r[1], r[2])
        for cl in (False, True):
            m = model.to(memory_format=torch.channels_last) if cl else model.to(memory_format=torch.contiguous_format)
            xi = x.contiguous(memory_format=torch.channels_last) if cl else x
            for precision in ("fp32", "bf16"):
                if precision == "fp32" and not cl:
                    continue
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    o = m(xi)
                out[f"{precision}{'_channels_last' if cl else ''}"] = _errors(base, o.logits, o.maps, o.features)
    for key, errs in out.items():
        tol = BF16_REL_TOL if key.startswith("bf16") else FP32_REL_TOL
        errs["tolerance"] = tol
        errs["sound"] = max(errs["logits_rel"], errs["features_rel"], errs["maps_rel"]) <= tol
    return out


def _errors(base: Any, logits: torch.Tensor, maps: dict[str, torch.Tensor], feats: torch.Tensor) -> dict[str, Any]:
    return {
        "logits_rel": _rel(logits, base.logits),
        "features_rel": _rel(feats, base.features),
        "maps_rel": max(_rel(maps[k], base.maps[k]) for k in base.maps),
        "logits_max_abs": float((logits.float() - base.logits.float()).abs().max()),
        "argmax_agree": float((logits.argmax(1) == base.logits.argmax(1)).float().mean()),
    }


def interleaved_ratio(size: int, batch: int, mode: str, iters: int | None = None) -> dict[str, Any]:
    """Ours vs the naive reference, fp32, alternating one iteration each in one process.

    Separate subprocesses run minutes apart on a shared machine; alternating puts both under the
    same load, so their ratio is trustworthy even when the absolute numbers are not.
    """
    warm, n = _iterations(size, mode)
    n = n if iters is None else iters
    torch.manual_seed(0)
    ours = _build("attnmel")
    models = {"attnmel": ours, "reference": NaiveAttnMel(2).copy_from(ours)}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))

    def step(name: str) -> None:
        m = models[name]
        if mode == "train":
            loss = F.cross_entropy(_logits(m(x)), y)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
        else:
            with torch.inference_mode():
                m(x)

    for m in models.values():
        m.train(mode == "train")
    for _ in range(warm):
        for name in models:
            step(name)
    wall = dict.fromkeys(models, 0.0)
    cpu = dict.fromkeys(models, 0.0)
    for i in range(n):
        for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
            c0, t0 = time.process_time(), time.perf_counter()
            step(name)
            cpu[name] += time.process_time() - c0
            wall[name] += time.perf_counter() - t0
    return {"size": size, "batch": batch, "mode": mode, "iters": n,
            "ours_over_reference_wall": wall["reference"] / wall["attnmel"],
            "ours_over_reference_cpu": cpu["reference"] / cpu["attnmel"],
            "ours_images_per_s": batch * n / wall["attnmel"], "reference_images_per_s": batch * n / wall["reference"]}


# ----------------------------------------------------------------------------- the whole bench
def cpu_info() -> dict[str, Any]:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    mkldnn_bf16 = None
    try:
        mkldnn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op; absent in some builds
        pass
    return {
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "mkldnn_bf16_supported": mkldnn_bf16,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
    }


def _key(r: dict[str, Any]) -> str:
    if r["impl"] == "reference":
        return "reference_fp32"
    return f"{r['precision']}{'_channels_last' if r['channels_last'] else ''}"


def _pick(results: list[dict[str, Any]], sound: dict[int, dict[str, Any]], metric: str) -> dict[str, Any]:
    best: dict[str, Any] = {"metric": metric}
    for size in sorted({r["size"] for r in results}):
        for mode in MODES:
            rows = [r for r in results if r["size"] == size and r["mode"] == mode and "error" not in r]
            ref = next((r for r in rows if r["impl"] == "reference"), None)
            checks = sound.get(size, {})
            # Our fp32 eager output is the baseline the others are compared with; it is itself
            # checked against the naive reference.
            ok = {k: v.get("sound") for k, v in checks.items()}
            ok["fp32"] = ok.get("reference_fp32", False)
            ours = [r for r in rows if r["impl"] == "attnmel" and ok.get(_key(r))]
            if not ours:
                continue
            top = max(ours, key=lambda r: r[metric] or 0.0)
            fp32 = next((r for r in ours if _key(r) == "fp32"), None)
            best[f"{mode}@{size}"] = {
                "fastest_sound_setting": _key(top),
                metric: top[metric],
                "speedup_vs_fp32": top[metric] / fp32[metric] if fp32 else None,
                "ours_fp32_vs_reference_separate_runs": (fp32[metric] / ref[metric]) if fp32 and ref else None,
            }
    return best


def gpu_section(device: str = "cuda", size: int = 224, batch: int = 32) -> dict[str, Any]:
    """fp32 vs bf16-mixed, train and infer, on one accelerator (in-process: memory stats are per device)."""
    out: dict[str, Any] = {"device_name": torch.cuda.get_device_name(0) if device == "cuda" else device,
                           "size": size, "batch": batch, "runs": []}
    few = device != "cuda"  # a dry run of this code path on CPU
    for precision in ("fp32", "bf16"):
        for mode in MODES:
            out["runs"].append(measure("attnmel", precision, False, mode, size, batch, device=device,
                                       warmup=1 if few else 3, iters=1 if few else 10))
    out["numerics"] = numerics(size, min(batch, 8), device=device)
    return out


def run(out_json: Path = Path("reports/bench/model.json"), sizes: tuple[int, ...] = (224, 64), batch: int = 8,
        threads: int | None = None, gpu: bool = True) -> dict[str, Any]:
    """Run the benchmark, print a summary, write ``out_json`` atomically, and return the results."""
    t_start = time.perf_counter()
    report: dict[str, Any] = {"what": "AttnMel-CNN (VGG-16-BN, width 1.0, K=2) throughput and memory",
                              "cpu": cpu_info(), "batch": batch, "sizes": list(sizes),
                              "memory_note": "CPU: one fresh subprocess per setting; peak_rss_mib = VmHWM over "
                                             "the timed loop (mark reset after warm-up), working_mem_mib = that "
                                             "peak minus VmRSS just before the loop. GPU: "
                                             "torch.cuda.max_memory_allocated.",
                              "timing_note": "per iteration after warm-up: images_per_s by wall clock, "
                                             "images_per_cpu_s by process CPU time (load-robust when threads=1); "
                                             "load_avg is recorded with each run",
                              "cpu_runs": [], "numerics": {}, "reference_ratio": []}
    for size in sizes:
        report["numerics"][str(size)] = numerics(size, min(batch, 4))
        for mode in MODES:
            report["reference_ratio"].append(interleaved_ratio(size, batch, mode))
            r = report["reference_ratio"][-1]
            print(f"{mode:5s} {size:4d} ours/reference (fp32, interleaved): {r['ours_over_reference_wall']:.3f} "
                  f"wall, {r['ours_over_reference_cpu']:.3f} cpu-time", flush=True)
        for mode in MODES:
            for setting in SETTINGS:
                r = _measure_in_subprocess(setting, mode, size, batch, threads)
                report["cpu_runs"].append(r)
                _print_row(r)
    sound = {int(s): v for s, v in report["numerics"].items()}
    # With one thread per setting, throughput per CPU-second is what an idle core would give and is
    # robust to other jobs on a shared machine; with several threads only wall-clock is meaningful.
    metric = "images_per_cpu_s" if threads == 1 else "images_per_s"
    report["best"] = _pick(report["cpu_runs"], sound, metric)
    if gpu and torch.cuda.is_available():
        report["gpu"] = gpu_section()
    else:
        report["gpu"] = None
    report["load_avg_at_end"] = os.getloadavg()
    report["seconds"] = time.perf_counter() - t_start
    write_json(out_json, report)
    bf16 = {k: report["cpu"][k] for k in ("cpu_capability", "avx512_bf16", "amx_bf16", "mkldnn_bf16_supported")}
    print(json.dumps({"best": report["best"], "reference_ratio": report["reference_ratio"], "bf16_hardware": bf16},
                     indent=2))
    print(f"wrote {out_json}")
    return report


def _print_row(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"{r['mode']:5s} {r['size']:4d} {r['impl']:9s} {r['precision']} cl={r['channels_last']}: {r['error']}")
        return
    mem = (f"peak rss {r['peak_rss_mib']:6.0f} MiB, working {r['working_mem_mib']:6.0f} MiB"
           if r.get("peak_rss_mib") is not None else "peak rss n/a")
    print(f"{r['mode']:5s} {r['size']:4d} {_key(r):20s} {r['images_per_s']:8.2f} img/s "
          f"({r['images_per_cpu_s'] or 0:8.2f} img/cpu-s)  {mem}  "
          f"(load {r.get('load_avg', 0):.1f})", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m attnmel.bench.model", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("reports/bench/model.json"))
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads per setting (default: torch's)")
    p.add_argument("--no-gpu", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.worker:
        _worker(json.loads(a.worker))
        return
    run(a.out, tuple(a.sizes), a.batch, threads=a.threads, gpu=not a.no_gpu)


if __name__ == "__main__":
    main()
