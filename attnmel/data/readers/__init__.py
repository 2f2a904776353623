"""Dataset readers: a folder as users download it -> a :class:`~attnmel.data.samples.DatasetIndex`.

``read_split(dataset, root, split, num_classes=2, **opts)`` is the one entry point. Readers list files and
parse label CSVs only (cheap); ``validate=True`` also opens every image, mask and dermoscopic-feature file.
Each dataset is one record in :data:`~attnmel.data.readers.registry.DATASET_REGISTRY`, registered by its
reader with ``@register_dataset`` (its class counts, the options that apply to it, its kind).

Options (``opts``); one that does not apply to the dataset is a one-line error naming it:
  validate       every dataset: open every file (full decode; mask size vs image size); unreadable images
                 are skipped
  cache_dir      every dataset: where a drawn split is stored (never in the dataset root; see readers.splits),
                 default .cache/attnmel
  labels_optional  every dataset (used by isic2016 / isic2017): without the Part 3 label CSV (a Part 1-only
                 download, for segmentation) every image gets label 0 instead of an error
  val_fraction   isic2016 / ham10000 / isic2019 / isic2020 / folder: share of the drawn validation split
  test_fraction  ham10000 / isic2019 / isic2020 / folder: share of the drawn test split (default 0.2)
  seed           seed of the drawn split (default 0). Not the run seed: the split is stored in the cache folder
                 and shared by every run
  split_file     isic2019 / isic2020: a user's split (CSV: image or lesion_id/patient_id, split) instead of
                 the drawn one; a lesion or patient in two splits is an error
  label_column, positive_class   folder: the diagnosis column of labels.csv and its melanoma value
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Importing a reader module registers its dataset(s), in this order.
from attnmel.data.readers import (  # noqa: F401
    folder,
    generated,
    ham10000,
    isic2016,
    isic2017,
    isic2018,
    isic2018_task2,
    isic2018_task3,
    isic2019,
    isic2020,
)
from attnmel.data.readers._common import check_num_classes
from attnmel.data.readers.registry import (
    COMMON_OPTIONS,
    DATASET_REGISTRY,
    OPTION_KEYS,
    DatasetInfo,
    dataset_info,
    option_name,
    options_from_config,
    register_dataset,
)
from attnmel.data.readers.validate import validate_index
from attnmel.data.samples import DatasetIndex
from attnmel.errors import AttnMelError

__all__ = ["ATTRIBUTES", "DATASETS", "DatasetInfo", "dataset_info", "known_splits", "options_from_config",
           "read_split", "register_dataset"]

DATASETS = DATASET_REGISTRY.names()
ATTRIBUTES = isic2018_task2.ATTRIBUTES


def known_splits(dataset: str) -> tuple[str, ...]:
    """The splits ``read_split`` accepts for ``dataset``: train/val/test, and for synthetic the extra tests."""
    return dataset_info(dataset).splits


def read_split(dataset: str, root: str | Path, split: str, num_classes: int = 2, **opts: Any) -> DatasetIndex:
    """Index one split (``train``, ``val``, ``test``) of a dataset folder; see the module doc for ``opts``."""
    info = dataset_info(dataset)
    if split not in info.splits:
        raise AttnMelError(f"unknown split {split!r} (known: {', '.join(info.splits)})")
    unknown = sorted(set(opts) - set(OPTION_KEYS))
    if unknown:
        raise AttnMelError(f"unknown reader option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                           f"(known: {', '.join(OPTION_KEYS)})")
    opts = {k: v for k, v in opts.items() if v is not None}
    for option in opts:
        if not info.accepts(option):
            takes = ", ".join(option_name(o) for o in info.options) or "none"
            raise AttnMelError(f"{option_name(option)} does not apply to dataset {dataset} "
                               f"(its options: {takes})")
    check_num_classes(dataset, int(num_classes), info.num_classes)
    validate = bool(opts.pop("validate", False))
    # The hints every dataset is given (COMMON_OPTIONS) reach only the readers that list them.
    opts = {k: v for k, v in opts.items() if k not in COMMON_OPTIONS or k in info.options}
    index = info.read(root, split, int(num_classes), **opts)
    return validate_index(index) if validate else index

