"""The shipped shortcut benchmark (experiments/shortcut.yaml) meets its calibration targets on seed 0 (slow:
two short trainings, about 1.5 minutes each on 2 free CPU cores).

Targets (issue 9): unregularised AttnMel-CNN reaches validation AUC >= 0.95 (validation shares the training
correlation) but <= 0.75 on the reversed test; the same network trained on the artefact-free set (same
lesions, same test splits) reaches >= 0.90 on that reversed test. The AUCs are recomputed here with
scikit-learn from the written predictions and the labels.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from attnmel import config as config_mod
from attnmel.data.readers import read_split
from attnmel.train import run as run_mod

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _auc(run_dir: Path, root: Path, split: str) -> float:
    labels = {s.image_id: s.label for s in read_split("synthetic", root, split).samples}
    name = "predictions.csv" if split == "test" else f"predictions_{split}.csv"
    with open(run_dir / name, newline="") as f:
        rows = list(csv.DictReader(f))
    return float(roc_auc_score([labels[r["image_id"]] for r in rows], [float(r["melanoma"]) for r in rows]))


@pytest.mark.slow
def test_shortcut_benchmark_calibration(tmp_path):
    runs = {}
    for name, extra in (("shortcut", []), ("control", ["data.synthetic.train=absent", "data.synthetic.val=absent"])):
        root = tmp_path / f"data-{name}"
        cfg = config_mod.load_config(EXPERIMENTS / "shortcut.yaml", [
            f"data.root={root}", f"out_dir={tmp_path}", f"name={name}", f"data.cache_dir={tmp_path / 'cache'}",
            "seed=0", *extra])
        runs[name] = (run_mod.train(cfg), root)
    shortcut, root = runs["shortcut"]
    control, control_root = runs["control"]
    assert _auc(shortcut, root, "val") >= 0.95
    assert _auc(shortcut, root, "test_reversed") <= 0.75
    assert _auc(control, control_root, "test_reversed") >= 0.90
