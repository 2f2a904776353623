"""What every reader does the same way: find folders, list files by id, parse CSVs, assemble samples.

Files are always matched by id (the file name's stem), never by position in a listing.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from attnmel.data.samples import DatasetIndex, Sample
from attnmel.errors import AttnMelError, file_error

log = logging.getLogger("attnmel.data")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
# Files that sit beside the images in the official folders but are not images of the split.
_NOT_AN_IMAGE = re.compile(r"_(superpixels|segmentation|features)$", re.IGNORECASE)

# Reasons recorded in DatasetIndex.skipped start with one of these (``check`` counts by them).
NO_IMAGE = "label without image"
NO_LABEL = "image without label"
UNREADABLE = "unreadable"

BINARY_CLASSES = ["other", "melanoma"]
# The seven HAM10000 / ISIC 2018 Task 3 diagnoses, in the order of the official one-hot columns.
CLASSES_7 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
# The folder tag of each split in the ISIC challenge layouts (ISIC 2017 tests also as Test_v2).
SPLIT_TAGS = {"train": "Training", "val": "Validation", "test": "Test"}


def check_root(root: str | Path) -> Path:
    """The dataset root as a Path; a missing, non-folder or empty root is a one-line error."""
    root = Path(root).expanduser()
    if not root.exists():
        raise file_error(root, "dataset folder not found")
    if not root.is_dir():
        raise file_error(root, "not a folder (give the folder the dataset was unzipped into)")
    try:
        empty = not any(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise file_error(root, f"cannot list the folder ({e.strerror})") from None
    if empty:
        raise file_error(root, "dataset folder is empty")
    return root


def describe(root: Path, limit: int = 6) -> str:
    """' (it holds: a, b, ...)': helps a user see they pointed at the wrong folder."""
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return f" (it holds: {', '.join(names[:limit])}{more})"


def missing_folder(root: Path, name: str, split: str, prefix: str, layout: str) -> AttnMelError:
    """The error for a split folder that is not there; says "wrong layout?" only when nothing fits."""
    hint = "" if any(p.name.startswith(prefix) for p in root.iterdir()) else f" (not the {layout} layout?)"
    return file_error(root, f"no {name} folder for the {split} split{hint}{describe(root)}")


def find_dir(root: Path, names: Iterable[str]) -> Path | None:
    """The first sub-folder of ``root`` named one of ``names`` (case-insensitive).

    A zip extracted into a folder of its own name gives ``X/X/``: the inner one is used when the outer
    one holds no images of its own.
    """
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for name in names:
        p = children.get(name.lower())
        if p is None:
            continue
        nested = p / p.name
        if nested.is_dir() and not any(f.suffix.lower() in IMAGE_EXTS for f in p.iterdir() if f.is_file()):
            return nested
        return p
    return None


def find_file(root: Path, names: Iterable[str]) -> Path | None:
    """The first file in ``root`` named one of ``names`` (case-insensitive)."""
    children = {p.name.lower(): p for p in root.iterdir() if p.is_file()}
    for name in names:
        p = children.get(name.lower())
        if p is not None:
            return p
    return None


def list_images(folder: Path, into: dict[str, Path] | None = None) -> dict[str, Path]:
    """Images in ``folder`` by id (file stem); superpixel maps, masks, CSVs and hidden files are skipped.

    Two files with one id (``ISIC_1.jpg`` and ``ISIC_1.png``, or the same id in two image folders) is an
    error: which one is meant cannot be guessed.
    """
    out: dict[str, Path] = {} if into is None else into
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            if name.startswith(".") or not entry.is_file():
                continue
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTS or _NOT_AN_IMAGE.search(stem):
                continue
            if stem in out:
                raise file_error(Path(entry.path), f"a second image for id {stem} (also {out[stem]})")
            out[stem] = Path(entry.path)
    return out


def list_suffixed(folder: Path | None, suffix: str, ext: str) -> dict[str, Path]:
    """Files ``<id><suffix><ext>`` in ``folder`` by id, suffix and extension matched case-insensitively."""
    if folder is None:
        return {}
    pattern = re.compile(rf"^(?P<id>.+){re.escape(suffix)}{re.escape(ext)}$", re.IGNORECASE)
    out: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            m = pattern.match(entry.name)
            if m is None:
                continue
            key = m.group("id")
            if key in out:
                raise file_error(Path(entry.path), f"a second file for id {key} (also {out[key].name})")
            out[key] = Path(entry.path)
    return out


def match_id(stem: str, ids: set[str]) -> str | None:
    """The id a file ``<id>`` or ``<id>_<suffix>`` belongs to (the longest id that fits), or None."""
    if stem in ids:
        return stem
    cut = len(stem)
    while (cut := stem.rfind("_", 0, cut)) > 0:
        if stem[:cut] in ids:
            return stem[:cut]
    return None


@dataclass
class CsvTable:
    """Rows of a CSV as dicts, with the 1-based line number of each row for error messages."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise file_error(path, "file not found")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        try:
            return path.read_text(encoding="latin-1")
        except OSError as e:  # pragma: no cover - permissions
            raise file_error(path, f"cannot read ({e.strerror})") from None
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror})") from None


def sniff_delimiter(first_line: str) -> str:
    """Tab or comma: the HAM10000 metadata ships both ways."""
    return "\t" if first_line.count("\t") > first_line.count(",") else ","


