"""Synthetic lesions with the five ISIC 2018 Task 2 attributes, each drawn with its exact mask.

Written in the Task 2 layout, so the ``isic2018_task2`` reader, the attribute segmenters, ``attnmel segment
--attributes`` and the official metric all run offline (dataset ``synthetic_attributes``)::

    ROOT/ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_<id>.jpg
    ROOT/ISIC2018_Task2_{Training,Validation,Test}_GroundTruth/ISIC_<id>_attribute_<name>.png
    ROOT/ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_<id>_segmentation.png

The skin and the lesion blob come from :mod:`attnmel.data.synthetic`. Each attribute appears in an image
independently with its own rate (:data:`RATES`), so many masks are all zero as in the real set:

- ``pigment_network``: a dark reticular grid over a blotch of the lesion; the mask is the blotch;
- ``negative_network``: the same with light lines around dark holes;
- ``streaks``: dark radial lines in a sector of the lesion border; the mask is the sector's rim band;
- ``globules``: round dark-brown dots; the mask is the dots;
- ``milia_like_cyst``: round whitish-yellow dots; the mask is the dots.

Every mask lies inside the lesion. The output is deterministic for a seed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from attnmel.data.readers._common import SPLIT_TAGS
from attnmel.data.readers.isic2018_task2 import ATTRIBUTES, attribute_file_name
from attnmel.data.synthetic import FIRST_ID, MARKER, SPLIT_SHARES, _lesion_shape, _smooth_noise
from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_json

RATES = {"globules": 0.4, "milia_like_cyst": 0.35, "negative_network": 0.3, "pigment_network": 0.55,
         "streaks": 0.35}
_BROWN = np.array([0.55, 0.36, 0.24], dtype=np.float32)


def _blotch(rng: np.random.Generator, s: int, lesion: np.ndarray, cover: float) -> np.ndarray:
    """A smooth blob covering about ``cover`` of the lesion."""
    noise = _smooth_noise(rng, s, 3)
    inside = noise[lesion]
    if inside.size == 0:
        return np.zeros_like(lesion)
    return lesion & (noise > np.quantile(inside, 1 - cover))


def _dots(rng: np.random.Generator, s: int, region: np.ndarray, yy: np.ndarray, xx: np.ndarray,
          count: int, radius: float) -> np.ndarray:
    """``count`` round dots of ``radius`` px centred in ``region``, clipped to it."""
    ys, xs = np.nonzero(region)
    out = np.zeros_like(region)
    if ys.size == 0:
        return out
    for j in rng.integers(0, ys.size, count):
        out |= np.hypot(yy - yy[ys[j], xs[j]], xx - xx[ys[j], xs[j]]) <= radius
    return out & region


def draw_attributes(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One image (uint8 H x W x 3), its lesion mask and the five attribute masks (bool, all present)."""
    s = size
    rng = np.random.default_rng([seed, index, 0x7A5C2])
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    red = rng.uniform(0.75, 0.95)
    skin = np.array([red, red * rng.uniform(0.68, 0.80), red * rng.uniform(0.55, 0.68)], dtype=np.float32)
    img = skin[None, None] * (1 + 0.06 * (_smooth_noise(rng, s, 5) - 0.5))[..., None]
    melanoma = bool(rng.random() < 0.4)
    # The original set's border irregularity (attnmel.data.synthetic: 0.22 melanoma, 0.07 benign).
    lesion, dist, radius, theta = _lesion_shape(rng, s, melanoma, yy, xx, 0.22 if melanoma else 0.07)
    rel = np.where(lesion, dist / radius, 1.0).astype(np.float32)
    base = _BROWN * np.float32(rng.uniform(0.8, 1.15))
    colour = np.broadcast_to(base, (s, s, 3)).copy() * (1 + 0.08 * (_smooth_noise(rng, s, 6) - 0.5))[..., None]
    inner = lesion & (rel < 0.8)
    period = max(4.0, s / 16)
    grid = (np.abs(np.sin(np.pi * yy / period)) < 0.35) | (np.abs(np.sin(np.pi * xx / period)) < 0.35)
    masks = {name: np.zeros((s, s), dtype=bool) for name in ATTRIBUTES}
    present = {name: bool(rng.random() < RATES[name]) for name in ATTRIBUTES}
    if present["pigment_network"]:
        masks["pigment_network"] = area = _blotch(rng, s, inner, rng.uniform(0.3, 0.5))
        colour[area & grid] *= 0.45
    if present["negative_network"]:
        area = _blotch(rng, s, inner & ~masks["pigment_network"], rng.uniform(0.3, 0.5))
        masks["negative_network"] = area
        colour[area] *= 0.6
        colour[area & grid] = 0.25 * colour[area & grid] + 0.75 * skin
    if present["streaks"]:
        sector = np.cos(theta - rng.uniform(0, 2 * np.pi)) > rng.uniform(0.0, 0.4)
        masks["streaks"] = band = lesion & sector & (rel > 0.6)
        n_lines = int(rng.integers(14, 24))
        colour[band & (np.cos(n_lines * theta) > 0.4)] *= 0.3
    if present["globules"]:
        r = max(1.5, s / 40)
        masks["globules"] = dots = _dots(rng, s, inner, yy, xx, int(rng.integers(3, 8)), r)
        colour[dots] = np.array([0.28, 0.15, 0.09], dtype=np.float32)
    if present["milia_like_cyst"]:
        r = max(1.5, s / 44)
        free = inner & ~masks["globules"]
        masks["milia_like_cyst"] = dots = _dots(rng, s, free, yy, xx, int(rng.integers(2, 6)), r)
        colour[dots] = np.array([0.93, 0.90, 0.72], dtype=np.float32)
    # Paint inside the lesion only, so every mask stays exact and inside it.
    img = np.where(lesion[..., None], colour, img)
    fall = np.hypot(yy - s / 2, xx - s / 2) / (0.75 * s)
    img *= (1 - rng.uniform(0.05, 0.2) * fall**2)[..., None]
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), lesion, masks


