"""A generic dataset folder (``data.dataset: folder``): a clinic's export or a public set, without a reader.

```
ROOT/images/<image_id>.jpg|.png|.bmp
ROOT/labels.csv        image_id, melanoma (0/1 or 0.0/1.0) [, split]
                       or image_id, <data.label_column> (a diagnosis; data.positive_class is melanoma)
ROOT/masks/<image_id>.png or <image_id>_<suffix>.png      (optional lesion masks, at most one per image)
```
With a ``split`` column (train / val / test) the user's split is used; without one a split is drawn
(stratified, fixed seed) and stored outside ``ROOT`` (:func:`draw_split`): nothing is ever written into the
dataset folder. The split ``all`` is every image, whatever its split (external validation of a trained run).
"""

from __future__ import annotations

import os
from pathlib import Path

from attnmel.data.readers._common import (
    BINARY_CLASSES,
    IMAGE_EXTS,
    assemble,
    binary_value,
    check_root,
    describe,
    find_dir,
    find_file,
    list_images,
    match_id,
    read_table,
    unique_ids,
)
from attnmel.data.readers.registry import register_dataset
from attnmel.data.readers.splits import check_fractions, persisted_split, stratified_assign
from attnmel.data.samples import SPLITS, DatasetIndex
from attnmel.errors import file_error

LABELS = "labels.csv"
ALL = "all"  # every image of the folder, whatever its split


@register_dataset("folder", num_classes=(2,), extra_splits=(ALL,),
                  options=("val_fraction", "test_fraction", "seed", "cache_dir", "label_column", "positive_class"))
def read(root: str | Path, split: str, num_classes: int = 2, val_fraction: float = 0.2,
         test_fraction: float = 0.2, seed: int = 0, cache_dir: str | Path | None = None,
         label_column: str | None = None, positive_class: str | None = None) -> DatasetIndex:
    """Index one split (or ``all``) of a dataset folder."""
    root = check_root(root)
    image_dir = find_dir(root, ["images"])
    labels_csv = find_file(root, [LABELS])
    if image_dir is None or labels_csv is None:
        missing = "images/" if image_dir is None else LABELS
        raise file_error(root, f"no {missing}: a folder dataset holds images/ and labels.csv{describe(root)}")
    images = list_images(image_dir)
    labels, splits = read_labels(labels_csv, label_column, positive_class)
    masks = list_masks(find_dir(root, ["masks"]), labels.keys())
    # Images labels.csv does not list belong to no split; reported once, with train (or all).
    unlabelled = images.keys() - labels.keys() if split in ("train", ALL) else set()
    split_path = None
    if split != ALL:
        if splits is None:
            splits, split_path = draw_split(root, labels, labels_csv, check_fractions(val_fraction, test_fraction),
                                            int(seed), cache_dir)
        labels = {k: v for k, v in labels.items() if splits[k] == split}
    index = assemble("folder", split, BINARY_CLASSES, labels, images, labels_csv, image_dir, masks=masks,
                     unlabelled=unlabelled)
    index.split_file = split_path
    return index


def read_labels(path: Path, label_column: str | None = None,
                positive_class: str | None = None) -> tuple[dict[str, int], dict[str, str] | None]:
    """``image_id -> 0/1`` and, where ``labels.csv`` has a ``split`` column, ``image_id -> split``."""
    column = (label_column or "melanoma").strip().lower()
    if label_column and positive_class is None:
        raise file_error(path, f"data.label_column={label_column} needs data.positive_class (the value that "
                               "means melanoma)")
    table = read_table(path, ["image_id", column])
    unique_ids(path, ((ln, row["image_id"]) for ln, row in table.rows))
    labels: dict[str, int] = {}
    for lineno, row in table.rows:
        value = row[column]
        if label_column:
            labels[row["image_id"]] = int(value.strip().lower() == str(positive_class).strip().lower())
        else:
            labels[row["image_id"]] = binary_value(path, lineno, column, value)
    if "split" not in table.columns:
        return labels, None
    splits: dict[str, str] = {}
    for lineno, row in table.rows:
        s = row["split"].strip().lower()
        if s not in SPLITS:
            raise file_error(path, f"line {lineno}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
        splits[row["image_id"]] = s
    return labels, splits


def list_masks(folder: Path | None, ids) -> dict[str, Path]:
    """Lesion masks ``<id>.png`` / ``<id>_<suffix>.png`` by id; a mask of no known image, or two masks for
    one image, is a one-line error naming the file."""
    if folder is None:
        return {}
    ids = set(ids)
    out: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            stem, ext = os.path.splitext(entry.name)
            if entry.name.startswith(".") or not entry.is_file() or ext.lower() not in IMAGE_EXTS:
                continue
            key = match_id(stem, ids)
            if key is None:
                raise file_error(Path(entry.path), "a mask for an unknown image (no image_id in labels.csv is "
                                                   f"{stem} or a prefix of it before '_')")
            if key in out:
                raise file_error(Path(entry.path), f"a second mask for image {key} (also {out[key].name})")
            out[key] = Path(entry.path)
    return out


def draw_split(root: Path, labels: dict[str, int], source: Path, fractions: dict[str, float], seed: int,
               cache_dir: str | Path | None) -> tuple[dict[str, str], Path]:
    """``image_id -> split`` and the file it is stored in: drawn once (stratified by label) and kept outside
    ``root``, in the cache folder (:func:`attnmel.data.readers.splits.persisted_split`, keyed by the labels file's
    content, the seed and the fractions).
    """
    from attnmel.data.readers.splits import split_file_name

    by_class = {c: [k for k, v in labels.items() if v == c] for c in (0, 1)}
    params = {"val_fraction": fractions["val"], "test_fraction": fractions["test"], "seed": seed}
    name = split_file_name("attnmel_splits", params, {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0})
    return persisted_split(root, name, "image_id", labels.keys(), SPLITS,
                           lambda: stratified_assign(by_class, fractions, seed), source=source, cache_dir=cache_dir)
