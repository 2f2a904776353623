"""Synthetic dermoscopy lesions in the ISIC 2017 layout: the built-in dataset, the shortcut benchmark, and
what the tests use.

Each image: skin-toned background with illumination fall-off and hairs, and one irregular lesion with its
exact mask. Melanomas differ from benign lesions only INSIDE the lesion (colour variegation: blue-grey /
black / red patches, radial streaks at the border, a more irregular border); benign lesions are smoother and
more uniform but vary in shade, size and tint (some are bluish or reddish, some carry dark dots), so global
colour alone is a weak cue. ``difficulty`` (0 = the original set, 1 = hardest) fades the melanoma cues
(patch and streak contrast, border irregularity) so that the lesion cue stays learnable but is harder to
learn than an artefact.

Artefacts (all outside the lesion, never painted over it), one kind per set chosen by ``artefact``:
``sticker`` (a green square in a corner), ``ruler`` (a dark scale with ticks along an edge), ``ink`` (a
dashed surgical-pen ring around the lesion), ``lens`` (dark lens corners) and ``bubbles`` (gel bubbles with
bright rims). ``spurious=True`` plants that artefact as a shortcut: on a share ``melanoma_rate`` of the
melanomas and ``benign_rate`` of the benign lesions of a split whose condition is ``shortcut``. The
condition of each split (``train``, ``val``, ``test``) is one of

- ``shortcut``: the rates above (the default of ``train``);
- ``balanced``: half of each class (the default of ``val`` and ``test``: the original benchmark);
- ``reversed``: benign lesions only, at ``melanoma_rate``; no melanoma carries it;
- ``absent``: no image carries it (``train: absent`` with ``val: absent`` is the artefact-free control).

``extra_tests`` writes more test splits beside ``test`` (``test_<condition>``, folder tag
``Test_<Condition>``) that show exactly the test split's lesions, with only the artefacts changed, so that
a model is scored on the same lesions under each condition. ``clutter=True`` also draws label-independent
rulers (20 %) and lens corners (30 %) as the original set did (never the shortcut's own kind). Hairs are
part of the skin, not artefacts.

Per image the union of the artefacts planted in it (shortcut and clutter) is written as a 0/255 PNG,
``ISIC-2017_<Tag>_Artefact_GroundTruth/ISIC_<id>_artefact.png`` (all zero when there is none): exactly the
pixels the artefacts changed. The lesion, the artefacts, the clutter and the noise come from separate random
streams, so a lesion looks the same with or without its artefact, and whatever the rates.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

# Extra test splits (same lesions as `test`, other artefacts): their folder tags belong to the reader.
from attnmel.data.readers.generated import CONDITIONS, EXTRA_TEST_TAGS, MARKER
from attnmel.data.readers.isic2017 import ISIC2017_TAGS
from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_json, write_text

TRUTH = "attnmel_synthetic_truth.csv"
# Written in the ISIC 2017 layout, with its first tag per split (Test_v2 for test).
SPLIT_TAGS = {split: tags[0] for split, tags in ISIC2017_TAGS.items()}
SPLIT_SHARES = {"train": 0.6, "val": 0.2, "test": 0.2}
MELANOMA_RATE = 0.35
FIRST_ID = 9_000_000  # above the real ISIC ids, so a synthetic image is recognisable by its id
GRID = 12  # superpixels per side

ARTEFACTS = ("sticker", "ruler", "ink", "lens", "bubbles")
ARTEFACT_DIR = "ISIC-2017_{tag}_Artefact_GroundTruth"
ARTEFACT_SUFFIX = "_artefact.png"

_BROWN = np.array([0.52, 0.33, 0.21], dtype=np.float32)
_MEL_COLOURS = {
    "blue_grey": np.array([0.42, 0.47, 0.60], dtype=np.float32),
    "black": np.array([0.09, 0.07, 0.07], dtype=np.float32),
    "red": np.array([0.68, 0.22, 0.22], dtype=np.float32),
}
_STICKER = np.array([0.15, 0.80, 0.30], dtype=np.float32)
_INK = np.array([0.36, 0.16, 0.52], dtype=np.float32)  # gentian-violet surgical marker
_RULER = np.array([0.05, 0.05, 0.06], dtype=np.float32)


@dataclass(frozen=True)
class Shortcut:
    """Where the artefact goes (``data.synthetic``; see the module doc). Bad values raise one-line errors."""

    artefact: str = "sticker"
    melanoma_rate: float = 0.9
    benign_rate: float = 0.1
    train: str = "shortcut"
    val: str = "balanced"
    test: str = "balanced"
    extra_tests: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        where = "data.synthetic"
        if self.artefact not in ARTEFACTS:
            raise AttnMelError(f"{where}.artefact: unknown artefact kind {self.artefact!r} "
                               f"(known: {', '.join(ARTEFACTS)})")
        for key in ("melanoma_rate", "benign_rate"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise AttnMelError(f"{where}.{key} must be a share in [0, 1], got {v!r}")
        for key in ("train", "val", "test"):
            _check_condition(f"{where}.{key}", getattr(self, key))
        if isinstance(self.extra_tests, (str, bytes)) or not isinstance(self.extra_tests, (list, tuple)):
            raise AttnMelError(f"{where}.extra_tests must be a list of conditions, got {self.extra_tests!r}")
        for c in self.extra_tests:
            _check_condition(f"{where}.extra_tests", c)
        if len(set(self.extra_tests)) != len(self.extra_tests):
            raise AttnMelError(f"{where}.extra_tests lists a condition twice: {list(self.extra_tests)}")
        object.__setattr__(self, "extra_tests", tuple(self.extra_tests))

    def rates(self, condition: str) -> tuple[float, float]:
        """``(benign, melanoma)`` shares carrying the artefact under ``condition``."""
        return {"shortcut": (float(self.benign_rate), float(self.melanoma_rate)), "balanced": (0.5, 0.5),
                "reversed": (float(self.melanoma_rate), 0.0), "absent": (0.0, 0.0)}[condition]

    @property
    def extra_splits(self) -> tuple[str, ...]:
        """The extra test splits this set has: ``test_<condition>``."""
        return tuple(f"test_{c}" for c in self.extra_tests)


def _check_condition(key: str, value: Any) -> None:
    if value not in CONDITIONS:
        raise AttnMelError(f"{key}: unknown condition {value!r} (known: {', '.join(CONDITIONS)})")


GENERATE_KEYS = ("n", "size", "seed", "spurious", "difficulty", "clutter", *tuple(Shortcut.__dataclass_fields__))


def options_from_config(syn: dict[str, Any] | None) -> dict[str, Any]:
    """``generate`` keyword arguments from a ``data.synthetic`` mapping (missing keys: the defaults)."""
    syn = dict(syn or {})
    unknown = sorted(set(syn) - set(GENERATE_KEYS))
    if unknown:
        raise AttnMelError(f"data.synthetic: unknown key(s) {', '.join(unknown)} (known: {', '.join(GENERATE_KEYS)})")
    out: dict[str, Any] = {k: syn[k] for k in ("n", "size", "seed") if syn.get(k) is not None}
    out = {k: int(v) for k, v in out.items()}
    out["spurious"] = bool(syn.get("spurious", False))
    out["difficulty"] = syn.get("difficulty", 0.0) if syn.get("difficulty") is not None else 0.0
    out["clutter"] = bool(syn.get("clutter", True)) if syn.get("clutter") is not None else True
    fields = {k: syn[k] for k in Shortcut.__dataclass_fields__ if syn.get(k) is not None}
    if "extra_tests" in fields and isinstance(fields["extra_tests"], list):
        fields["extra_tests"] = tuple(fields["extra_tests"])
    out["shortcut"] = Shortcut(**fields)
    return out


def extra_test_splits(data_cfg: dict[str, Any]) -> tuple[str, ...]:
    """The extra test splits a config's synthetic set has (none for other datasets)."""
    if data_cfg.get("dataset") != "synthetic":
        return ()
    extra = (data_cfg.get("synthetic") or {}).get("extra_tests") or ()
    return tuple(f"test_{c}" for c in extra)


