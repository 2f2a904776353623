"""Splits the datasets do not ship (ISIC 2016 validation, HAM10000, ISIC 2019, ISIC 2020 train/val/test): drawn
once, kept on disk, never in the dataset folder.

The drawn assignment is a small CSV (``<key column>,split``) in the cache folder (``data.cache_dir``, default
``.cache/attnmel``), under ``splits/<root name>-<hash of the labels file's content>/``, named by the draw's
parameters when they are not the defaults: the dataset's identity (its labels), the seed and the fractions key it,
so every run on the same data shares one split, another fraction or seed gives (and keeps) another split, and a
new labels file draws anew. A user may edit the file (``attnmel data check`` prints where it is). The dataset root
is never written, whatever its permissions (it is often shared); a split file an older version wrote there is
still read. ``data.split_file`` (a user's own file) replaces the draw. Training copies the split it used into the
run folder (``RunDir.split_file``).

:func:`persisted_split` is the one place a drawn split is stored and read back; every reader with a drawn split
calls it (directly, or through :func:`grouped_split`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np

from attnmel.data.readers._common import read_table
from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_text

if TYPE_CHECKING:
    from attnmel.data.samples import DatasetIndex

log = logging.getLogger("attnmel.data")


def split_file_name(stem: str, params: Mapping[str, float | int], defaults: Mapping[str, float | int]) -> str:
    """``<stem>.csv`` for the default parameters, else ``<stem>_<k><v>..csv``."""
    if all(params[k] == defaults[k] for k in defaults):
        return f"{stem}.csv"
    tag = "_".join(f"{k}{params[k]:g}" for k in defaults)
    return f"{stem}_{tag}.csv"


DEFAULT_CACHE_DIR = ".cache/attnmel"  # data.cache_dir's default: the readers and training agree without a config


def _content_hash(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def split_store(root: Path, source: Path, cache_dir: str | Path | None = None) -> Path:
    """The folder of ``root``'s drawn splits: ``<cache>/splits/<root name>-<sha1 of source's content>``.
    Keyed by the labels file ``source`` rather than the root's path, so a moved copy of the same data keeps
    its split and changed labels get a new one."""
    try:
        digest = _content_hash(source)
    except OSError as e:
        raise file_error(source, f"cannot read the labels file ({e.strerror})") from None
    return _store(root, digest, cache_dir)


def _store(root: Path, digest: str, cache_dir: str | Path | None) -> Path:
    base = Path(cache_dir or os.environ.get("ATTNMEL_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()
    return base / "splits" / f"{root.name}-{digest}"


def stratified_assign(keys_by_class: Mapping[int, Iterable[str]], fractions: Mapping[str, float],
                      seed: int, rest: str = "train") -> dict[str, str]:
    """Assign keys to splits class by class: ``round(n * fraction)`` of each class to each named split.

    Keys are sorted before shuffling so the result depends only on the keys and the seed, not on the
    order files were listed in. A class with at least two keys left gives each non-empty fraction at
    least one key, so a small validation split still sees every class.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for cls in sorted(keys_by_class):
        keys = sorted(keys_by_class[cls])
        order = [keys[i] for i in rng.permutation(len(keys))]
        start = 0
        for name, frac in fractions.items():
            k = int(np.floor(len(keys) * frac + 0.5))
            if frac > 0 and k == 0 and len(keys) - start >= 2:
                k = 1
            k = min(k, max(0, len(keys) - start - 1))  # keep at least one for the rest split
            for key in order[start:start + k]:
                out[key] = name
            start += k
        for key in order[start:]:
            out[key] = rest
    return out


