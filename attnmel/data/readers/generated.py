"""The generated sets: the synthetic lesions (ISIC 2017 layout, with extra shortcut test splits) and the
synthetic attributes (ISIC 2018 Task 2 layout). Their readers are the official layouts' readers plus a check
that the generation finished; the folder tags of the extra test splits live here, beside their reader."""

from __future__ import annotations

import json
from pathlib import Path

from attnmel.data.readers import isic2017, isic2018_task2
from attnmel.data.readers.registry import register_dataset
from attnmel.data.samples import DatasetIndex
from attnmel.errors import file_error

# The shortcut conditions of a synthetic split; each may also be an extra test split on the test lesions.
CONDITIONS = ("shortcut", "balanced", "reversed", "absent")
EXTRA_TEST_TAGS = {f"test_{c}": f"Test_{c.capitalize()}" for c in CONDITIONS}
# Written last by the generators (complete: true): an interrupted generation is detectable.
MARKER = "attnmel_synthetic.json"


def check_generated(root: str | Path, command: str = "attnmel data synth") -> None:
    """A generated set's folder exists, is not empty, and its generation finished."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir() or not any(root_path.iterdir()):
        what = "dataset folder is empty" if root_path.is_dir() else "dataset folder not found"
        raise file_error(root_path, f"{what} (make it with `{command} --out {root_path}`)")
    marker = root_path / MARKER
    if marker.is_file():
        try:
            complete = json.loads(marker.read_text(encoding="utf-8")).get("complete", False)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            complete = False
        if not complete:
            raise file_error(root_path, "synthetic dataset is incomplete (its generation was interrupted): "
                                        f"run `{command} --out {root_path}` again")


@register_dataset("synthetic", num_classes=(2, 3), extra_splits=tuple(EXTRA_TEST_TAGS))
def read_synthetic(root: str | Path, split: str, num_classes: int = 2) -> DatasetIndex:
    check_generated(root)
    return isic2017.read(root, split, num_classes, dataset="synthetic",
                         split_tags={s: (t,) for s, t in EXTRA_TEST_TAGS.items()})


@register_dataset("synthetic_attributes", num_classes=(2, 1), segmentation_only=True, attributes=True)
def read_synthetic_attributes(root: str | Path, split: str, num_classes: int = 2) -> DatasetIndex:
    check_generated(root, "attnmel data synth --attributes")
    return isic2018_task2.read(root, split, num_classes, dataset="synthetic_attributes")
