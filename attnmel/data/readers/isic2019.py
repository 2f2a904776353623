"""ISIC 2019 (8-class diagnosis; HAM10000 + BCN_20000 + MSK images), splits drawn by lesion.

```
ROOT/ISIC_2019_Training_Input/ISIC_<id>[_downsampled].jpg
ROOT/ISIC_2019_Training_GroundTruth.csv   image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK   (one-hot floats)
ROOT/ISIC_2019_Training_Metadata.csv      image,age_approx,anatom_site_general,lesion_id,sex   (optional)
```
Only the training set has public labels, so train/val/test are drawn from it by ``lesion_id`` (stratified
by diagnosis, fixed seed) and written to the cache folder (``attnmel_splits.csv``, ``lesion_id,split``; see
:mod:`attnmel.data.readers.splits`). An image
without a lesion_id (the MSK images) is a group of its own, keyed by its image id. ``data.split_file``
gives a split of one's own instead (checked: no lesion in two splits). ``UNK`` is empty in the training
set; a row that sets it is an error (there is no class to train it as). No lesion masks: ``data.masks``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from attnmel.data.readers._common import (
    BINARY_CLASSES,
    assemble,
    check_root,
    describe,
    find_dir,
    find_file,
    list_images,
    read_table,
    unique_ids,
)
from attnmel.data.readers.isic2018_task3 import read_onehot
from attnmel.data.readers.registry import register_dataset
from attnmel.data.readers.splits import check_fractions, grouped_split
from attnmel.data.samples import DatasetIndex
from attnmel.errors import file_error

log = logging.getLogger("attnmel.data")

CLASSES_8 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
GT_NAME = "ISIC_2019_Training_GroundTruth.csv"
META_NAME = "ISIC_2019_Training_Metadata.csv"


@register_dataset("isic2019", num_classes=(2, 8),
                  options=("val_fraction", "test_fraction", "seed", "split_file", "cache_dir"))
def read(root: str | Path, split: str, num_classes: int = 2, val_fraction: float = 0.2,
         test_fraction: float = 0.2, seed: int = 0, cache_dir: str | Path | None = None,
         split_file: str | Path | None = None) -> DatasetIndex:
    """Index one drawn split (train / val / test) of the ISIC 2019 training set."""
    fractions = check_fractions(val_fraction, test_fraction)
    root = check_root(root)
    gt = find_file(root, [GT_NAME])
    if gt is None:
        raise file_error(root, f"no {GT_NAME}: not the ISIC 2019 layout?{describe(root)}")
    data_dir = find_dir(root, ["ISIC_2019_Training_Input"])
    if data_dir is None:
        raise file_error(root, f"no ISIC_2019_Training_Input folder{describe(root)}")
    dx = read_onehot(gt, [*CLASSES_8, "UNK"])
    unk = sorted(k for k, v in dx.items() if v == len(CLASSES_8))
    if unk:
        raise file_error(gt, f"{len(unk)} image(s) are labelled UNK ({', '.join(unk[:3])}): "
                             "no class to train them as")
    groups = read_lesions(find_file(root, [META_NAME]), dx.keys())
    mel = CLASSES_8.index("MEL")
    binary = {k: int(v == mel) for k, v in dx.items()}
    assignment, split_path = grouped_split(root, "attnmel_splits", "lesion_id", groups,
                                           dx if num_classes == 8 else binary, fractions, int(seed), gt, cache_dir,
                                           split_file)
    ids = [k for k in dx if assignment[k] == split]
    labels = {k: (binary[k] if num_classes == 2 else dx[k]) for k in ids}
    images = list_images(data_dir)
    unlabelled = images.keys() - dx.keys() if split == "train" else set()
    index = assemble("isic2019", split, BINARY_CLASSES if num_classes == 2 else CLASSES_8, labels, images, gt,
                     data_dir, groups={k: groups[k] for k in ids}, unlabelled=unlabelled)
    index.split_file = split_path
    return index


def read_lesions(meta: Path | None, image_ids) -> dict[str, str]:
    """``image -> lesion_id`` (the image's own id where the metadata gives none, or has no row for it)."""
    lesion: dict[str, str] = {}
    if meta is None:
        log.warning("no %s: every image is its own lesion group (images of one lesion may land in two splits)",
                    META_NAME)
    else:
        table = read_table(meta, ["image", "lesion_id"])
        unique_ids(meta, ((ln, row["image"]) for ln, row in table.rows))
        lesion = {row["image"]: row["lesion_id"] for _, row in table.rows if row["lesion_id"]}
    return {k: lesion.get(k, k) for k in image_ids}
