"""ISIC 2018 Task 1 (lesion segmentation): images and masks, no class labels (every label is 0).

```
ROOT/ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_<id>.jpg
ROOT/ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_<id>_segmentation.png
```
Here the mask is the target, so an image without a mask is skipped (warning + ``skipped``) rather than
kept with ``mask=None``; a split whose mask folder is missing altogether is an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

from attnmel.data.readers._common import (
    BINARY_CLASSES,
    NO_LABEL,
    SPLIT_TAGS,
    check_root,
    find_dir,
    list_images,
    list_suffixed,
    missing_folder,
)
from attnmel.data.readers.registry import register_dataset
from attnmel.data.samples import DatasetIndex, Sample
from attnmel.errors import file_error

log = logging.getLogger("attnmel.data")



@register_dataset("isic2018_task1", num_classes=(2, 1), segmentation_only=True)
def read(root: str | Path, split: str, num_classes: int = 2) -> DatasetIndex:
    """Index one split; samples are the images that have a ground-truth mask."""
    # No class labels: num_classes only has to be one a classifier head could be built with.
    root = check_root(root)
    tag = SPLIT_TAGS[split]
    data_dir = find_dir(root, [f"ISIC2018_Task1-2_{tag}_Input"])
    if data_dir is None:
        raise missing_folder(root, f"ISIC2018_Task1-2_{tag}_Input", split, "ISIC2018_", "ISIC 2018 Task 1")
    mask_dir = find_dir(root, [f"ISIC2018_Task1_{tag}_GroundTruth"])
    if mask_dir is None:
        raise file_error(root / f"ISIC2018_Task1_{tag}_GroundTruth", f"folder not found (the {split} masks)")
    images = list_images(data_dir)
    masks = list_suffixed(mask_dir, "_segmentation", ".png")
    samples = [Sample(k, images[k], 0, masks[k]) for k in sorted(images.keys() & masks.keys())]
    no_mask = sorted(images.keys() - masks.keys())
    skipped = [(str(images[k]), f"{NO_LABEL}: no mask in {mask_dir.name}/") for k in no_mask]
    if no_mask:
        log.warning("%s: %d image(s) have no mask in %s (%s); skipped", data_dir, len(no_mask), mask_dir.name,
                    ", ".join(no_mask[:3]) + (", ..." if len(no_mask) > 3 else ""))
    if not samples:
        raise file_error(data_dir, f"no image of the {split} split has a mask in {mask_dir.name}/")
    class_names = ["lesion"] if num_classes == 1 else list(BINARY_CLASSES)
    return DatasetIndex("isic2018_task1", split, samples, class_names, skipped)
