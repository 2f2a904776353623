"""HAM10000 (the ISIC 2018 Task 3 training images), 7 classes.

```
ROOT/HAM10000_metadata(.csv)      lesion_id,image_id,dx,dx_type,age,sex,localization (tab or comma)
ROOT/HAM10000_images_part_1/ISIC_<id>.jpg, ROOT/HAM10000_images_part_2/...   (or ROOT/images/)
ROOT/HAM10000_segmentations_lesion_tschandl/ISIC_<id>_segmentation.png      (optional)
```
Several images show the same lesion, so train/val/test are drawn by ``lesion_id`` (stratified by the
lesion's diagnosis, fixed seed) and written to the cache folder (``attnmel_splits.csv``, ``lesion_id,split``;
see :mod:`attnmel.data.readers.splits`).
"""

from __future__ import annotations

from pathlib import Path

from attnmel.data.readers._common import (
    BINARY_CLASSES,
    CLASSES_7,
    assemble,
    check_root,
    describe,
    find_dir,
    find_file,
    list_images,
    list_suffixed,
    read_table,
    unique_ids,
)
from attnmel.data.readers.registry import register_dataset
from attnmel.data.readers.splits import check_fractions, grouped_split
from attnmel.data.samples import DatasetIndex
from attnmel.errors import file_error

METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab", "HAM10000_metadata.txt")
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images", "images",
              "ISIC2018_Task3_Training_Input")
MASK_DIRS = ("HAM10000_segmentations_lesion_tschandl", "HAM10000_segmentations")


@register_dataset("ham10000", num_classes=(2, 7), options=("val_fraction", "test_fraction", "seed", "cache_dir"))
def read(root: str | Path, split: str, num_classes: int = 2, val_fraction: float = 0.2,
         test_fraction: float = 0.2, seed: int = 0, cache_dir: str | Path | None = None) -> DatasetIndex:
    """Index one split; the split is drawn by lesion the first time and read back from disk after."""
    fractions = check_fractions(val_fraction, test_fraction)
    root = check_root(root)
    meta = find_file(root, METADATA_NAMES)
    if meta is None:
        raise file_error(root, f"no HAM10000_metadata.csv: not the HAM10000 layout?{describe(root)}")
    dx, lesion = read_metadata(meta)
    image_dirs = [d for d in (find_dir(root, [name]) for name in IMAGE_DIRS) if d is not None]
    if not image_dirs:
        raise file_error(root, f"no image folder ({', '.join(IMAGE_DIRS[:2])} or images/){describe(root)}")
    images: dict[str, Path] = {}
    for d in dict.fromkeys(image_dirs):  # one folder can match two names case-insensitively
        list_images(d, into=images)

    # Drawn by lesion, stratified by the lesion's highest class (a lesion's images agree on it in HAM10000).
    assignment, split_path = grouped_split(root, "attnmel_splits", "lesion_id", lesion, dx, fractions, int(seed),
                                           meta, cache_dir)
    ids = [k for k in dx if assignment[k] == split]
    mel = CLASSES_7.index("MEL")
    labels = {k: (int(dx[k] == mel) if num_classes == 2 else dx[k]) for k in ids}
    mask_dir = find_dir(root, MASK_DIRS)
    masks = list_suffixed(mask_dir, "_segmentation", ".png")
    # Images missing from the metadata belong to no split; they are reported once, with train.
    unlabelled = images.keys() - dx.keys() if split == "train" else set()
    image_dir = image_dirs[0].parent if len(image_dirs) > 1 else image_dirs[0]
    index = assemble("ham10000", split, BINARY_CLASSES if num_classes == 2 else CLASSES_7, labels, images, meta,
                     image_dir, masks=masks, groups={k: lesion[k] for k in ids}, unlabelled=unlabelled)
    index.split_file = split_path
    return index


def read_metadata(meta: Path) -> tuple[dict[str, int], dict[str, str]]:
    """``image_id -> class index`` (CLASSES_7 order) and ``image_id -> lesion_id``."""
    table = read_table(meta, ["lesion_id", "image_id", "dx"])
    unique_ids(meta, ((ln, row["image_id"]) for ln, row in table.rows))
    dx: dict[str, int] = {}
    lesion: dict[str, str] = {}
    for lineno, row in table.rows:
        code = row["dx"].upper()
        if code not in CLASSES_7:
            raise file_error(meta, f"line {lineno}: unknown dx {row['dx']!r} "
                                   f"(expected one of {', '.join(c.lower() for c in CLASSES_7)})")
        if not row["lesion_id"]:
            raise file_error(meta, f"line {lineno}: empty lesion_id for {row['image_id']}")
        dx[row["image_id"]] = CLASSES_7.index(code)
        lesion[row["image_id"]] = row["lesion_id"]
    return dx, lesion