@dataclass(frozen=True)
class Plan:
    """What one image will show, decided before any pixel is drawn."""

    index: int
    image_id: str
    split: str
    melanoma: bool
    artefact: bool  # carries the shortcut artefact
    lesion: int  # the lesion's random stream: an extra test split redraws the test split's lesions


def _carriers(labels: np.ndarray, rates: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Exactly round(rate x count) carriers per class, drawn with ``rng``."""
    out = np.zeros(labels.size, dtype=bool)
    for cls, rate in ((False, rates[0]), (True, rates[1])):
        idx = np.flatnonzero(labels == cls)
        out[rng.permutation(idx)[: int(np.floor(idx.size * rate + 0.5))]] = True
    return out


def plan(n: int, seed: int, spurious: bool, shortcut: Shortcut | None = None) -> list[Plan]:
    """Split, label and artefact of every image: exact counts per split, shuffled with the seed.

    Labels and lesions do not depend on the artefact settings (their own random streams), so the
    artefact-free control and the shortcut set of one seed show the same lesions.
    """
    shortcut = shortcut or Shortcut()
    rng = np.random.default_rng([seed, 0x5EED])
    sizes = {"train": int(round(n * SPLIT_SHARES["train"])), "val": int(round(n * SPLIT_SHARES["val"]))}
    sizes["test"] = n - sizes["train"] - sizes["val"]
    plans: list[Plan] = []
    for k, split in enumerate(("train", "val", "test")):
        m = sizes[split]
        n_mel = min(m - 1, max(1, int(np.floor(m * MELANOMA_RATE + 0.5))))
        labels = np.zeros(m, dtype=bool)
        labels[:n_mel] = True
        labels = labels[rng.permutation(m)]
        carriers = _carriers(labels, shortcut.rates(getattr(shortcut, split)) if spurious else (0.0, 0.0),
                             np.random.default_rng([seed, 0xA47E, k]))
        for lab, art in zip(labels, carriers):
            i = len(plans)
            plans.append(Plan(i, f"ISIC_{FIRST_ID + i:07d}", split, bool(lab), bool(art), i))
    test = [p for p in plans if p.split == "test"]
    labels = np.array([p.melanoma for p in test])
    for cond in shortcut.extra_tests:
        rates = shortcut.rates(cond) if spurious else (0.0, 0.0)
        carriers = _carriers(labels, rates, np.random.default_rng([seed, 0xA47E, 10 + CONDITIONS.index(cond)]))
        for p, art in zip(test, carriers):
            i = len(plans)
            plans.append(Plan(i, f"ISIC_{FIRST_ID + i:07d}", f"test_{cond}", p.melanoma, bool(art), p.lesion))
    return plans


# -- drawing: skin and lesion ----------------------------------------------------------------------

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


def _lesion_shape(rng: np.random.Generator, s: int, melanoma: bool, yy: np.ndarray, xx: np.ndarray,
                  irregularity: float):
    """Radial-harmonic blob: mask, distance to centre, border radius at each pixel's angle, angle."""
    r0 = s * rng.uniform(0.15, 0.27)
    kmax = 10 if melanoma else 5
    amp = irregularity  # 0.22 (melanoma) / 0.07 (benign) in the original set
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


def _skin(rng: np.random.Generator, s: int) -> np.ndarray:
    """Skin: tone and mottling (H x W x 3 float)."""
    red = rng.uniform(0.72, 0.95)
    skin = np.array([red, red * rng.uniform(0.66, 0.80), 0.0], dtype=np.float32)
    skin[2] = skin[1] * rng.uniform(0.78, 0.92)
    mottle = 1 + 0.08 * (_smooth_noise(rng, s, 5) - 0.5)
    return skin[None, None, :] * mottle[..., None]


def _lesion_base(rng: np.random.Generator, s: int, melanoma: bool, rel: np.ndarray) -> np.ndarray:
    """The lesion's base colour: brown of any shade (benign: some bluish or reddish), darker centre for some."""
    tint = _BROWN * np.float32(rng.uniform(0.55, 1.25)) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    if not melanoma:
        kind = rng.random()
        if kind < 0.12:  # blue nevus: uniformly bluish, benign
            tint = 0.5 * tint + 0.5 * _MEL_COLOURS["blue_grey"] * np.float32(rng.uniform(0.8, 1.1))
        elif kind < 0.22:  # reddish (angioma-like), benign
            tint = 0.6 * tint + 0.4 * _MEL_COLOURS["red"]
    centre_dark = np.float32(rng.uniform(0.0, 0.3))
    lesion = tint[None, None, :] * (1 - centre_dark * (1 - rel))[..., None]
    return lesion * (1 + 0.10 * (_smooth_noise(rng, s, 8) - 0.5))[..., None]


def _melanoma_cues(rng: np.random.Generator, s: int, lesion: np.ndarray, mask: np.ndarray, rel: np.ndarray,
                   theta: np.ndarray, difficulty: float) -> dict[str, np.ndarray]:
    """Colour variegation and (most) radial streaks, painted into ``lesion``; their areas by feature.

    ``difficulty`` fades both towards the lesion's own colour (contrast 1 - 0.75 x difficulty).
    """
    contrast = np.float32(1.0 - 0.75 * difficulty)
    weak = rng.random() < 0.15
    names = list(_MEL_COLOURS)
    chosen = [names[i] for i in rng.permutation(3)[: 1 if weak else int(rng.integers(2, 4))]]
    varieg = np.zeros((s, s), dtype=bool)
    w = np.float32(0.85) * contrast
    for name in chosen:
        area = _patches(rng, s, mask, rng.uniform(0.08, 0.14) if weak else rng.uniform(0.15, 0.3),
                        int(rng.integers(3, 6)))
        lesion[area] = (1 - w) * lesion[area] + w * _MEL_COLOURS[name]
        varieg |= area
    features = {"pigment_network": varieg}
    if not weak:  # radial streaks along part of the border
        n_streaks = int(rng.integers(10, 22))
        sector = np.cos(theta - rng.uniform(0, 2 * np.pi)) > rng.uniform(-0.5, 0.3)
        streaks = mask & sector & (rel > 0.62) & (np.cos(n_streaks * theta) > 0.55)
        lesion[streaks] = lesion[streaks] * (1 - 0.65 * contrast)
        features["streaks"] = streaks
    return features


def _benign_cues(rng: np.random.Generator, s: int, lesion: np.ndarray, mask: np.ndarray, rel: np.ndarray,
                 yy: np.ndarray, xx: np.ndarray) -> dict[str, np.ndarray]:
    """A regular network in the core and, for some, a few dark dots (benign, but dark like melanoma patches)."""
    core = mask & (rel < rng.uniform(0.5, 0.75))
    network = core & ((np.sin(yy * 1.7) * np.sin(xx * 1.7)) > 0.3)
    lesion[network] *= 0.85
    if rng.random() < 0.25:
        for _ in range(int(rng.integers(1, 4))):
            ys, xs = np.nonzero(mask & (rel < 0.7))
            if ys.size:
                j = int(rng.integers(ys.size))
                dot = mask & (np.hypot(yy - yy[ys[j], xs[j]], xx - xx[ys[j], xs[j]]) < max(1.0, s / 48))
                lesion[dot] *= 0.45
    return {"pigment_network": core}


def _render_lesion(rng: np.random.Generator, s: int, melanoma: bool, difficulty: float
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Skin with one lesion under an off-centre light: image (float), lesion mask, feature areas."""
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5)
    img = _skin(rng, s)
    irregularity = (0.22 - 0.12 * difficulty) if melanoma else 0.07
    mask, dist, radius, theta = _lesion_shape(rng, s, melanoma, yy, xx, irregularity)
    rel = np.where(mask, dist / radius, 1.0).astype(np.float32)  # 0 at the centre, 1 at the border
    lesion = _lesion_base(rng, s, melanoma, rel)
    if melanoma:
        features = _melanoma_cues(rng, s, lesion, mask, rel, theta, difficulty)
    else:
        features = _benign_cues(rng, s, lesion, mask, rel, yy, xx)
    # blend inside the mask only (the mask stays exact), fading slightly towards the border
    alpha = np.where(mask, 0.75 + 0.25 * np.clip((1 - rel) / 0.25, 0, 1), 0).astype(np.float32)
    img = img * (1 - alpha[..., None]) + lesion * alpha[..., None]
    cy, cx = s / 2 + rng.uniform(-0.15, 0.15, 2) * s
    fall = np.hypot(yy - cy, xx - cx) / (0.75 * s)
    img *= (1 - rng.uniform(0.1, 0.35) * fall**2)[..., None]
    return img, mask, features


# -- drawing: artefacts ----------------------------------------------------------------------------
# Each painter changes the pixels of the region it returns, and only those, and never the lesion's.

def _paint(img: np.ndarray, region: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    img[region] = (1 - alpha) * img[region] + alpha * colour
    return region


def _sticker(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A green square in a corner the lesion does not reach."""
    s = mask.shape[0]
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
    region &= ~mask
    img[region] = _STICKER * np.float32(rng.uniform(0.9, 1.1))
    return region


def _ruler(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A dark scale with tick marks (every fifth long) along the top or bottom edge."""
    s = mask.shape[0]
    y = int(round(s * rng.uniform(0.04, 0.08)))
    tick = max(2, s // 32)
    step = max(3, s // 14)
    band = np.zeros((s, s), dtype=bool)
    band[y, :] = True
    for j, x in enumerate(range(int(rng.integers(0, step)), s, step)):
        band[y:y + (2 * tick if j % 5 == 0 else tick) + 1, x] = True
    if rng.random() < 0.5:
        band = band[::-1]
    return _paint(img, band & ~mask, _RULER, 0.85)


def _ink(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A dashed violet surgical-pen ring around the lesion, a few pixels outside its border."""
    s = mask.shape[0]
    ys, xs = np.nonzero(mask)
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5)
    cy, cx = (ys.mean() + 0.5, xs.mean() + 0.5) if ys.size else (s / 2, s / 2)
    reach = float(np.hypot(ys + 0.5 - cy, xs + 0.5 - cx).max()) if ys.size else s / 4
    r = reach + s * rng.uniform(0.05, 0.09)
    width = max(1.5, s / 40)
    d = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)
    dashes = np.cos(int(rng.integers(6, 11)) * theta + rng.uniform(0, 2 * np.pi)) > -0.3
    ring = (np.abs(d - r) <= width / 2) & dashes & ~_grow(mask, 2)
    return _paint(img, ring, _INK * np.float32(rng.uniform(0.85, 1.15)), 0.85)


def _lens(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Dark lens corners: everything outside a centred circle that clears the lesion, hard-edged."""
    s = mask.shape[0]
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5)
    d = np.hypot(yy - s / 2, xx - s / 2)
    clear = float(d[mask].max()) + 0.1 * s if mask.any() else 0.0  # keeps the lesion border sharp
    lens = d / min(max(s * rng.uniform(0.6, 0.68), clear), 0.68 * s)  # corners always show (0.707 s)
    region = (lens > 1) & ~mask
    shade = (0.55 + 0.4 * np.clip((lens - 1) * 6, 0, 1)).astype(np.float32)
    img[region] *= (1 - shade[region])[:, None]
    return region


def _bubbles(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Three to six gel bubbles off the lesion: a bright rim round a faintly brightened disc."""
    s = mask.shape[0]
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5)
    keep_off = _grow(mask, 2)
    region = np.zeros_like(mask)
    for _ in range(int(rng.integers(3, 7))):
        rad = s * rng.uniform(0.03, 0.06)
        for _try in range(20):  # a spot off the lesion
            cy, cx = rng.uniform(rad, s - rad, 2)
            disc = np.hypot(yy - cy, xx - cx) <= rad
            if not (disc & keep_off).any() and not (disc & region).any():
                break
        else:
            continue
        rim = disc & (np.hypot(yy - cy, xx - cx) > rad - max(1.0, s / 64))
        _paint(img, disc & ~rim, np.float32(0.97), 0.3)
        _paint(img, rim, np.float32(0.98), 0.75)
        region |= disc
    return region


def _grow(mask: np.ndarray, k: int) -> np.ndarray:
    """``mask`` dilated by ``k`` pixels (4-neighbourhood)."""
    out = mask.copy()
    for _ in range(k):
        p = np.pad(out, 1)
        out = out | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return out


PAINTERS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]] = {
    "sticker": _sticker, "ruler": _ruler, "ink": _ink, "lens": _lens, "bubbles": _bubbles}
