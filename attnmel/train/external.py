"""A trained run on other data: an external dataset (``--dataset D --root DIR``) or the run's own data with
the keys that only describe it changed (``data.artefact_flags=...``), for evaluate and report.

The run's geometry and normalisation are kept whatever the data: the images of an external folder go through
the same centre crop, resize, crop and mean/std as the run's training images. Results of an external
dataset go under their own name (``external_<dataset>_<folder>``), never over the run's own test metrics.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from attnmel import config as config_mod
from attnmel.errors import AttnMelError

log = logging.getLogger("attnmel.train")

# Keys that describe the data, not what the model learned: evaluate and report take them on an existing run.
DATA_KEYS = ("data.artefact_flags", "data.artefact_masks", "data.label_column", "data.positive_class",
             "data.masks", "data.num_workers", "data.eval_batch_size")
# An external image whose shorter side is below this share of the run's input size is upsampled a lot: warned.
SMALL_IMAGE_SHARE = 0.5


@dataclass
class DataView:
    """The config to read the data with, the split to score, and the name results go under."""

    cfg: dict
    split: str
    tag: str = ""  # "" for the run's own data; else "external_<dataset>_<folder>"

    def suffix(self, split: str | None = None) -> str:
        """The metrics.json suffix of the scored split: "" for the run's test split, ``_val``, ``_<tag>``."""
        if self.tag:
            return f"_{self.tag}"
        split = split or self.split
        return "" if split == "test" else f"_{split}"


def data_view(cfg: dict, split: str, overrides: Iterable[str] = (), dataset: str | None = None,
              root: str | Path | None = None) -> DataView:
    """The run's config with ``overrides`` (data-describing keys only) and, for external data, the other
    dataset and root; the run's mean/std are pinned first (a null mean means the *training* set's)."""
    from attnmel.data.readers import dataset_info
    from attnmel.data.transforms import normalization_from_cfg

    out = copy.deepcopy(cfg)
    flat = config_mod.parse_overrides(list(overrides))
    for key in _dotted(flat):
        if key not in DATA_KEYS:
            raise AttnMelError(f"command line: {key} cannot change on a trained run (only keys that describe the "
                               f"data may: {', '.join(DATA_KEYS)})")
    out = config_mod.merge(out, flat, schema=config_mod.defaults(), source="command line")
    if (dataset is None) != (root is None):
        raise AttnMelError("give --dataset and --root together (the external data to score)")
    if dataset is None:
        config_mod.validate(out)
        return DataView(out, split)
    info = dataset_info(dataset)
    mean, std = normalization_from_cfg(cfg["data"])
    out["data"].update(dataset=dataset, root=str(root), mean=list(mean), std=list(std), split_file=None)
    if "data.masks" not in _dotted(flat):
        out["data"]["masks"] = None  # the run's predicted-mask folder belongs to its own dataset
    config_mod.validate(out)
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(root).expanduser().resolve().name) or "root"
    return DataView(out, "all" if "all" in info.splits else "test", f"external_{dataset}_{folder}")


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in tree.items():
        out += _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def warn_small_images(samples: Iterable[Any], image_size: int, root: Path) -> list[str]:
    """Warn (naming them) about images whose shorter side is far below the run's input size; returns their ids."""
    from attnmel.data.images import image_size as size_of

    small = [s.image_id for s in samples if min(size_of(s.image)) < SMALL_IMAGE_SHARE * image_size]
    if small:
        more = f", ... ({len(small)} in all)" if len(small) > 5 else ""
        log.warning("%s: %d image(s) are far below the run's input size %d px (shorter side < %d px): %s%s; "
                    "they are upsampled, which blurs them", root, len(small), image_size,
                    int(SMALL_IMAGE_SHARE * image_size), ", ".join(small[:5]), more)
    return small


@torch.inference_mode(False)
def attention_jaccard(model: torch.nn.Module, loader, melanoma_index: int) -> dict[str, float]:
    """Mean Jaccard of each attention layer's map against the lesion masks, over a loader with masks."""
    from attnmel.explain.attributions import explain_batch
    from attnmel.explain.maps import attention_quality

    per_method: dict[str, list[float]] = {}
    for batch in loader:
        ex = explain_batch(model, batch["image"], ("attention",), melanoma_index=melanoma_index)
        masks = list((batch["mask"][:, 0] > 0.5).numpy())
        q = attention_quality({k: list(v.numpy()) for k, v in ex.maps.items()}, masks)
        for method, mean in q["mean"].items():
            per_method.setdefault(method, []).extend([mean["jaccard"]] * len(masks))
    return {m: float(np.mean(v)) for m, v in per_method.items()}


def run_on_view(run: Any, view: DataView) -> Any:
    """The opened run (:class:`attnmel.train.inference.TrainedRun`) reading the view's data: the same model,
    device and precision, a new DataModule for the view's config. A ``model.svm`` run's SVM is fitted first on
    the run's own training split (if it is not yet), never on the view's data."""
    if view.cfg is run.cfg:
        return run
    import dataclasses

    from attnmel.train.masks import resolve_mask_source

    if run.uses_svm:
        run.svm()
    return dataclasses.replace(run, cfg=resolve_mask_source(view.cfg), _dm=None)
