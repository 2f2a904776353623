"""Preprocessing cache at ISIC 2020 scale (``python -m attnmel.bench --only cache_scale``).

ISIC 2020 has 33,126 training JPEGs, many of them 6000x4000 camera files. The bench builds the cache of a
generated set of that *shape* (``N_IMAGES`` 6000x4000 JPEGs of dermoscopy-like texture, made once under
``.cache/attnmel/bench-isic2020-src``) with the ISIC 2020 config's base step (centre crop 0.8, resize 256)
and reports the first-build rate: images per second, MB of JPEG per second, and the cache's bytes per image.

Extrapolation (written into the JSON): the build is a sequential pass of independent per-image work
(decode in JPEG draft mode at 1/8 scale, crop, resize, memmap write) on a thread pool, so its time grows
linearly with the work: ``33126 / rate`` seconds is the first epoch's build time if every image were a
6000x4000 file as large as these (an upper bound: the real set mixes in smaller files). JPEG entropy decoding
is paid per byte even in draft mode, so ``23 GB / (MB/s)`` (the download's size) is the closer estimate. The
cache's size is exact: ``n x 256 x 256 x 3`` bytes. Writes ``reports/bench/cache_scale.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from attnmel.io import write_json

WIDTH, HEIGHT, N_IMAGES = 6000, 4000, 12
ISIC2020_IMAGES = 33126
ISIC2020_JPEG_GB = 23.0  # ISIC_2020_Training_JPEG.zip as the challenge page lists it (not measured here)
RESIZE, CENTER_CROP = 256, 0.8
SRC_VERSION = 1


def make_images(folder: Path, n: int = N_IMAGES) -> list[Path]:
    """``n`` 6000x4000 JPEGs (quality 92), generated once and reused while their listing is intact."""
    from attnmel.bench.data import _fake_dermoscopy

    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "images.json"
    wanted = [f"ISIC_{9_500_000 + i:07d}.jpg" for i in range(n)]
    try:
        if json.loads(listing.read_text()) == {"v": SRC_VERSION, "size": [WIDTH, HEIGHT], "files": wanted} and \
                all((folder / name).is_file() for name in wanted):
            return [folder / name for name in wanted]
    except (OSError, ValueError):
        pass

    def one(item: tuple[int, str]) -> None:
        k, name = item
        tmp = folder / f".{name}.tmp"
        Image.fromarray(_fake_dermoscopy(WIDTH, HEIGHT, 1000 + k)).save(tmp, format="JPEG", quality=92)
        os.replace(tmp, folder / name)

    with ThreadPoolExecutor(max_workers=2) as ex:  # ~0.3 GB of float32 per image being drawn
        list(ex.map(one, enumerate(wanted)))
    listing.write_text(json.dumps({"v": SRC_VERSION, "size": [WIDTH, HEIGHT], "files": wanted}))
    return [folder / name for name in wanted]


def run(out_json: Path = Path("reports/bench/cache_scale.json"), src_dir: Path | None = None) -> dict:
    """Measure the first build (best of two, each into an empty folder), print, write ``out_json``."""
    from attnmel.data.cache import default_workers, ensure_cache, resolve_sources
    from attnmel.data.samples import Sample
    from attnmel.data.transforms import BaseSpec

    t_start = time.perf_counter()
    paths = make_images(Path(src_dir) if src_dir else Path(".cache/attnmel/bench-isic2020-src"))
    n = len(paths)
    mb = sum(p.stat().st_size for p in paths) / 2**20
    spec = BaseSpec(resize=RESIZE, center_crop=CENTER_CROP)
    sources = resolve_sources([Sample(p.stem, p, label=0) for p in paths])
    workers = default_workers()
    build_s = float("inf")
    tmp_cache = Path(tempfile.mkdtemp(prefix="attnmel-bench-scale-"))
    try:
        for attempt in range(2):
            t0 = time.perf_counter()
            cache = ensure_cache("isic2020", "train", sources, spec, tmp_cache / str(attempt), progress=False,
                                 workers=workers)
            build_s = min(build_s, time.perf_counter() - t0)
            assert cache.built and len(cache) == n
            cache_bytes = (cache.path / "images.npy").stat().st_size
            del cache
    finally:
        shutil.rmtree(tmp_cache, ignore_errors=True)
    ips = n / build_s
    per_image = (cache_bytes - 128) / n  # .npy header
    report = {
        "images": f"{n} at {WIDTH}x{HEIGHT}", "n_images": n, "jpeg_mb": round(mb, 1), "resize": RESIZE,
        "center_crop": CENTER_CROP, "cache_workers": workers, "cpu_count": os.cpu_count(),
        "first_build": {"seconds": round(build_s, 3), "images_per_second": round(ips, 2),
                        "jpeg_mb_per_second": round(mb / build_s, 1)},
        "cache_bytes_per_image": int(per_image),
        "extrapolated_isic2020": {
            "images": ISIC2020_IMAGES,
            "first_build_minutes_if_all_6000x4000": round(ISIC2020_IMAGES / ips / 60, 1),
            "first_build_minutes_by_jpeg_bytes": round(ISIC2020_JPEG_GB * 1024 / (mb / build_s) / 60, 1),
            "cache_gib": round(ISIC2020_IMAGES * per_image / 2**30, 2),
            "method": "linear in the work (independent per-image work on a thread pool): per image, an upper "
                      f"bound (every file a 6000x4000 one this large); per JPEG byte, for the {ISIC2020_JPEG_GB:g} GB "
                      "download (entropy decoding is paid per byte)",
        },
        "bench_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(out_json, report)
    ex = report["extrapolated_isic2020"]
    print(f"cache at ISIC 2020 scale: {n} JPEGs at {WIDTH}x{HEIGHT} ({report['jpeg_mb']} MB), {workers} decode threads")
    print(f"first build: {ips:.2f} images/s ({report['first_build']['jpeg_mb_per_second']} MB/s of JPEG); "
          f"{ISIC2020_IMAGES} images -> <= {ex['first_build_minutes_if_all_6000x4000']} min "
          f"({ex['first_build_minutes_by_jpeg_bytes']} min by JPEG bytes), "
          f"cache {ex['cache_gib']} GiB")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m attnmel.bench.cache_scale [OUT_JSON]``."""
    argv = sys.argv[1:] if argv is None else argv
    run(Path(argv[0]) if argv else Path("reports/bench/cache_scale.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
