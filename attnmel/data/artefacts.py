"""Real artefact annotations as data: per-image flags (``data.artefact_flags``) and pixel masks
(``data.artefact_masks``) of dermoscopy artefacts (rulers, ink, hair, coloured patches, ...).

Flags come as a CSV (``image_id`` or ``image`` plus one 0/1 column per artefact; Bissoto et al. 2020's
``isic_bias.csv`` read as published: ``;``-separated, an unnamed index column, ids written ``ISIC_xxxxxxx.png``,
its ``label`` columns left out) or as Reveal-to-Revise's JSON (``{artefact: [ids]}``, ids with
``_downsampled``; an image in no list has the flag 0). Masks are ``<image_id>.png`` or
``<image_id>_<suffix>.png`` in a folder, any non-black pixel an artefact (Reveal-to-Revise's band-aid masks
read as they are: RGB, drawn on the image squeezed to a square, so they are resized to the image).
Ids are compared without an extension and without ``_downsampled``. Nothing is written beside these files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from attnmel.data.readers._common import match_id
from attnmel.errors import file_error

ID_COLUMNS = ("image_id", "image", "image_name", "isic_id", "name")
# Columns of published flag files that are not artefacts (labels, indices, splits).
NOT_FLAGS = frozenset({"", "index", "unnamed: 0", "label", "label_string", "melanoma", "target", "diagnosis", "dx",
                       "benign_malignant", "split", "year", "patient_id", "lesion_id"})
_SUFFIXES = re.compile(r"(_downsampled)?(\.(png|jpe?g|bmp))?$", re.IGNORECASE)


def normalise_id(raw: str) -> str:
    """``ISIC_0000001.png`` / ``ISIC_0000001_downsampled`` -> ``ISIC_0000001``."""
    return _SUFFIXES.sub("", raw.strip())


@dataclass
class ArtefactFlags:
    """0/1 flags per image and artefact. ``complete``: an image the file does not list has every flag 0 (a
    JSON of id lists); otherwise it is not covered (a CSV lists the images it annotated)."""

    path: Path
    names: list[str]
    flags: dict[str, dict[str, int]]
    complete: bool = False

    def row(self, image_id: str) -> dict[str, int] | None:
        """The flags of one image, or None where the file does not cover it."""
        hit = self.flags.get(normalise_id(image_id))
        if hit is None and self.complete:
            return dict.fromkeys(self.names, 0)
        return hit

    def matrix(self, image_ids: Iterable[str]) -> np.ndarray:
        """(N, A) float array of flags, NaN where an image is not covered."""
        rows = [self.row(i) for i in image_ids]
        return np.array([[np.nan] * len(self.names) if r is None else [r[a] for a in self.names] for r in rows],
                        dtype=np.float64).reshape(len(rows), len(self.names))


def read_flags(path: str | Path, image_ids: Iterable[str] | None = None) -> ArtefactFlags:
    """Read a flags file (CSV or Reveal-to-Revise JSON); with ``image_ids``, none of the file's ids matching
    any of them is a one-line error ("0 of N ids matched") naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise file_error(path, "artefact flags file not found")
    flags = _read_json(path) if path.suffix.lower() == ".json" else _read_csv(path)
    if image_ids is not None:
        wanted = {normalise_id(i) for i in image_ids}
        if not wanted & flags.flags.keys():
            raise file_error(path, f"0 of {len(flags.flags)} ids matched an image of the dataset "
                                   f"(e.g. {next(iter(flags.flags), '-')} against {next(iter(wanted), '-')})")
    return flags


def _read_csv(path: Path) -> ArtefactFlags:
    text_first = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()[:1]
    first = text_first[0] if text_first else ""
    delim = max((";", ",", "\t"), key=first.count)
    rows = _split_rows(path, delim)
    header = [c.strip().lower() for c in rows[0][1]]
    id_col = next((header.index(c) for c in ID_COLUMNS if c in header), None)
    if id_col is None:
        raise file_error(path, f"no id column ({', '.join(ID_COLUMNS[:3])}) in the header ({', '.join(header)})")
    cols = [(j, h) for j, h in enumerate(header) if j != id_col and h not in NOT_FLAGS]
    if not cols:
        raise file_error(path, "no artefact columns beside the id column")
    flags: dict[str, dict[str, int]] = {}
    for lineno, fields in rows[1:]:
        fields = fields + [""] * (len(header) - len(fields))
        key = normalise_id(fields[id_col])
        if not key:
            raise file_error(path, f"line {lineno}: empty {header[id_col]}")
        if key in flags:
            raise file_error(path, f"line {lineno}: duplicate id {key}")
        flags[key] = {h: _flag(path, lineno, h, fields[j]) for j, h in cols}
    return ArtefactFlags(path, [h for _, h in cols], flags)


def _split_rows(path: Path, delim: str) -> list[tuple[int, list[str]]]:
    import csv

    out = []
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    for lineno, fields in enumerate(csv.reader(text.splitlines(), delimiter=delim), start=1):
        if fields and any(f.strip() for f in fields):
            out.append((lineno, [f.strip() for f in fields]))
    if len(out) < 2:
        raise file_error(path, "no rows under the header")
    return out


def _flag(path: Path, lineno: int, column: str, value: str) -> int:
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if v not in (0.0, 1.0):
        raise file_error(path, f"line {lineno}: column {column}: flag {value!r} is not 0 or 1")
    return int(v)


