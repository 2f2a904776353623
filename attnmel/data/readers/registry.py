"""The dataset registry: ``data.dataset`` -> one record per dataset (its reader and what it supports).

Register a reader ``read(root, split, num_classes, **options) -> DatasetIndex`` with
``@register_dataset(name, num_classes=(2, ...), options=(...))``, as models register with
``@register_model`` (:mod:`attnmel.models.registry`). ``num_classes``: the class counts the dataset
supports, the first the default (melanoma vs rest); ``options``: the reader options (beyond the ones every
reader takes, :data:`COMMON_OPTIONS`) that apply to it, so ``read_split`` can refuse the others by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from attnmel.data.samples import SPLITS, DatasetIndex
from attnmel.registry import Registry

Reader = Callable[..., DatasetIndex]

# Reader options, each with the config key a user sets it by (None: no config key, a caller's option).
OPTION_KEYS: dict[str, str | None] = {
    "validate": None, "cache_dir": "data.cache_dir", "labels_optional": None,
    "val_fraction": "data.val_fraction", "test_fraction": None, "seed": None, "split_file": "data.split_file",
    "label_column": "data.label_column", "positive_class": "data.positive_class",
}
# Options every dataset is given without error: read_split handles ``validate``; the others are hints that
# reach only the readers listing them (where a drawn split may be written; whether a missing label file is
# acceptable, for segmentation).
COMMON_OPTIONS = ("validate", "cache_dir", "labels_optional")


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about one dataset: its reader, class counts, reader options and kind."""

    name: str
    read: Reader
    num_classes: tuple[int, ...]
    options: tuple[str, ...] = ()
    segmentation_only: bool = False  # no class labels: for segmentation only
    attributes: bool = False  # segmentation target: the five ISIC 2018 Task 2 attribute masks
    extra_splits: tuple[str, ...] = ()  # splits beyond train/val/test (the synthetic shortcut tests)

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS + self.extra_splits

    def accepts(self, option: str) -> bool:
        """Whether ``read_split`` lets ``option`` through for this dataset."""
        return option in COMMON_OPTIONS or option in self.options


DATASET_REGISTRY: Registry[DatasetInfo] = Registry("dataset", key="data.dataset")


def register_dataset(name: str, num_classes: tuple[int, ...], options: tuple[str, ...] = (), *,
                     segmentation_only: bool = False, attributes: bool = False,
                     extra_splits: tuple[str, ...] = ()) -> Callable[[Reader], Reader]:
    """Decorator: register ``read`` as the reader of ``data.dataset=name``; returns it unchanged."""
    unknown = [o for o in options if o not in OPTION_KEYS]
    if unknown:
        raise ValueError(f"dataset '{name}': unknown reader options {unknown}")

    def add(read: Reader) -> Reader:
        DATASET_REGISTRY.register(name)(DatasetInfo(name, read, tuple(num_classes), tuple(options),
                                                    segmentation_only, attributes, tuple(extra_splits)))
        return read

    return add


def dataset_info(name: str) -> DatasetInfo:
    """The record of ``name`` (unknown: one line listing the known datasets)."""
    return DATASET_REGISTRY.get(name)


def option_name(option: str) -> str:
    """How a message names a reader option: its config key where it has one."""
    return OPTION_KEYS.get(option) or option


def options_from_config(dataset: str, data_cfg: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The reader options a run's ``data`` section sets for ``dataset``.

    A key left at its default is passed only where it applies (``data.val_fraction`` is always in a config);
    a key the user set for a dataset it does not apply to is passed, so ``read_split`` refuses it by name.
    """
    info = dataset_info(dataset)
    out: dict[str, Any] = {}
    for option, key in OPTION_KEYS.items():
        if key is None or option == "cache_dir":
            continue
        leaf = key.split(".", 1)[1]
        value = data_cfg.get(leaf)
        if value is None or (value == defaults.get(leaf) and not info.accepts(option)):
            continue
        out[option] = value
    return out
