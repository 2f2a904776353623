"""ISIC 2016 (ISBI 2016 challenge), Part 3 classification plus the Part 1 lesion masks.

```
ROOT/ISBI2016_ISIC_Part3_{Training,Test}_Data/ISIC_<id>.jpg
ROOT/ISBI2016_ISIC_Part3_Training_GroundTruth.csv      no header: ISIC_<id>,benign|malignant
ROOT/ISBI2016_ISIC_Part3_Test_GroundTruth.csv          no header: ISIC_<id>,0.0|1.0
ROOT/ISBI2016_ISIC_Part1_{Training,Test}_GroundTruth/ISIC_<id>_Segmentation.png
```
There is no official validation split: one is drawn from training (stratified, fixed seed) and written to the
cache folder (``attnmel_val_split.csv``, ``image_id,split``; see :mod:`attnmel.data.readers.splits`) the first
time; train is training minus it.
"""

from __future__ import annotations

from pathlib import Path

from attnmel.data.readers._common import (
    BINARY_CLASSES,
    assemble,
    check_root,
    find_dir,
    find_file,
    labels_or_unlabelled,
    list_images,
    list_suffixed,
    missing_folder,
    read_rows,
    unique_ids,
)
from attnmel.data.readers.registry import register_dataset
from attnmel.data.readers.splits import check_fraction, persisted_split, split_file_name, stratified_assign
from attnmel.data.samples import DatasetIndex
from attnmel.errors import file_error

_WORDS = {"benign": 0, "malignant": 1}
SPLIT_DEFAULTS = {"val_fraction": 0.2, "seed": 0}


@register_dataset("isic2016", num_classes=(2,), options=("val_fraction", "seed", "cache_dir", "labels_optional"))
def read(root: str | Path, split: str, num_classes: int = 2, val_fraction: float = 0.2, seed: int = 0,
         cache_dir: str | Path | None = None, labels_optional: bool = False) -> DatasetIndex:
    """Index one split; ``val`` and ``train`` share the training folder, divided by the persisted split.

    ``labels_optional``: without the Part 3 CSV (a Part 1-only download, for segmentation) every image gets
    label 0 instead of an error.
    """
    val_fraction = check_fraction("val_fraction", val_fraction)
    root = check_root(root)
    part = "Training" if split in ("train", "val") else "Test"
    data_dir = find_dir(root, [f"ISBI2016_ISIC_Part3_{part}_Data", f"ISBI2016_ISIC_Part1_{part}_Data"])
    if data_dir is None:
        raise missing_folder(root, f"ISBI2016_ISIC_Part3_{part}_Data", split, "ISBI2016_", "ISIC 2016")
    csv_path = find_file(root, [f"ISBI2016_ISIC_Part3_{part}_GroundTruth.csv"])
    images = list_images(data_dir)
    labels, csv_path = labels_or_unlabelled(csv_path, root / f"ISBI2016_ISIC_Part3_{part}_GroundTruth.csv", split,
                                            images, read_labels, labels_optional, data_dir)
    unlabelled = images.keys() - labels.keys()
    split_path = None
    if part == "Training":
        params = {"val_fraction": val_fraction, "seed": int(seed)}
        by_class = {c: [k for k, v in labels.items() if v == c] for c in (0, 1)}
        assignment, split_path = persisted_split(
            root, split_file_name("attnmel_val_split", params, SPLIT_DEFAULTS), "image_id", labels.keys(),
            ("train", "val"), lambda: stratified_assign(by_class, {"val": val_fraction}, int(seed)),
            source=csv_path, cache_dir=cache_dir)
        labels = {k: v for k, v in labels.items() if assignment[k] == split}
        if split == "val":
            unlabelled = set()  # reported once, with train
    masks = list_suffixed(find_dir(root, [f"ISBI2016_ISIC_Part1_{part}_GroundTruth"]), "_segmentation", ".png")
    index = assemble("isic2016", split, BINARY_CLASSES, labels, images, csv_path, data_dir, masks=masks,
                     unlabelled=unlabelled)
    index.split_file = split_path
    return index


def read_labels(csv_path: Path) -> dict[str, int]:
    """Header-less ``id,label`` rows; a header row, if a copy has one, is recognised and skipped."""
    rows = read_rows(csv_path)
    if _label(rows[0][1][-1]) is None and not rows[0][1][0].upper().startswith("ISIC_"):
        rows = rows[1:]
    if not rows:
        raise file_error(csv_path, "no label rows")
    out: dict[str, int] = {}
    unique_ids(csv_path, ((ln, f[0]) for ln, f in rows))
    for lineno, fields in rows:
        if len(fields) < 2:
            raise file_error(csv_path, f"line {lineno}: expected 'image_id,label', got {','.join(fields)!r}")
        value = _label(fields[1])
        if value is None:
            raise file_error(csv_path, f"line {lineno}: label {fields[1]!r} is not benign/malignant or 0/1")
        out[fields[0]] = value
    return out


def _label(text: str) -> int | None:
    word = _WORDS.get(text.strip().lower())
    if word is not None:
        return word
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if v in (0.0, 1.0) else None
