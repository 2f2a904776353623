"""The tiny synthetic base config the sweep tests train from (one epoch, 64 px, width 0.125)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def base_config(tmp: Path, **trainer: Any) -> Path:
    """Write ``tmp/exp.yaml``; ``trainer`` adds or replaces ``trainer.*`` keys."""
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"dataset": "synthetic", "root": str(tmp / "data"), "center_crop": 1.0, "resize": 72,
                 "image_size": 64, "batch_size": 8, "num_workers": 0, "oversample": 1, "cache": False,
                 "synthetic": {"n": 60, "size": 64, "spurious": True, "seed": 0}},
        "model": {"name": "attnmel", "pretrained": "none", "width": 0.125},
        "optim": {"name": "adamw", "lr": 0.001},
        "trainer": {"max_epochs": 1, "progress_bar": False, "accelerator": "cpu", **trainer},
    }))
    return path