CLUTTER = (("ruler", 0.2), ("lens", 0.3))  # label-independent, as in the original set


def _artefacts(p: Plan, seed: int, img: np.ndarray, mask: np.ndarray, kind: str, clutter: bool) -> np.ndarray:
    """Paint the clutter (its own stream) and, if planned, the shortcut artefact; return their union."""
    planted = np.zeros_like(mask)
    crng = np.random.default_rng([seed, p.lesion, 0xC1])
    for name, share in CLUTTER:
        if crng.random() < share and clutter and name != kind:
            planted |= PAINTERS[name](crng, img, mask)
    if p.artefact:
        planted |= PAINTERS[kind](np.random.default_rng([seed, p.lesion, 0xA7]), img, mask)
    return planted


def draw(p: Plan, size: int, seed: int, artefact: str = "sticker", difficulty: float = 0.0,
         clutter: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """One image (uint8 H x W x 3), its lesion mask, dermoscopic-feature areas and artefact mask (bool)."""
    rng = np.random.default_rng([seed, p.lesion])
    img, mask, features = _render_lesion(rng, size, p.melanoma, float(difficulty))
    if rng.random() < 0.5:
        _draw_hairs(rng, img, size)
    noise = rng.normal(0, 0.01, img.shape).astype(np.float32)  # drawn before the artefacts: same either way
    planted = _artefacts(p, seed, img, mask, artefact, clutter)
    out = np.clip((img + noise) * 255 + 0.5, 0, 255).astype(np.uint8)
    return out, mask, features, planted


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


def _split_dirs(out: Path, tag: str) -> tuple[Path, Path, Path, Path]:
    """Image, lesion-mask, Part 2 and artefact-mask folders of one split (created)."""
    dirs = (out / f"ISIC-2017_{tag}_Data", out / f"ISIC-2017_{tag}_Part1_GroundTruth",
            out / f"ISIC-2017_{tag}_Part2_GroundTruth", out / ARTEFACT_DIR.format(tag=tag))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _write_labels(out: Path, tags: dict[str, str], plans: list[Plan]) -> None:
    """Per split the metadata and Part 3 CSVs, then the truth table (what each image carries)."""
    for split, tag in tags.items():
        rows = [p for p in plans if p.split == split]
        meta = "image_id,age_approximate,sex\n" + "".join(f"{p.image_id},NA,unknown\n" for p in rows)
        write_text(out / f"ISIC-2017_{tag}_Data" / f"ISIC-2017_{tag}_Data_metadata.csv", meta)
        write_text(out / f"ISIC-2017_{tag}_Part3_GroundTruth.csv",
                   "image_id,melanoma,seborrheic_keratosis\n"
                   + "".join(f"{p.image_id},{float(p.melanoma)},0.0\n" for p in rows))
    write_text(out / TRUTH, "image_id,split,melanoma,artefact,lesion\n"
               + "".join(f"{p.image_id},{p.split},{int(p.melanoma)},{int(p.artefact)},"
                         f"ISIC_{FIRST_ID + p.lesion:07d}\n" for p in plans))


def _check_numbers(n: int, size: int, difficulty: float) -> None:
    if n < 10:
        raise AttnMelError(f"synthetic n must be at least 10 (every split needs both classes), got {n}")
    if size < 32:
        raise AttnMelError(f"synthetic size must be at least 32 px, got {size}")
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) or not 0 <= difficulty <= 1:
        raise AttnMelError(f"data.synthetic.difficulty must be in [0, 1], got {difficulty!r}")


