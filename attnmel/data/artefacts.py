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
from typing import Iterable

import numpy as np

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
