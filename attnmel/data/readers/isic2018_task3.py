"""ISIC 2018 Task 3 (7-class lesion diagnosis): the official Training / Validation / Test splits.

```
ROOT/ISIC2018_Task3_{Training,Validation,Test}_Input/ISIC_<id>.jpg
ROOT/ISIC2018_Task3_{Training,Validation,Test}_GroundTruth.csv   image,MEL,NV,BCC,AKIEC,BKL,DF,VASC (one-hot floats)
```
The ground-truth CSV may also sit in the folder its zip extracts to
(``ROOT/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv``). The training images
are the HAM10000 images, so ``HAM10000_images_part_1/2`` serve as the training input too. A row that is
not one-hot is an error naming the file and line. No lesion masks: ``data.masks`` gives them.
"""

from __future__ import annotations

from pathlib import Path

from attnmel.data.readers._common import (
    BINARY_CLASSES,
    CLASSES_7,
    SPLIT_TAGS,
    assemble,
    check_root,
    find_dir,
    find_file,
    list_images,
    missing_folder,
    read_table,
    unique_ids,
)
from attnmel.data.readers.registry import register_dataset
from attnmel.data.samples import DatasetIndex
from attnmel.errors import file_error

HAM_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")


def find_label_csv(root: Path, stem: str) -> Path | None:
    """``ROOT/<stem>.csv``, or ``ROOT/<stem>/<stem>.csv`` (the zip's own folder)."""
    found = find_file(root, [f"{stem}.csv"])
    if found is None:
        folder = find_dir(root, [stem])
        found = find_file(folder, [f"{stem}.csv"]) if folder is not None else None
    return found


@register_dataset("isic2018_task3", num_classes=(2, 7))
def read(root: str | Path, split: str, num_classes: int = 2) -> DatasetIndex:
    """Index one official split."""
    root = check_root(root)
    tag = SPLIT_TAGS[split]
    dirs = [find_dir(root, [f"ISIC2018_Task3_{tag}_Input"])]
    if split == "train" and dirs[0] is None:
        dirs = [find_dir(root, [d]) for d in HAM_DIRS]
    dirs = [d for d in dict.fromkeys(dirs) if d is not None]
    if not dirs:
        raise missing_folder(root, f"ISIC2018_Task3_{tag}_Input", split, "ISIC2018_", "ISIC 2018 Task 3")
    stem = f"ISIC2018_Task3_{tag}_GroundTruth"
    csv_path = find_label_csv(root, stem)
    if csv_path is None:
        raise file_error(root / f"{stem}.csv", f"file not found (the labels of the {split} split)")
    images: dict[str, Path] = {}
    for d in dirs:
        list_images(d, into=images)
    dx = read_onehot(csv_path, CLASSES_7)
    mel = CLASSES_7.index("MEL")
    labels = {k: (int(v == mel) if num_classes == 2 else v) for k, v in dx.items()}
    image_dir = dirs[0] if len(dirs) == 1 else dirs[0].parent
    return assemble("isic2018_task3", split, BINARY_CLASSES if num_classes == 2 else CLASSES_7, labels, images,
                    csv_path, image_dir, unlabelled=images.keys() - labels.keys())


def read_onehot(csv_path: Path, classes: list[str], image_column: str = "image") -> dict[str, int]:
    """``image -> class index`` from a one-hot CSV (``0``/``1``/``0.0``/``1.0``); a row with no 1, two 1s or
    another value is an error naming the file and line."""
    cols = [c.lower() for c in classes]
    table = read_table(csv_path, [image_column, *cols])
    unique_ids(csv_path, ((ln, row[image_column]) for ln, row in table.rows))
    out: dict[str, int] = {}
    for lineno, row in table.rows:
        values = []
        for c, name in zip(cols, classes):
            try:
                v = float(row[c])
            except ValueError:
                raise file_error(csv_path, f"line {lineno}: {name} value {row[c]!r} is not 0 or 1") from None
            if v not in (0.0, 1.0):
                raise file_error(csv_path, f"line {lineno}: {name} value {row[c]!r} is not 0 or 1")
            values.append(v)
        hot = [name for name, v in zip(classes, values) if v == 1.0]
        if len(hot) != 1:
            what = "no class set" if not hot else f"{len(hot)} classes set ({', '.join(hot)})"
            raise file_error(csv_path, f"line {lineno}: {row[image_column]} is not one-hot: {what}")
        out[row[image_column]] = classes.index(hot[0])
    return out