def generate(out: Path, n: int = 600, size: int = 96, seed: int = 0, spurious: bool = False,
             progress: bool = True, *, shortcut: Shortcut | None = None, difficulty: float = 0.0,
             clutter: bool = True) -> Path:
    """Write ``n`` synthetic lesions of ``size`` px into ``out`` in the ISIC 2017 layout; return ``out``.

    ``spurious`` plants ``shortcut.artefact`` as the module doc describes; ``shortcut.extra_tests`` adds
    the extra test splits.
    """
    _check_numbers(n, size, difficulty)
    shortcut = shortcut or Shortcut()
    out = Path(out).expanduser()
    _prepare(out)
    params = {"n": n, "size": size, "seed": seed, "spurious": spurious, "difficulty": float(difficulty),
              "clutter": bool(clutter), **{k: (list(v) if isinstance(v, tuple) else v)
                                           for k, v in asdict(shortcut).items()}}
    write_json(out / MARKER, {"complete": False, **params})

    plans = plan(n, seed, spurious, shortcut)
    tags = {**SPLIT_TAGS, **{s: EXTRA_TEST_TAGS[s] for s in shortcut.extra_splits}}
    dirs = {split: _split_dirs(out, tag) for split, tag in tags.items()}
    sp = superpixels(size)
    sp_png = _encode_superpixels(sp)
    names = ("pigment_network", "negative_network", "streaks", "milia_like_cyst")
    empty = [0] * (int(sp.max()) + 1)

    def write_one(p: Plan) -> None:
        image, mask, feats, planted = draw(p, size, seed, shortcut.artefact, difficulty, clutter)
        data_dir, mask_dir, dermo_dir, art_dir = dirs[p.split]
        Image.fromarray(image).save(data_dir / f"{p.image_id}.jpg", quality=95, subsampling=0)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{p.image_id}_segmentation.png")
        Image.fromarray(planted.astype(np.uint8) * 255).save(art_dir / f"{p.image_id}{ARTEFACT_SUFFIX}")
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
    _write_labels(out, tags, plans)
    write_json(out / MARKER, {"complete": True, **params})
    return out
