"""Dataset readers: a folder as users download it -> a :class:`~attnmel.data.samples.DatasetIndex`.

``read_split(dataset, root, split, num_classes=2, **opts)`` is the one entry point. Readers list files and
parse label CSVs only (cheap); ``validate=True`` also opens every image, mask and dermoscopic-feature file.

Options (``opts``); a reader ignores those that do not apply to its dataset:
  validate       open every file (full decode; mask size vs image size); unreadable images are skipped
  val_fraction   isic2016 / ham10000: share of the drawn validation split (default 0.2)
  test_fraction  ham10000: share of the drawn test split (default 0.2)
  seed           isic2016 / ham10000: seed of the drawn split (default 0). Not the run seed: the split is
                 written to disk and shared by every run
  cache_dir      where a drawn split is stored (never in the dataset root; see readers.splits), default
                 .cache/attnmel
  labels_optional  isic2016 / isic2017: without the Part 3 label CSV (a Part 1-only download, for
                 segmentation) every image gets label 0 instead of an error
  split_file     isic2019 / isic2020: a user's split (CSV: image or lesion_id/patient_id, split) instead of
                 the drawn one; a lesion or patient in two splits is an error
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable

from attnmel.data.readers import (
    ham10000,
    isic2016,
    isic2017,
    isic2018,
    isic2018_task2,
    isic2018_task3,
    isic2019,
    isic2020,
)
from attnmel.data.readers.validate import validate_index
from attnmel.data.samples import SPLITS, DatasetIndex
from attnmel.errors import AttnMelError, file_error

DATASETS = ("synthetic", "isic2017", "isic2016", "ham10000", "isic2018_task1", "isic2018_task2", "isic2018_task3",
            "isic2019", "isic2020", "synthetic_attributes")

# The class counts each dataset supports (the first is the default, melanoma vs rest).
NUM_CLASSES: dict[str, tuple[int, ...]] = {
    "synthetic": (2, 3),
    "isic2017": (2, 3),
    "isic2016": (2,),
    "ham10000": (2, 7),
    "isic2018_task1": (2, 1),
    "isic2018_task2": (2, 1),
    "isic2018_task3": (2, 7),
    "isic2019": (2, 8),
    "isic2020": (2,),
    "synthetic_attributes": (2, 1),
}

# Datasets without class labels: for segmentation only.
SEGMENTATION_ONLY = frozenset({"isic2018_task1", "isic2018_task2", "synthetic_attributes"})

# Datasets whose segmentation target is the five ISIC 2018 Task 2 attribute masks, not the lesion mask.
ATTRIBUTE_DATASETS = frozenset({"isic2018_task2", "synthetic_attributes"})
ATTRIBUTES = isic2018_task2.ATTRIBUTES

OPTIONS = ("validate", "val_fraction", "test_fraction", "seed", "cache_dir", "labels_optional", "split_file")


def _check_generated(root: str | Path, command: str = "attnmel data synth") -> None:
    """A generated set's folder exists, is not empty, and its generation finished."""
    from attnmel.data.synthetic import MARKER

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


def _synthetic(root: str | Path, split: str, num_classes: int = 2) -> DatasetIndex:
    _check_generated(root)
    return isic2017.read(root, split, num_classes, dataset="synthetic", split_tags=synthetic_split_tags())


def synthetic_split_tags() -> dict[str, tuple[str, ...]]:
    """Folder tags of the synthetic set's extra test splits (``test_reversed`` -> ``Test_Reversed``, ...)."""
    from attnmel.data.synthetic import EXTRA_TEST_TAGS

    return {split: (tag,) for split, tag in EXTRA_TEST_TAGS.items()}


def known_splits(dataset: str) -> tuple[str, ...]:
    """The splits ``read_split`` accepts for ``dataset``: train/val/test, and for synthetic the extra tests."""
    return SPLITS + tuple(synthetic_split_tags()) if dataset == "synthetic" else SPLITS


def _synthetic_attributes(root: str | Path, split: str, num_classes: int = 2) -> DatasetIndex:
    _check_generated(root, "attnmel data synth --attributes")
    return isic2018_task2.read(root, split, num_classes, dataset="synthetic_attributes")


_READERS: dict[str, Callable[..., DatasetIndex]] = {
    "synthetic": _synthetic,
    "isic2017": isic2017.read,
    "isic2016": isic2016.read,
    "ham10000": ham10000.read,
    "isic2018_task1": isic2018.read,
    "isic2018_task2": isic2018_task2.read,
    "isic2018_task3": isic2018_task3.read,
    "isic2019": isic2019.read,
    "isic2020": isic2020.read,
    "synthetic_attributes": _synthetic_attributes,
}


def read_split(dataset: str, root: str | Path, split: str, num_classes: int = 2, **opts: Any) -> DatasetIndex:
    """Index one split (``train``, ``val``, ``test``) of a dataset folder; see the module doc for ``opts``."""
    if dataset not in _READERS:
        raise AttnMelError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    if split not in known_splits(dataset):
        raise AttnMelError(f"unknown split {split!r} (known: {', '.join(known_splits(dataset))})")
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise AttnMelError(f"unknown reader option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                           f"(known: {', '.join(OPTIONS)})")
    validate = bool(opts.pop("validate", False))
    reader = _READERS[dataset]
    accepted = inspect.signature(reader).parameters
    kwargs = {k: v for k, v in opts.items() if k in accepted and v is not None}
    index = reader(root, split, int(num_classes), **kwargs)
    return validate_index(index) if validate else index
