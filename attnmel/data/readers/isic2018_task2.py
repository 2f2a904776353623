"""ISIC 2018 Task 2 (lesion attribute detection): images and one mask per attribute, no class labels.

```
ROOT/ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_<id>.jpg
ROOT/ISIC2018_Task2_{Training,Validation,Test}_GroundTruth[_v3]/ISIC_<id>_attribute_<name>.png
ROOT/ISIC2018_Task1_{...}_GroundTruth/ISIC_<id>_segmentation.png      (optional: the lesion masks)
```
``<name>`` is one of :data:`ATTRIBUTES`; each mask is single-channel 8-bit 0/255 at the image's size and
is often all zero. The five masks are the target, so an image without all five is skipped (warning +
``skipped``); an attribute name that is not one of the five is an error naming the file. Where the Task 1
masks sit beside, samples carry them too (the lesion regulariser and the report's Jaccard read them).
"""

from __future__ import annotations

import logging
import os
import re
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

# The official order (alphabetical, as the challenge scorer sorts them).
ATTRIBUTES = ("globules", "milia_like_cyst", "negative_network", "pigment_network", "streaks")
_ATTRIBUTE_FILE = re.compile(r"^(?P<id>.+?)_attribute_(?P<name>.+)\.png$", re.IGNORECASE)


def attribute_file_name(image_id: str, attribute: str) -> str:
    """The official file name of one attribute mask (ground truth and submissions alike)."""
    return f"{image_id}_attribute_{attribute}.png"


def list_attribute_masks(folder: Path) -> dict[str, dict[str, Path]]:
    """``image_id -> {attribute: file}`` for the ``*_attribute_<name>.png`` files of ``folder``.

    A name that is not one of the five attributes, or a second file for one (id, attribute), is an error.
    """
    out: dict[str, dict[str, Path]] = {}
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            m = _ATTRIBUTE_FILE.match(entry.name)
            if m is None:
                continue
            name = m.group("name").lower()
            if name not in ATTRIBUTES:
                raise file_error(Path(entry.path), f"unknown attribute {m.group('name')!r} "
                                                   f"(expected one of {', '.join(ATTRIBUTES)})")
            per_image = out.setdefault(m.group("id"), {})
            if name in per_image:
                raise file_error(Path(entry.path), f"a second {name} mask for {m.group('id')} "
                                                   f"(also {per_image[name].name})")
            per_image[name] = Path(entry.path)
    return out


@register_dataset("isic2018_task2", num_classes=(2, 1), segmentation_only=True, attributes=True)
def read(root: str | Path, split: str, num_classes: int = 2, dataset: str = "isic2018_task2") -> DatasetIndex:
    """Index one split; samples are the images that have all five attribute masks."""
    root = check_root(root)
    tag = SPLIT_TAGS[split]
    data_dir = find_dir(root, [f"ISIC2018_Task1-2_{tag}_Input"])
    if data_dir is None:
        raise missing_folder(root, f"ISIC2018_Task1-2_{tag}_Input", split, "ISIC2018_", "ISIC 2018 Task 2")
    names = [f"ISIC2018_Task2_{tag}_GroundTruth{v}" for v in ("_v3", "_v2", "")]
    attr_dir = find_dir(root, names)
    if attr_dir is None:
        raise file_error(root / names[0], f"folder not found (the {split} attribute masks)")
    images = list_images(data_dir)
    attrs = list_attribute_masks(attr_dir)
    lesion = list_suffixed(find_dir(root, [f"ISIC2018_Task1_{tag}_GroundTruth"]), "_segmentation", ".png")
    samples, skipped = [], []
    for key in sorted(images):
        found = attrs.get(key, {})
        if len(found) < len(ATTRIBUTES):
            missing = [a for a in ATTRIBUTES if a not in found]
            skipped.append((str(images[key]), f"{NO_LABEL}: no {', '.join(missing)} mask in {attr_dir.name}/"))
            continue
        samples.append(Sample(key, images[key], 0, lesion.get(key), attributes=tuple(found[a] for a in ATTRIBUTES)))
    if skipped:
        log.warning("%s: %d image(s) lack some attribute masks in %s; skipped", data_dir, len(skipped),
                    attr_dir.name)
    if not samples:
        raise file_error(data_dir, f"no image of the {split} split has its five attribute masks in {attr_dir.name}/")
    class_names = ["lesion"] if num_classes == 1 else list(BINARY_CLASSES)
    return DatasetIndex(dataset, split, samples, class_names, skipped)