def _read_json(path: Path) -> ArtefactFlags:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise file_error(path, f"not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise file_error(path, "expected a JSON object of artefact name -> list of image ids")
    names = list(data)
    flags: dict[str, dict[str, int]] = {}
    for name, ids in data.items():
        for raw in ids:
            flags.setdefault(normalise_id(str(raw)), dict.fromkeys(names, 0))[name] = 1
    return ArtefactFlags(path, names, flags, complete=True)


def list_artefact_masks(folder: str | Path, image_ids: Iterable[str] | None = None,
                        require: bool = True) -> dict[str, Path]:
    """Artefact masks by image id: ``<id>.png`` or ``<id>_<suffix>.png`` (``_downsampled`` dropped first).
    With ``image_ids``, masks of other images are left out, and (``require``) none matching is a one-line
    error."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise file_error(folder, "artefact mask folder not found")
    wanted = {normalise_id(i) for i in image_ids} if image_ids is not None else None
    out: dict[str, Path] = {}
    names = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(".png"))
    for name in names:
        stem = normalise_id(name)
        key = stem if wanted is None else match_id(stem, wanted)
        if key is not None:
            out.setdefault(key, folder / name)
    if wanted is not None and not out and require:
        raise file_error(folder, f"0 of {len(names)} masks matched an image of the dataset")
    return out


def load_artefact_mask(path: str | Path, hw: tuple[int, int]) -> np.ndarray:
    """A boolean (H, W) artefact mask: any non-black pixel, resized (nearest) to the image's ``hw``."""
    from PIL import Image

    from attnmel.data.images import _open

    with _open(Path(path)) as im:
        arr = np.asarray(im.convert("RGB"))
    mask = arr.max(axis=2) > 0
    if mask.shape != tuple(hw):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.NEAREST)) > 0
    return mask


def counts_by(flags: ArtefactFlags, samples: Iterable, class_names: list[str]) -> dict:
    """``{class name: {"n", "covered", artefact: count}}`` over ``samples`` (the correlation a model could learn)."""
    out = {c: {"n": 0, "covered": 0, **dict.fromkeys(flags.names, 0)} for c in class_names}
    for s in samples:
        row = flags.row(s.image_id)
        c = out[class_names[s.label]]
        c["n"] += 1
        if row is not None:
            c["covered"] += 1
            for a in flags.names:
                c[a] += row[a]
    return out


# -- cut-outs: real artefacts cut from their images and pasted onto others (counterfactuals, augmentation) --
# Where no lesion mask exists, this centred disk (radius as a share of the side) stands for the lesion: ISIC
# images are centred on it.
CENTRE_RADIUS = 0.3


@dataclass
class Cutout:
    """An artefact's pixels (3, h, w), normalised like the network's input, and its mask (h, w) bool."""

    pixels: torch.Tensor
    mask: torch.Tensor
    source: str  # the image it was cut from


def cutout(image: torch.Tensor, mask: np.ndarray | torch.Tensor, source: str) -> Cutout | None:
    """The bounding box of ``mask`` cut from ``image`` (3, H, W); None where the mask is empty."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
    if not m.any():
        return None
    ys, xs = torch.nonzero(m, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return Cutout(image[:, y0:y1, x0:x1].clone(), m[y0:y1, x0:x1].clone(), source)


def centre_disk(h: int, w: int, radius: float = CENTRE_RADIUS) -> torch.Tensor:
    """A centred disk (h, w) bool: the stand-in lesion where an image has no mask."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= (radius * min(h, w)) ** 2


def paste(image: torch.Tensor, lesion: torch.Tensor, cut: Cutout, rng: np.random.Generator,
          tries: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` (3, H, W) with ``cut`` pasted at a random place outside ``lesion`` (H, W) bool, and the mask of
    the pixels that changed: the cut-out's mask, less any lesion pixel (a place clear of the lesion is tried
    ``tries`` times, then the least overlapping one is used)."""
    _, H, W = image.shape
    pm = cut.mask
    h, w = min(pm.shape[0], H), min(pm.shape[1], W)
    pm, px = pm[:h, :w], cut.pixels[:, :h, :w]
    best, best_overlap = (0, 0), None
    for _ in range(tries):
        y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        overlap = int((pm & lesion[y:y + h, x:x + w]).sum())
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = (y, x), overlap
        if overlap == 0:
            break
    y, x = best
    changed = torch.zeros(H, W, dtype=torch.bool)
    changed[y:y + h, x:x + w] = pm & ~lesion[y:y + h, x:x + w]
    out = image.clone()
    region = out[:, y:y + h, x:x + w]
    keep = changed[y:y + h, x:x + w]
    region[:, keep] = px[:, keep]
    return out, changed


def network_mask(path: str | Path, image_path: str | Path, spec: Any, image_size: int) -> np.ndarray:
    """An artefact mask of an original image through the eval geometry (base crop + resize, centre
    ``image_size`` crop): bool (S, S), aligned with the network's input of that image."""
    from attnmel.data.images import image_size as size_of
    from attnmel.data.transforms import base_mask

    w, h = size_of(image_path)
    base = base_mask(load_artefact_mask(path, (h, w)), (w, h), spec)
    off = int(round((base.shape[0] - image_size) / 2.0))
    return base[off:off + image_size, off:off + image_size] > 0


class ArtefactPaster:
    """Artefact augmentation (``data.artefact_augment``): with probability ``share`` a training image gets one
    real artefact cut-out pasted at a random place outside its lesion (the batch's mask, or the centred disk),
    on both classes alike, so that the artefact stops predicting the label."""

    def __init__(self, cuts: list[Cutout], share: float) -> None:
        self.cuts, self.share = list(cuts), float(share)

    def __call__(self, image: torch.Tensor, lesion: torch.Tensor | None,
                 generator: torch.Generator | None) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        if not self.cuts or rng.random() >= self.share:
            return image
        if lesion is None:
            lesion = centre_disk(image.shape[-2], image.shape[-1])
        cut = self.cuts[int(rng.integers(0, len(self.cuts)))]
        return paste(image, lesion, cut, rng)[0]
