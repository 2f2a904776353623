"""The shortcut sweep file, and the summary's side-by-side test conditions (reversed-test AUC, DeLong)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from attnmel.sweep import summary as summary_mod
from attnmel.sweep.spec import load_sweep, plan_runs
from attnmel.sweep.summary import build_summary, collect, csv_text, markdown

REPO = Path(__file__).resolve().parents[2]
N = 80
Y = (np.arange(N) % 3 == 0).astype(int)


def test_shipped_shortcut_sweep():
    spec = load_sweep(REPO / "experiments" / "sweeps" / "shortcut.yaml", "synthetic")
    assert {"none", "lesion", "background", "kl", "outside", "rrr", "gap"} <= {a.name for a in spec.arms}
    assert spec.seeds == [0, 1, 2] and spec.baseline == "none"
    plans = {p.arm: p.cfg for p in plan_runs(spec, "sweeps") if p.seed == 0}
    assert plans["gap"]["model"]["gap_path"] == "remove" and plans["none"]["model"]["gap_path"] == "keep"
    syn = plans["none"]["data"]["synthetic"]
    assert syn["extra_tests"] == ["reversed", "absent"] and syn["val"] == "shortcut"
    assert plans["control"]["data"]["synthetic"]["train"] == "absent"
    assert plans["control"]["data"]["root"] != plans["none"]["data"]["root"]


def _write_run(run_dir: Path, scores: dict[str, np.ndarray]) -> None:
    run_dir.mkdir(parents=True)
    metrics = {}
    for split, s in scores.items():
        ids = [f"{split}_{i}" for i in range(N)]
        name = "predictions.csv" if split == "test" else f"predictions_{split}.csv"
        (run_dir / name).write_text("image_id,other,melanoma\n" + "".join(
            f"{i},{float(1 - q)!r},{float(q)!r}\n" for i, q in zip(ids, s)))
        key = "classification" if split == "test" else f"classification_{split}"
        metrics[key] = {"auc": float(roc_auc_score(Y, s)), "average_precision": 0.5, "sensitivity": 0.5,
                        "specificity": 0.5, "balanced_accuracy": 0.5}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_summary_shows_the_reversed_test_with_delong(tmp_path):
    spec = load_sweep(REPO / "experiments" / "sweeps" / "shortcut.yaml", "synthetic")
    rng = np.random.default_rng(0)
    reversed_auc = {"none": [], "gap": []}
    for arm, signal in (("none", -1.5), ("gap", 2.0)):  # none follows the shortcut: reversed scores invert
        for seed in spec.seeds:
            rev = 1 / (1 + np.exp(-(Y * signal + rng.normal(0, 1, N))))
            test = 1 / (1 + np.exp(-(Y * 2.0 + rng.normal(0, 1, N))))
            _write_run(tmp_path / arm / f"seed{seed}", {"test": test, "test_reversed": rev, "val": test})
            reversed_auc[arm].append(roc_auc_score(Y, rev))
    labels = {split: {f"{split}_{i}": int(y) for i, y in enumerate(Y)} for split in ("test", "test_reversed")}
    records = collect(tmp_path, spec)
    summary = build_summary(tmp_path, spec, records, labels["test"], n_resamples=50,
                            split_labels={"test_reversed": labels["test_reversed"]})
    assert summary["splits"] == ["val", "test_reversed"]
    arms = {a["name"]: a for a in summary["arms"]}
    gap = arms["gap"]
    assert gap["splits"]["test_reversed"]["auc"]["mean"] == pytest.approx(np.mean(reversed_auc["gap"]))
    t = gap["tests"]["auc_splits"]["test_reversed"]
    # DeLong on the seed-mean AUC: its delta is the difference of the mean per-seed AUCs (sklearn's)
    assert t["delta"] == pytest.approx(np.mean(reversed_auc["gap"]) - np.mean(reversed_auc["none"]))
    assert t["p"] < 1e-6 and set(t["per_seed_p"]) == {0, 1, 2}
    assert "auc_splits" not in arms["lesion"]["tests"]  # no run finished: no test

    md = markdown(summary)
    assert "Test conditions" in md and "AUC test reversed" in md and "ΔAUC test reversed vs none" in md
    section = md[md.index("## Test conditions"):]
    row = next(line for line in section.splitlines() if line.startswith("| No GAP(pool-5) path (ours) | 3/3 |"))
    assert f"{np.mean(reversed_auc['gap']):.3f} ±" in row and "(p=<0.001)" in row
    rows = {r["arm"]: r for r in csv.DictReader(csv_text(summary).splitlines())}
    assert float(rows["gap"]["auc_test_reversed_mean"]) == pytest.approx(np.mean(reversed_auc["gap"]))
    assert float(rows["gap"]["p_auc_test_reversed_delong"]) == pytest.approx(t["p"])
    assert "gap,none,auc_test_reversed,0 1 2," in summary_mod.tests_csv_text(summary)
