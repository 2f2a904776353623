"""Per-channel normalisation statistics of a split (``attnmel data stats``)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from attnmel.data.cache import DecodeSource, ensure_cache, resolve_sources
from attnmel.data.samples import DatasetIndex
from attnmel.data.transforms import BaseSpec

Triple = tuple[float, float, float]


def compute_stats(index: DatasetIndex, cfg_data: Mapping, progress: bool = True) -> tuple[Triple, Triple]:
    """Mean and standard deviation per RGB channel (values in [0, 1]) over every pixel of the split's
    base-preprocessed images (centre crop + resize, as the model sees them before the random crop).

    With ``data.cache`` on, reads (building if needed) the preprocessing cache, which training reuses;
    otherwise decodes each image. The numbers are what ``data.mean`` / ``data.std`` take.
    """
    spec = BaseSpec.from_cfg(cfg_data)
    sources = resolve_sources(index.samples, cfg_data.get("masks"), spec)
    total = np.zeros(3, dtype=np.float64)
    total_sq = np.zeros(3, dtype=np.float64)
    count = 0
    if cfg_data.get("cache", True):
        cache = ensure_cache(index.dataset, index.split, sources, spec, cfg_data.get("cache_dir") or ".cache/attnmel",
                             progress=progress)
        images = cache.arrays()["images"]
        chunks = (np.asarray(images[i:i + 64]) for i in range(0, len(images), 64))
    else:
        src = DecodeSource(sources, spec)
        chunks = (src.get(i)[0][None] for i in range(len(src)))
    for chunk in chunks:
        # float64 sums of uint8 pixels: exact enough for any split size
        px = chunk.reshape(-1, 3).astype(np.float64)
        total += px.sum(axis=0)
        total_sq += np.square(px).sum(axis=0)
        count += px.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in std / 255.0)  # type: ignore[return-value]