def read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank rows of a header-less or headed CSV (tab or comma), fields stripped, with line numbers."""
    text = _read_text(path)
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if not first:
        raise file_error(path, "file is empty")
    delim = sniff_delimiter(first)
    rows: list[tuple[int, list[str]]] = []
    try:
        for lineno, fields in enumerate(csv.reader(lines, delimiter=delim), start=1):
            if not fields or all(not f.strip() for f in fields):
                continue
            rows.append((lineno, [f.strip() for f in fields]))
    except csv.Error as e:
        raise file_error(path, f"not a valid CSV ({e})") from None
    return rows


def read_table(path: Path, required: Iterable[str]) -> CsvTable:
    """A CSV with a header row; a missing required column is an error that lists what is there."""
    rows = read_rows(path)
    _, header = rows[0]
    columns = [c.strip().lower() for c in header]
    missing = [c for c in required if c not in columns]
    if missing:
        raise file_error(path, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                               f"(header: {', '.join(header) or 'empty'})")
    out = []
    for lineno, fields in rows[1:]:
        if len(fields) < len(columns):
            fields = fields + [""] * (len(columns) - len(fields))
        out.append((lineno, dict(zip(columns, fields))))
    if not out:
        raise file_error(path, "no rows under the header")
    return CsvTable(path, columns, out)


def unique_ids(table_path: Path, ids: Iterable[tuple[int, str]]) -> None:
    """Error on an empty or a repeated id (which row would be the label?)."""
    seen: dict[str, int] = {}
    for lineno, key in ids:
        if not key:
            raise file_error(table_path, f"line {lineno}: empty id")
        if key in seen:
            raise file_error(table_path, f"line {lineno}: duplicate id {key} (first on line {seen[key]})")
        seen[key] = lineno


def binary_value(path: Path, lineno: int, column: str, value: str) -> int:
    """Parse a 0/1 label cell (``0``, ``1``, ``0.0``, ``1.0``)."""
    try:
        v = float(value)
    except ValueError:
        raise file_error(path, f"line {lineno}: {column} value {value!r} is not 0 or 1") from None
    if v not in (0.0, 1.0):
        raise file_error(path, f"line {lineno}: {column} value {value!r} is not 0 or 1")
    return int(v)


def check_num_classes(dataset: str, num_classes: int, allowed: tuple[int, ...]) -> None:
    """One line when ``num_classes`` is not a count ``dataset`` supports (its registered ``num_classes``)."""
    if num_classes not in allowed:
        raise AttnMelError(f"{dataset}: num_classes {num_classes} is not available "
                           f"(choose {' or '.join(map(str, allowed))})")


def _examples(ids: list[str], k: int = 3) -> str:
    more = ", ..." if len(ids) > k else ""
    return ", ".join(ids[:k]) + more


def assemble(dataset: str, split: str, class_names: list[str], labels: Mapping[str, int],
             images: Mapping[str, Path], label_file: Path, image_dir: Path,
             masks: Mapping[str, Path] | None = None, dermo: Mapping[str, tuple[Path, Path]] | None = None,
             groups: Mapping[str, str] | None = None, unlabelled: Iterable[str] = (),
             artefacts: Mapping[str, Path] | None = None) -> DatasetIndex:
    """Join labels, images and masks by id into a :class:`DatasetIndex`, sorted by id.

    A labelled id without an image and an image without a label (``unlabelled``: the caller decides which
    images belong to this split) are skipped with one summary warning each, never shifted into place.
    """
    masks, dermo, groups, artefacts = masks or {}, dermo or {}, groups or {}, artefacts or {}
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    no_image: list[str] = []
    for key in sorted(labels):
        path = images.get(key)
        if path is None:
            no_image.append(key)
            skipped.append((key, f"{NO_IMAGE}: listed in {label_file.name}, no image in {image_dir.name}/"))
            continue
        samples.append(Sample(key, path, int(labels[key]), masks.get(key), dermo.get(key), groups.get(key),
                              artefacts.get(key)))
    if no_image:
        log.warning("%s: %d labelled image(s) of the %s split not found in %s (%s); skipped",
                    label_file, len(no_image), split, image_dir, _examples(no_image))
    no_label = sorted(unlabelled)
    if no_label:
        for key in no_label:
            skipped.append((str(images[key]), f"{NO_LABEL}: not listed in {label_file.name}"))
        log.warning("%s: %d image(s) have no label in %s (%s); skipped",
                    image_dir, len(no_label), label_file.name, _examples(no_label))
    if not samples:
        raise file_error(image_dir, f"no labelled images for the {split} split (labels from {label_file.name})")
    return DatasetIndex(dataset=dataset, split=split, samples=samples, class_names=list(class_names),
                        skipped=skipped)


def labels_or_unlabelled(csv_path: Path | None, expected: Path, split: str, images: Mapping[str, Path],
                         read_labels: Callable[[Path], dict[str, int]], labels_optional: bool,
                         data_dir: Path) -> tuple[dict[str, int], Path]:
    """The split's labels and the file they came from; without the label CSV, every image labelled 0 when
    ``labels_optional`` (a Part 1-only download read for segmentation), else a one-line error."""
    if csv_path is not None:
        return read_labels(csv_path), csv_path
    if not labels_optional:
        raise file_error(expected, f"file not found (the labels of the {split} split)")
    return dict.fromkeys(images, 0), data_dir
