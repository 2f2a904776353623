"""Synthetic dermoscopy lesions in the ISIC 2017 layout: the built-in dataset, and what the tests use.

Each image: skin-toned background with illumination fall-off and dermoscopy artefacts (hairs, a ruler, a
dark lens corner), and one irregular lesion with its exact mask. Melanomas differ from benign lesions only
INSIDE the lesion (colour variegation: blue-grey / black / red patches, radial streaks at the border, a more
irregular border); benign lesions are smoother and more uniform but vary in shade, size and tint (some are
bluish or reddish, some carry dark dots), so global colour alone is a weak cue.

``spurious=True`` plants a green sticker in a corner, outside the lesion, on 90 % of the training melanomas
and 10 % of the training benign lesions, but on 50 % of each class in val and test: a shortcut that works
in training only, the case attention regularisers exist for.

Part 2 ground truth (dermoscopic features) is written too: a grid of superpixels (RGB-encoded like ISIC's)
and, per feature, one 0/1 flag per superpixel for the superpixels mostly covered by the streak, variegation
or (benign) network areas.

The output is deterministic for a seed: the same arguments give the same bytes. The label CSVs and
``attnmel_synthetic.json`` (``complete: true``) are written last and atomically, so an interrupted
generation is detectable.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_json, write_text

MARKER = "attnmel_synthetic.json"
TRUTH = "attnmel_synthetic_truth.csv"
SPLIT_TAGS = {"train": "Training", "val": "Validation", "test": "Test_v2"}
SPLIT_SHARES = {"train": 0.6, "val": 0.2, "test": 0.2}
MELANOMA_RATE = 0.35
STICKER_RATE = {"train": (0.1, 0.9), "val": (0.5, 0.5), "test": (0.5, 0.5)}  # (benign, melanoma)
FIRST_ID = 9_000_000  # above the real ISIC ids, so a synthetic image is recognisable by its id
GRID = 12  # superpixels per side

_BROWN = np.array([0.52, 0.33, 0.21], dtype=np.float32)
_MEL_COLOURS = {
    "blue_grey": np.array([0.42, 0.47, 0.60], dtype=np.float32),
    "black": np.array([0.09, 0.07, 0.07], dtype=np.float32),
    "red": np.array([0.68, 0.22, 0.22], dtype=np.float32),
}
_STICKER = np.array([0.15, 0.80, 0.30], dtype=np.float32)


@dataclass(frozen=True)
class Plan:
    """What one image will show, decided before any pixel is drawn."""

    index: int
    image_id: str
    split: str
    melanoma: bool
    sticker: bool


def plan(n: int, seed: int, spurious: bool) -> list[Plan]:
    """Split, label and sticker of every image: exact counts per split, shuffled with the seed."""
    rng = np.random.default_rng([seed, 0x5EED])
    sizes = {"train": int(round(n * SPLIT_SHARES["train"])), "val": int(round(n * SPLIT_SHARES["val"]))}
    sizes["test"] = n - sizes["train"] - sizes["val"]
    plans: list[Plan] = []
    for split in ("train", "val", "test"):
        m = sizes[split]
        n_mel = min(m - 1, max(1, int(np.floor(m * MELANOMA_RATE + 0.5))))
        labels = np.zeros(m, dtype=bool)
        labels[:n_mel] = True
        sticker = np.zeros(m, dtype=bool)
        if spurious:
            p_ben, p_mel = STICKER_RATE[split]
            sticker[:n_mel][: int(np.floor(n_mel * p_mel + 0.5))] = True
            sticker[n_mel:][: int(np.floor((m - n_mel) * p_ben + 0.5))] = True
        order = rng.permutation(m)
        for lab, st in zip(labels[order], sticker[order]):
            i = len(plans)
            plans.append(Plan(i, f"ISIC_{FIRST_ID + i:07d}", split, bool(lab), bool(st)))
    return plans


# -- drawing ---------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a (cells+1)^2 random lattice, smoothstep-interpolated to size x size."""
    lattice = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) * cells / size
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    f = f * f * (3 - 2 * f)
    fy, fx = f[:, None], f[None, :]
    a, b = lattice[i][:, i], lattice[i][:, i + 1]
    c, d = lattice[i + 1][:, i], lattice[i + 1][:, i + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _lesion_shape(rng: np.random.Generator, s: int, melanoma: bool, yy: np.ndarray, xx: np.ndarray):
    """Radial-harmonic blob: mask, distance to centre, border radius at each pixel's angle, angle."""
    r0 = s * rng.uniform(0.15, 0.27)
    kmax = 10 if melanoma else 5
    amp = 0.22 if melanoma else 0.07
    ks = np.arange(2, kmax + 1)
    a = rng.uniform(0, amp, ks.size) / np.sqrt(ks - 1)
    phase = rng.uniform(0, 2 * np.pi, ks.size)
    theta_s = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    radius_s = r0 * (1 + (a[:, None] * np.cos(ks[:, None] * theta_s[None] + phase[:, None])).sum(0))
    rmax = float(np.clip(radius_s, 0.45 * r0, None).max())
    if rmax > 0.42 * s:  # rare large, very irregular blob: shrink it to fit the frame
        r0 *= 0.42 * s / rmax
        rmax = 0.42 * s
    room = max(0.0, 0.46 * s - rmax)  # off-centre jitter that keeps the lesion inside the frame
    cy, cx = s / 2 + rng.uniform(-room, room, 2) * 0.7
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    radius = r0 * (1 + (a[:, None, None] * np.cos(ks[:, None, None] * theta[None] + phase[:, None, None])).sum(0))
    radius = np.maximum(radius, 0.45 * r0).astype(np.float32)
    return dist <= radius, dist, radius, theta


def _patches(rng: np.random.Generator, s: int, mask: np.ndarray, cover: float, cells: int) -> np.ndarray:
    """A blotchy region covering about ``cover`` of the lesion."""
    noise = _smooth_noise(rng, s, cells)
    inside = noise[mask]
    if inside.size == 0:
        return np.zeros_like(mask)
    return mask & (noise > np.quantile(inside, 1 - cover))


def _draw_hairs(rng: np.random.Generator, img: np.ndarray, s: int) -> None:
    """Thin dark quadratic curves (hairs), rasterised by dense sampling; drawn over everything."""
    count = int(rng.integers(1, 7))
    t = np.linspace(0, 1, 4 * s, dtype=np.float32)[:, None]
    hair = np.zeros((s, s), dtype=np.float32)
    for _ in range(count):
        p0, p1, p2 = rng.uniform(-0.1 * s, 1.1 * s, (3, 2)).astype(np.float32)
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        ij = np.round(pts).astype(np.int64)
        ok = (ij >= 0).all(1) & (ij < s).all(1)
        hair[ij[ok, 0], ij[ok, 1]] = rng.uniform(0.6, 0.9)
    colour = np.float32(rng.uniform(0.05, 0.25))
    img *= 1 - hair[..., None]
    img += hair[..., None] * colour


def _draw_ruler(rng: np.random.Generator, img: np.ndarray, s: int) -> None:
    """A dark scale with tick marks along the top or bottom edge."""
    y = int(round(s * rng.uniform(0.04, 0.08)))
    tick = max(2, s // 32)
    step = max(3, s // 14)
    band = np.zeros((s, s), dtype=bool)
    band[y, :] = True
    for j, x in enumerate(range(int(rng.integers(0, step)), s, step)):
        band[y:y + (2 * tick if j % 5 == 0 else tick) + 1, x] = True
    if rng.random() < 0.5:
        band = band[::-1]
    img[band] = img[band] * 0.25 + 0.03


def _sticker(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, s: int) -> None:
    """A green square in a corner the lesion does not reach (keeps the artefact outside the lesion)."""
    side = max(3, int(round(s * rng.uniform(0.12, 0.16))))
    margin = max(1, s // 24)
    pad = 2
    corners = [(cy, cx) for cy in (margin, s - margin - side) for cx in (margin, s - margin - side)]
    overlap = [int(mask[max(0, cy - pad):cy + side + pad, max(0, cx - pad):cx + side + pad].sum())
               for cy, cx in corners]
    free = [c for c, o in zip(corners, overlap) if o == 0] or [corners[int(np.argmin(overlap))]]
    cy, cx = free[int(rng.integers(len(free)))]
    region = np.zeros_like(mask)
    region[cy:cy + side, cx:cx + side] = True
    region &= ~mask  # a lesion reaching every corner is near-impossible, but never paint over it
    img[region] = _STICKER * np.float32(rng.uniform(0.9, 1.1))


def draw(p: Plan, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One image (uint8 H x W x 3), its lesion mask (bool) and its dermoscopic-feature areas (bool)."""
    s = size
    rng = np.random.default_rng([seed, p.index])
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5)

    # skin: tone, mottling, illumination fall-off from an off-centre light
    red = rng.uniform(0.72, 0.95)
    skin = np.array([red, red * rng.uniform(0.66, 0.80), 0.0], dtype=np.float32)
    skin[2] = skin[1] * rng.uniform(0.78, 0.92)
    mottle = 1 + 0.08 * (_smooth_noise(rng, s, 5) - 0.5)
    img = skin[None, None, :] * mottle[..., None]

    mask, dist, radius, theta = _lesion_shape(rng, s, p.melanoma, yy, xx)
    rel = np.where(mask, dist / radius, 1.0).astype(np.float32)  # 0 at the centre, 1 at the border

    # lesion base: brown of any shade, darker towards the centre for some
    tint = _BROWN * np.float32(rng.uniform(0.55, 1.25)) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    features: dict[str, np.ndarray] = {}
    if not p.melanoma:
        kind = rng.random()
        if kind < 0.12:  # blue nevus: uniformly bluish, benign
            tint = 0.5 * tint + 0.5 * _MEL_COLOURS["blue_grey"] * np.float32(rng.uniform(0.8, 1.1))
        elif kind < 0.22:  # reddish (angioma-like), benign
            tint = 0.6 * tint + 0.4 * _MEL_COLOURS["red"]
    centre_dark = np.float32(rng.uniform(0.0, 0.3))
    lesion = tint[None, None, :] * (1 - centre_dark * (1 - rel))[..., None]
    lesion = lesion * (1 + 0.10 * (_smooth_noise(rng, s, 8) - 0.5))[..., None]

    if p.melanoma:
        weak = rng.random() < 0.15
        names = list(_MEL_COLOURS)
        chosen = [names[i] for i in rng.permutation(3)[: 1 if weak else int(rng.integers(2, 4))]]
        varieg = np.zeros((s, s), dtype=bool)
        for name in chosen:
            area = _patches(rng, s, mask, rng.uniform(0.08, 0.14) if weak else rng.uniform(0.15, 0.3),
                            int(rng.integers(3, 6)))
            lesion[area] = 0.15 * lesion[area] + 0.85 * _MEL_COLOURS[name]
            varieg |= area
        features["pigment_network"] = varieg
        if not weak:  # radial streaks along part of the border
            n_streaks = int(rng.integers(10, 22))
            sector = np.cos(theta - rng.uniform(0, 2 * np.pi)) > rng.uniform(-0.5, 0.3)
            streaks = mask & sector & (rel > 0.62) & (np.cos(n_streaks * theta) > 0.55)
            lesion[streaks] = lesion[streaks] * 0.35
            features["streaks"] = streaks
    else:
        core = mask & (rel < rng.uniform(0.5, 0.75))
        network = core & ((np.sin(yy * 1.7) * np.sin(xx * 1.7)) > 0.3)
        lesion[network] *= 0.85
        features["pigment_network"] = core
        if rng.random() < 0.25:  # a few dark dots: benign, but dark like melanoma patches
            for _ in range(int(rng.integers(1, 4))):
                ys, xs = np.nonzero(mask & (rel < 0.7))
                if ys.size:
                    j = int(rng.integers(ys.size))
                    dot = mask & (np.hypot(yy - yy[ys[j], xs[j]], xx - xx[ys[j], xs[j]]) < max(1.0, s / 48))
                    lesion[dot] *= 0.45

    # blend inside the mask only (the mask stays exact), fading slightly towards the border
    alpha = np.where(mask, 0.75 + 0.25 * np.clip((1 - rel) / 0.25, 0, 1), 0).astype(np.float32)
    img = img * (1 - alpha[..., None]) + lesion * alpha[..., None]

    cy, cx = s / 2 + rng.uniform(-0.15, 0.15, 2) * s
    fall = np.hypot(yy - cy, xx - cx) / (0.75 * s)
    img *= (1 - rng.uniform(0.1, 0.35) * fall**2)[..., None]

    if rng.random() < 0.5:
        _draw_hairs(rng, img, s)
    if rng.random() < 0.2:
        _draw_ruler(rng, img, s)
    if rng.random() < 0.3:  # dark lens corners: outside a circle that always contains the lesion
        lens = np.hypot(yy - s / 2, xx - s / 2) / (s * rng.uniform(0.62, 0.72))
        shade = np.clip((lens - 1) * 6, 0, 1)
        img *= (1 - 0.9 * shade)[..., None]
    if p.sticker:
        _sticker(rng, img, mask, s)

    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    out = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out, mask, features


def superpixels(size: int) -> np.ndarray:
    """A GRID x GRID grid of superpixel indices (int64, H x W)."""
    cell = np.minimum(np.arange(size) * GRID // size, GRID - 1)
    return cell[:, None] * GRID + cell[None, :]


def feature_flags(sp: np.ndarray, area: np.ndarray, min_share: float = 0.3) -> list[int]:
    """One 0/1 flag per superpixel: 1 where at least ``min_share`` of it lies in ``area``."""
    n = int(sp.max()) + 1
    total = np.bincount(sp.ravel(), minlength=n)
    hit = np.bincount(sp.ravel(), weights=area.ravel().astype(np.float64), minlength=n)
    return [int(v) for v in (hit >= min_share * np.maximum(total, 1))]


def _encode_superpixels(sp: np.ndarray) -> np.ndarray:
    return np.stack([sp % 256, (sp // 256) % 256, sp // 65536], axis=-1).astype(np.uint8)


# -- writing ---------------------------------------------------------------------------------------

def _prepare(out: Path) -> None:
    """Create ``out``; clear a previous synthetic set there; refuse a folder holding anything else."""
    if out.exists() and not out.is_dir():
        raise file_error(out, "exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    if not entries:
        return
    if not (out / MARKER).is_file():
        raise file_error(out, "folder is not empty and holds no synthetic dataset; choose another --out")
    for p in entries:
        if p.name.startswith("ISIC-2017_") or p.name in (MARKER, TRUTH):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def generate(out: Path, n: int = 600, size: int = 96, seed: int = 0, spurious: bool = False,
             progress: bool = True) -> Path:
    """Write ``n`` synthetic lesions of ``size`` px into ``out`` in the ISIC 2017 layout; return ``out``."""
    if n < 10:
        raise AttnMelError(f"synthetic n must be at least 10 (every split needs both classes), got {n}")
    if size < 32:
        raise AttnMelError(f"synthetic size must be at least 32 px, got {size}")
    out = Path(out).expanduser()
    _prepare(out)
    params = {"n": n, "size": size, "seed": seed, "spurious": spurious}
    write_json(out / MARKER, {"complete": False, **params})

    plans = plan(n, seed, spurious)
    dirs = {}
    for split, tag in SPLIT_TAGS.items():
        dirs[split] = (out / f"ISIC-2017_{tag}_Data", out / f"ISIC-2017_{tag}_Part1_GroundTruth",
                       out / f"ISIC-2017_{tag}_Part2_GroundTruth")
        for d in dirs[split]:
            d.mkdir(parents=True, exist_ok=True)
    sp = superpixels(size)
    sp_png = _encode_superpixels(sp)
    names = ("pigment_network", "negative_network", "streaks", "milia_like_cyst")
    empty = [0] * (int(sp.max()) + 1)

    def write_one(p: Plan) -> None:
        image, mask, feats = draw(p, size, seed)
        data_dir, mask_dir, dermo_dir = dirs[p.split]
        Image.fromarray(image).save(data_dir / f"{p.image_id}.jpg", quality=95, subsampling=0)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{p.image_id}_segmentation.png")
        Image.fromarray(sp_png).save(data_dir / f"{p.image_id}_superpixels.png")
        flags = {k: (feature_flags(sp, feats[k]) if k in feats else empty) for k in names}
        (dermo_dir / f"{p.image_id}_features.json").write_text(json.dumps(flags), encoding="utf-8")

    if progress:
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("synthetic lesions", total=len(plans))
            for p in plans:
                write_one(p)
                bar.advance(task)
    else:
        for p in plans:
            write_one(p)

    # Labels last: a set without its CSVs (or with complete=false) is visibly unfinished.
    for split, tag in SPLIT_TAGS.items():
        rows = [p for p in plans if p.split == split]
        meta = "image_id,age_approximate,sex\n" + "".join(f"{p.image_id},NA,unknown\n" for p in rows)
        write_text(dirs[split][0] / f"ISIC-2017_{tag}_Data_metadata.csv", meta)
        write_text(out / f"ISIC-2017_{tag}_Part3_GroundTruth.csv",
                   "image_id,melanoma,seborrheic_keratosis\n"
                   + "".join(f"{p.image_id},{float(p.melanoma)},0.0\n" for p in rows))
    write_text(out / TRUTH, "image_id,split,melanoma,sticker\n"
               + "".join(f"{p.image_id},{p.split},{int(p.melanoma)},{int(p.sticker)}\n" for p in plans))
    write_json(out / MARKER, {"complete": True, **params})
    return out
