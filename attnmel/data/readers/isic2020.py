"""ISIC 2020 (SIIM-ISIC melanoma; binary, about 1.8 % positive), splits drawn by patient.

```
ROOT/train.csv   image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target
ROOT/train/ISIC_<id>.jpg         (or jpeg/train/, ISIC_2020_Training_JPEG/[train/])
```
``ISIC_2020_Training_GroundTruth[_v2].csv`` (the ISIC Archive's name for the same table) is read too. Only
the training set has labels, so train/val/test are drawn from it by ``patient_id`` (stratified by whether
the patient has a melanoma, fixed seed) and written to the cache folder (``attnmel_splits.csv``,
``patient_id,split``; see :mod:`attnmel.data.readers.splits`):
no patient is in two splits. ``data.split_file`` gives a split of one's own (checked the same way). A
``target`` other than 0/1 is an error naming the file and line. No lesion masks: ``data.masks``.
"""

from __future__ import annotations

from pathlib import Path

from attnmel.data.readers._common import (
    BINARY_CLASSES,
    assemble,
    binary_value,
    check_root,
    describe,
    find_dir,
    find_file,
    list_images,
    read_table,
    unique_ids,
)
from attnmel.data.readers.registry import register_dataset
from attnmel.data.readers.splits import check_fractions, grouped_split
from attnmel.data.samples import DatasetIndex
from attnmel.errors import file_error

CSV_NAMES = ("train.csv", "ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv")
IMAGE_DIRS = ("train", "jpeg/train", "ISIC_2020_Training_JPEG/train", "ISIC_2020_Training_JPEG")


def _image_dir(root: Path) -> Path | None:
    for rel in IMAGE_DIRS:
        node: Path | None = root
        for part in rel.split("/"):
            node = find_dir(node, [part]) if node is not None else None
        if node is not None:
            return node
    return None


@register_dataset("isic2020", num_classes=(2,),
                  options=("val_fraction", "test_fraction", "seed", "split_file", "cache_dir"))
def read(root: str | Path, split: str, num_classes: int = 2, val_fraction: float = 0.2,
         test_fraction: float = 0.2, seed: int = 0, cache_dir: str | Path | None = None,
         split_file: str | Path | None = None) -> DatasetIndex:
    """Index one drawn split (train / val / test) of the ISIC 2020 training set."""
    fractions = check_fractions(val_fraction, test_fraction)
    root = check_root(root)
    gt = find_file(root, CSV_NAMES)
    if gt is None:
        raise file_error(root, f"no train.csv: not the ISIC 2020 layout?{describe(root)}")
    data_dir = _image_dir(root)
    if data_dir is None:
        raise file_error(root, f"no image folder (train/ or ISIC_2020_Training_JPEG/){describe(root)}")
    target, patient = read_labels(gt)
    assignment, split_path = grouped_split(root, "attnmel_splits", "patient_id", patient, target, fractions,
                                           int(seed), gt, cache_dir, split_file)
    ids = [k for k in target if assignment[k] == split]
    images = list_images(data_dir)
    unlabelled = images.keys() - target.keys() if split == "train" else set()
    index = assemble("isic2020", split, BINARY_CLASSES, {k: target[k] for k in ids}, images, gt, data_dir,
                     groups={k: patient[k] for k in ids}, unlabelled=unlabelled)
    index.split_file = split_path
    return index


def read_labels(gt: Path) -> tuple[dict[str, int], dict[str, str]]:
    """``image_name -> target`` (0/1) and ``image_name -> patient_id``."""
    table = read_table(gt, ["image_name", "patient_id", "target"])
    unique_ids(gt, ((ln, row["image_name"]) for ln, row in table.rows))
    target: dict[str, int] = {}
    patient: dict[str, str] = {}
    for lineno, row in table.rows:
        if not row["patient_id"]:
            raise file_error(gt, f"line {lineno}: empty patient_id for {row['image_name']}")
        target[row["image_name"]] = binary_value(gt, lineno, "target", row["target"])
        patient[row["image_name"]] = row["patient_id"]
    return target, patient
