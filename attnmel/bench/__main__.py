"""``python -m attnmel.bench`` (``make bench``): speed and memory figures, one JSON per part in reports/bench/."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

PARTS = ("data", "cache_scale", "model", "segmentation", "report", "train", "export", "evaluate")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnmel.bench", description=__doc__)
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    p.add_argument("--tiny", action="store_true",
                   help="smoke-test sizes for the train and export parts (a few small images, 64 px, width 0.125)")
    args = p.parse_args(argv)
    if args.tiny:
        os.environ["ATTNMEL_BENCH_TINY"] = "1"
        os.environ["ATTNMEL_BENCH_TRAIN_MODE"] = "tiny"
    failed = []
    for part in [s.strip() for s in args.only.split(",") if s.strip()]:
        if part not in PARTS:
            print(f"attnmel bench: error: unknown part '{part}' (known: {', '.join(PARTS)})", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        print(f"== bench {part} -> {args.out / (part + '.json')}", flush=True)
        try:
            importlib.import_module(f"attnmel.bench.{part}").run(args.out / f"{part}.json")
        except Exception as e:  # noqa: BLE001 - one part failing must not hide the others' figures
            failed.append(part)
            print(f"bench {part} failed: {e.__class__.__name__}: {e}", file=sys.stderr)
        print(f"== bench {part}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