def check_fraction(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise AttnMelError(f"{name} must be a number between 0 and 1 (got {value!r})") from None
    if not 0.0 < value < 1.0:
        raise AttnMelError(f"{name} must be between 0 and 1, exclusive (got {value})")
    return value


def check_fractions(val_fraction: float, test_fraction: float) -> dict[str, float]:
    """``{"val": .., "test": ..}`` of a drawn three-way split: each in (0, 1), together below 1."""
    fractions = {"val": check_fraction("val_fraction", val_fraction),
                 "test": check_fraction("test_fraction", test_fraction)}
    total = fractions["val"] + fractions["test"]
    if total >= 1.0:
        raise AttnMelError(f"val_fraction + test_fraction must be below 1 (got {total:g})")
    return fractions


def persisted_split(root: Path, file_name: str, key_column: str, keys: Iterable[str], allowed: Iterable[str],
                    draw: Callable[[], dict[str, str]], source: Path,
                    cache_dir: str | Path | None = None, store: Path | None = None) -> tuple[dict[str, str], Path]:
    """The split assignment ``key -> split`` and the file it lives in: read if stored before, else drawn and
    stored in :func:`split_store` (never under ``root``).

    ``keys``: every key the file must cover (from ``source``, the labels file, named in errors and hashed for
    the store's key). ``file_name`` carries the draw's parameters (:func:`split_file_name`). ``store``: the
    folder to use instead of :func:`split_store` (a split keyed by something other than a labels file).
    """
    keys = set(keys)
    allowed = tuple(allowed)
    path = ((store or split_store(root, source, cache_dir)) / file_name).absolute()
    legacy = root / file_name  # written into the dataset folder by versions before 2026-12: read, never written
    for found in (path, legacy):
        if found.is_file():
            return _read_split(found, key_column, keys, allowed, source), found
    assignment = draw()
    text = f"{key_column},split\n" + "".join(f"{k},{assignment[k]}\n" for k in sorted(assignment))
    try:
        write_text(path, text)
    except OSError as e:
        raise file_error(path, f"cannot write the drawn split ({e.strerror}); set data.cache_dir to a "
                               "writable folder") from None
    counts = {name: sum(v == name for v in assignment.values()) for name in allowed}
    log.info("drew a new split (%s) and wrote it to %s", ", ".join(f"{k} {v}" for k, v in counts.items()), path)
    return assignment, path


def _read_split(path: Path, key_column: str, keys: set[str], allowed: tuple[str, ...],
                source: Path) -> dict[str, str]:
    table = read_table(path, [key_column, "split"])
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for lineno, row in table.rows:
        key, split = row[key_column], row["split"].lower()
        if not key:
            raise file_error(path, f"line {lineno}: empty {key_column}")
        if key in first:
            raise file_error(path, f"line {lineno}: duplicate {key_column} {key} (first on line {first[key]})")
        if key not in keys:
            raise file_error(path, f"line {lineno}: unknown {key_column} {key} (not in {source.name}); "
                                   f"delete this file to draw a new split")
        if split not in allowed:
            raise file_error(path, f"line {lineno}: split {row['split']!r} is not one of {', '.join(allowed)}")
        first[key] = lineno
        out[key] = split
    missing = sorted(keys - out.keys())
    if missing:
        more = ", ..." if len(missing) > 3 else ""
        raise file_error(path, f"{len(missing)} {key_column}(s) of {source.name} are not assigned a split "
                               f"({', '.join(missing[:3])}{more}); delete this file to draw a new split")
    return out


IMAGE_COLUMNS = ("image", "image_id", "image_name")


def user_split(path: str | Path, image_groups: Mapping[str, str], group_column: str,
               allowed: Iterable[str] = ("train", "val", "test")) -> dict[str, str]:
    """``image -> split`` from a split file the user gives (``data.split_file``).

    The file has a ``split`` column and either an image column (``image``, ``image_id`` or ``image_name``)
    or ``group_column`` (``lesion_id``, ``patient_id``): one row per image or per group. Every image must be
    assigned, and an image-keyed file must keep each group in one split: a patient (or lesion) in two splits
    is an error naming the file and both lines, since that leaks the patient between training and test.
    """
    path = Path(path).expanduser()
    allowed = tuple(allowed)
    table = read_table(path, ["split"])
    key_column = next((c for c in (*IMAGE_COLUMNS, group_column) if c in table.columns), None)
    if key_column is None:
        raise file_error(path, f"needs a column {', '.join((*IMAGE_COLUMNS, group_column))} beside split "
                               f"(header: {', '.join(table.columns)})")
    by_group = key_column == group_column
    known = set(image_groups.values()) if by_group else set(image_groups)
    assigned: dict[str, tuple[str, int]] = {}
    for lineno, row in table.rows:
        key, split = row[key_column], row["split"].lower()
        if split not in allowed:
            raise file_error(path, f"line {lineno}: split {row['split']!r} is not one of {', '.join(allowed)}")
        if key not in known:
            raise file_error(path, f"line {lineno}: unknown {key_column} {key!r}")
        if key in assigned:
            raise file_error(path, f"line {lineno}: duplicate {key_column} {key} (first on line {assigned[key][1]})")
        assigned[key] = (split, lineno)
    if by_group:
        out = {img: assigned[g][0] for img, g in image_groups.items() if g in assigned}
    else:
        out = {img: s for img, (s, _) in assigned.items()}
        first: dict[str, tuple[str, int, str]] = {}
        for img, (split, lineno) in sorted(assigned.items(), key=lambda kv: kv[1][1]):
            group = image_groups[img]
            seen = first.setdefault(group, (split, lineno, img))
            if seen[0] != split:
                raise file_error(path, f"line {lineno}: {group_column} {group} is in two splits: {img} in {split}, "
                                       f"{seen[2]} in {seen[0]} (line {seen[1]})")
    missing = sorted(set(image_groups) - out.keys())
    if missing:
        more = ", ..." if len(missing) > 3 else ""
        raise file_error(path, f"{len(missing)} image(s) are not assigned a split ({', '.join(missing[:3])}{more})")
    return out


def grouped_split(root: Path, stem: str, group_column: str, image_groups: Mapping[str, str],
                  image_class: Mapping[str, int], fractions: Mapping[str, float], seed: int, source: Path,
                  cache_dir: str | Path | None = None,
                  split_file: str | Path | None = None) -> tuple[dict[str, str], Path]:
    """``image -> split`` drawn by group (no group in two splits), stratified by each group's highest class
    (a patient with any melanoma counts as a melanoma patient), persisted like the other drawn splits
    (:func:`persisted_split`), and the file it is stored in; ``split_file`` (a user's file, :func:`user_split`)
    replaces the draw."""
    if split_file:
        return user_split(split_file, image_groups, group_column), Path(split_file).expanduser()
    group_class: dict[str, int] = {}
    for img, g in image_groups.items():
        group_class[g] = max(group_class.get(g, 0), int(image_class[img]))
    by_class: dict[int, list[str]] = {}
    for g, c in group_class.items():
        by_class.setdefault(c, []).append(g)
    defaults = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
    params = {"val_fraction": fractions["val"], "test_fraction": fractions["test"], "seed": int(seed)}
    assignment, path = persisted_split(
        root, split_file_name(stem, params, defaults), group_column, group_class.keys(), ("train", "val", "test"),
        lambda: stratified_assign(by_class, {"test": fractions["test"], "val": fractions["val"]}, int(seed)),
        source=source, cache_dir=cache_dir)
    return {img: assignment[g] for img, g in image_groups.items()}, path


def holdout_split(root: Path, dataset: str, train: DatasetIndex, fraction: float,
                  cache_dir: str | Path | None = None, seed: int = 0) -> set[str]:
    """The training image ids that ``data.holdout`` moves to validation: ``fraction`` of each class, drawn
    once (stratified, ``seed``) and kept as ``<dataset>_holdout[_..].csv`` (``image,split``) in the split store
    of the cache folder (keyed by the training ids and labels), never in the dataset folder, so every run
    shares it."""
    fraction = check_fraction("data.holdout", fraction)
    by_class: dict[int, list[str]] = {}
    for s in train.samples:
        by_class.setdefault(int(s.label), []).append(s.image_id)
    name = split_file_name(f"{dataset}_holdout", {"fraction": fraction, "seed": int(seed)},
                           {"fraction": 0.15, "seed": 0})
    # Keyed like the readers' drawn splits, by the data's identity: here the training split's ids and labels.
    digest = hashlib.sha1("".join(f"{s.image_id},{s.label}\n" for s in train.samples).encode()).hexdigest()[:12]
    assignment, _ = persisted_split(Path(root), name, "image", (s.image_id for s in train.samples),
                                    ("train", "val"), lambda: stratified_assign(by_class, {"val": fraction}, int(seed)),
                                    source=Path(root) / f"{dataset} training labels", cache_dir=cache_dir,
                                    store=_store(Path(root), digest, cache_dir))
    return {k for k, v in assignment.items() if v == "val"}