def _prepare(out: Path) -> None:
    """Create ``out``; clear a previous generated set there; refuse a folder holding anything else."""
    if out.exists() and not out.is_dir():
        raise file_error(out, "exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    if entries and not (out / MARKER).is_file():
        raise file_error(out, "folder is not empty and holds no synthetic dataset; choose another --out")
    for p in entries:
        if p.name.startswith("ISIC2018_") or p.name == MARKER:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def generate_attributes(out: str | Path, n: int = 300, size: int = 96, seed: int = 0,
                        progress: bool = True) -> Path:
    """Write ``n`` lesions of ``size`` px with attribute masks into ``out`` (Task 2 layout); return ``out``."""
    if n < 10:
        raise AttnMelError(f"synthetic n must be at least 10, got {n}")
    if size < 32:
        raise AttnMelError(f"synthetic size must be at least 32 px, got {size}")
    out = Path(out).expanduser()
    _prepare(out)
    params = {"n": n, "size": size, "seed": seed, "attributes": True}
    write_json(out / MARKER, {"complete": False, **params})
    n_train, n_val = int(round(n * SPLIT_SHARES["train"])), int(round(n * SPLIT_SHARES["val"]))
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    from rich.progress import track

    for i, split in track(list(enumerate(splits)), description="synthetic attributes", disable=not progress,
                          transient=True):
        tag = SPLIT_TAGS[split]
        image_id = f"ISIC_{FIRST_ID + i:07d}"
        image, lesion, masks = draw_attributes(i, size, seed)
        dirs = [out / f"ISIC2018_Task1-2_{tag}_Input", out / f"ISIC2018_Task2_{tag}_GroundTruth",
                out / f"ISIC2018_Task1_{tag}_GroundTruth"]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(dirs[0] / f"{image_id}.jpg", quality=95, subsampling=0)
        for name in ATTRIBUTES:
            Image.fromarray(masks[name].astype(np.uint8) * 255).save(dirs[1] / attribute_file_name(image_id, name))
        Image.fromarray(lesion.astype(np.uint8) * 255).save(dirs[2] / f"{image_id}_segmentation.png")
    write_json(out / MARKER, {"complete": True, **params})
    return out
