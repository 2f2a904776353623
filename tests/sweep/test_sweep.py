"""Sweeps: DeLong and paired bootstrap, sweep-file validation, summary statistics, resume and failures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from attnmel.errors import AttnMelError
from attnmel.sweep import one as sweep_one
from attnmel.sweep import run as sweep_run
from attnmel.sweep import stats
from attnmel.sweep.spec import load_sweep, plan_runs
from attnmel.sweep.summary import build_summary, collect, read_predictions, write_summary
from tests.sweep._configs import base_config

REPO = Path(__file__).resolve().parents[2]


# -- DeLong ----------------------------------------------------------------------------------------
def _slow_components(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """O(m*n) structural components straight from DeLong et al. (1988): psi(x, y) = 1, 1/2, 0."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]).astype(float) + 0.5 * (pos[:, None] == neg[None, :])
    return float(psi.mean()), psi.mean(axis=1), psi.mean(axis=0)


def _slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """(var a, var b, cov, p) by the slow route; (S, N) scores compare seed means of AUC and components."""

    def mean_components(s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        parts = [_slow_components(y, row) for row in np.atleast_2d(s)]
        return (float(np.mean([p[0] for p in parts])), np.mean([p[1] for p in parts], axis=0),
                np.mean([p[2] for p in parts], axis=0))

    auc_a, v10a, v01a = mean_components(a)
    auc_b, v10b, v01b = mean_components(b)
    m, n = len(v10a), len(v01a)
    s10 = np.cov(np.stack([v10a, v10b]))
    s01 = np.cov(np.stack([v01a, v01b]))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (auc_a - auc_b) / math.sqrt(var)
    p = math.erfc(abs(z) / math.sqrt(2))
    return s[0, 0], s[1, 1], s[0, 1], p


def _scores(n: int = 120, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    a = y * 1.0 + rng.normal(0, 1.0, n)
    b = y * 0.6 + rng.normal(0, 1.0, n)
    if ties:  # coarse scores: many ties, as with rounded probabilities
        a, b = np.round(a, 0), np.round(b, 0)
    return y, a, b


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_sklearn_and_slow_implementation(ties: bool) -> None:
    y, a, b = _scores(ties=ties)
    auc, var = stats.delong_auc_variance(y, a)
    assert auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    var_a, var_b, cov, p = _slow_delong(y, a, b)
    assert var == pytest.approx(var_a, rel=1e-10)
    _, v10, v01 = stats.structural_components(y, np.stack([a, b]))
    full = stats.delong_covariance(v10, v01)
    assert full[1, 1] == pytest.approx(var_b, rel=1e-10)
    assert full[0, 1] == pytest.approx(cov, rel=1e-10)
    res = stats.delong_test(y, a, b)
    assert res.auc_a == pytest.approx(roc_auc_score(y, a))
    assert res.auc_b == pytest.approx(roc_auc_score(y, b))
    assert res.p_value == pytest.approx(p, rel=1e-8)


def test_delong_identical_scores_p_one_and_clear_difference_small() -> None:
    y, a, _ = _scores()
    assert stats.delong_test(y, a, a).p_value == 1.0
    assert stats.delong_test(y, a, a.copy()).delta == 0.0
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, len(y))
    assert stats.delong_test(y, y * 3.0 + noise, noise).p_value < 1e-6


def test_delong_several_seeds_compares_seed_mean_auc() -> None:
    y, a, b = _scores(200, seed=3)
    _, a2, b2 = _scores(200, seed=4)
    res = stats.delong_test(y, np.stack([a, a2]), np.stack([b, b2]))
    assert res.auc_a == pytest.approx((roc_auc_score(y, a) + roc_auc_score(y, a2)) / 2)
    assert res.auc_b == pytest.approx((roc_auc_score(y, b) + roc_auc_score(y, b2)) / 2)
    assert res.p_value == pytest.approx(_slow_delong(y, np.stack([a, a2]), np.stack([b, b2]))[3], rel=1e-8)
    assert res.n_seeds == 2
    with pytest.raises(AttnMelError):
        stats.delong_test(np.ones(len(y)), a, b)


# -- paired bootstrap ------------------------------------------------------------------------------
def test_paired_bootstrap_identical_and_different() -> None:
    rng = np.random.default_rng(0)
    v = rng.random(80)
    same = stats.paired_bootstrap(v, v.copy())
    assert same.p_value == 1.0 and same.delta == 0.0
    diff = stats.paired_bootstrap(v + 0.2, v)
    assert diff.delta == pytest.approx(0.2)
    assert diff.p_value <= 2.0 / (stats.DEFAULT_RESAMPLES + 1) + 1e-12
    # Noisy, no real difference: p far from 0.
    noisy = stats.paired_bootstrap(v + rng.normal(0, 0.3, 80) * 0.0 + rng.normal(0, 0.05, 80), v)
    assert noisy.p_value > 0.05
    # Fixed seed: repeatable.
    assert stats.paired_bootstrap(v + 0.01, v).p_value == stats.paired_bootstrap(v + 0.01, v).p_value


def test_average_precision_rows_matches_sklearn() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random((6, 50)) < 0.3).astype(int)
    s = np.round(rng.random((6, 50)), 1)  # many ties
    ours = stats.average_precision_rows(y, s)
    for k in range(6):
        assert ours[k] == pytest.approx(average_precision_score(y[k], s[k]), abs=1e-12)
    assert np.isnan(stats.average_precision_rows(np.zeros((1, 5)), rng.random((1, 5)))[0])


def test_paired_bootstrap_average_precision() -> None:
    y, a, b = _scores(150, seed=5)
    stat = stats.average_precision_statistic(y)
    res = stats.paired_bootstrap(a, b, stat, n_resamples=300, strata=y)
    assert res.value_a == pytest.approx(average_precision_score(y, a))
    assert res.value_b == pytest.approx(average_precision_score(y, b))
    assert res.n_resamples == 300 and res.ci_low <= res.delta <= res.ci_high
    same = stats.paired_bootstrap(a, a, stat, n_resamples=200, strata=y)
    assert same.p_value == 1.0
    # Stratified resamples keep the class counts.
    idx = stats.resample_indices(len(y), 5, 0, strata=y)
    assert all(y[i].sum() == y.sum() for i in idx)


def test_mean_std() -> None:
    assert stats.mean_std([0.8, 0.9, 1.0]) == (pytest.approx(0.9), pytest.approx(0.1), 3)
    assert stats.mean_std([0.7, None]) == (0.7, None, 1)
    assert stats.mean_std([]) == (None, None, 0)


# -- sweep files -----------------------------------------------------------------------------------
def _sweep_file(tmp: Path, arms: list[dict[str, Any]], **extra: Any) -> Path:
    base = base_config(tmp)
    doc = {"base": {"synthetic": base.name}, "seeds": [0], "baseline": arms[0]["name"], "arms": arms, **extra}
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_shipped_sweep_files_validate() -> None:
    for name in ("paper", "regularisers", "attention"):
        for ds in ("synthetic", "isic2017", "isic2016"):
            spec = load_sweep(REPO / "experiments" / "sweeps" / f"{name}.yaml", ds)
            plans = plan_runs(spec, "sweeps")
            assert plans and all(p.run_dir.parts[-3] == name for p in plans)
            assert len(spec.seeds) == 3
            assert spec.jobs == (2 if ds == "synthetic" else 1)
    reg = load_sweep(REPO / "experiments" / "sweeps" / "regularisers.yaml", "synthetic")
    assert {"none", "lesion", "dermo", "background", "kl", "outside", "entropy", "rrr"} <= {a.name for a in reg.arms}
    paper16 = load_sweep(REPO / "experiments" / "sweeps" / "paper.yaml", "isic2016")
    assert "attnmel_dermo" not in {a.name for a in paper16.arms}  # no Dermo masks in ISIC 2016
    assert paper16.paper_numbers["attnmel"]["auc"] == 0.852


def test_sweep_layers_and_precedence(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, [
        {"name": "a", "overrides": {"loss.regulariser": "lesion", "loss.weights": {"pool3": 0.5}}},
        {"name": "b", "overrides": {"loss": {"regulariser": "kl"}},
         "datasets": {"synthetic": {"trainer.max_epochs": 3}}},
    ], overrides={"trainer.max_epochs": 2, "loss.weights": {"pool4": 1.0}}, seeds=[0, 1],
        datasets={"synthetic": {"jobs": 3}})
    spec = load_sweep(path)
    assert spec.jobs == 3
    plans = plan_runs(spec, tmp_path / "out", ["optim.lr=0.5"])
    assert [(p.arm, p.seed) for p in plans] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    a0, b1 = plans[0].cfg, plans[3].cfg
    assert a0["loss"]["weights"] == {"pool3": 0.5}  # free-form mappings are replaced, not mixed
    assert b1["loss"]["weights"] == {"pool4": 1.0}
    assert a0["trainer"]["max_epochs"] == 2 and b1["trainer"]["max_epochs"] == 3
    assert a0["optim"]["lr"] == 0.5 and b1["seed"] == 1
    assert plans[3].run_dir == tmp_path / "out" / "tiny" / "b" / "seed1"


def test_sweep_file_unknown_key(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, [{"name": "a"}], armz=[])
    with pytest.raises(AttnMelError, match=r"tiny\.yaml: unknown sweep key 'armz'") as e:
        load_sweep(path)
    assert "\n" not in str(e.value)
    path = _sweep_file(tmp_path, [{"name": "a", "overrides": {"loss.regularizer": "lesion"}}])
    with pytest.raises(AttnMelError, match=r"tiny\.yaml.*arms\[a\].*unknown config key 'loss.regularizer'"):
        load_sweep(path)
    path = _sweep_file(tmp_path, [{"name": "a", "overide": {}}])
    with pytest.raises(AttnMelError, match=r"unknown sweep key 'arms\[a\]\.overide'"):
        load_sweep(path)


def test_sweep_file_duplicate_arm_and_bad_baseline(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, [{"name": "a"}, {"name": "a"}])
    with pytest.raises(AttnMelError, match="duplicate arm name 'a'"):
        load_sweep(path)
    path = _sweep_file(tmp_path, [{"name": "a"}], baseline="zzz")
    with pytest.raises(AttnMelError, match="baseline 'zzz' is not an arm"):
        load_sweep(path)
    path = _sweep_file(tmp_path, [{"name": "a/b"}])
    with pytest.raises(AttnMelError, match="folder-safe"):
        load_sweep(path)
    with pytest.raises(AttnMelError, match="no base config for dataset 'isic2017'"):
        load_sweep(_sweep_file(tmp_path, [{"name": "a"}]), "isic2017")


# -- fabricated runs: summary numbers, resume, failures ----------------------------------------------
N_IMAGES = 40
LABELS = np.array([1 if i % 4 == 0 else 0 for i in range(N_IMAGES)])
IDS = [f"ISIC_{9000000 + i}" for i in range(N_IMAGES)]
# Hand-made per-run numbers: (arm, seed) -> (auc, ap, sens, spec, jaccard pool3, jaccard pool4).
FAKE = {
    ("base", 0): (0.80, 0.60, 0.70, 0.90, 0.30, 0.32),
    ("base", 1): (0.84, 0.64, 0.80, 0.80, 0.34, 0.36),
    ("good", 0): (0.90, 0.70, 0.75, 0.95, 0.50, 0.60),
    ("good", 1): (0.86, 0.66, 0.85, 0.85, 0.54, 0.70),
}


def _fake_scores(arm: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = 3.0 if arm == "good" else 0.5
    z = LABELS * signal + rng.normal(0, 1, N_IMAGES)
    return 1 / (1 + np.exp(-z))


def _fake_jaccard(arm: str, seed: int, layer: str) -> np.ndarray:
    target = FAKE[(arm, seed)][4 if layer == "pool3" else 5]
    rng = np.random.default_rng(100 + seed)
    v = rng.uniform(-0.1, 0.1, N_IMAGES)
    return target + (v - v.mean())  # mean exactly the hand value


def fake_train(cfg: dict, resume: bool = False) -> Path:
    """Write what train() writes: config, checkpoints, metrics.json (classification), predictions.csv."""
    run_dir = Path(cfg["out_dir"]) / cfg["name"]
    arm = run_dir.parent.name
    if arm == "bad":
        raise AttnMelError("training loss became nan at epoch 0, batch 3: stopped")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "checkpoints" / "best.ckpt").write_text("x")
    (run_dir / "checkpoints" / "last.ckpt").write_text("x")
    auc, ap, sens, spec, _, _ = FAKE.get((arm, cfg["seed"]), FAKE[("base", 0)])
    (run_dir / "metrics.json").write_text(json.dumps({"classification": {
        "auc": auc, "average_precision": ap, "sensitivity": sens, "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2}}))
    p = _fake_scores(arm, cfg["seed"])
    rows = ["image_id,other,melanoma"] + [f"{i},{float(1 - q)!r},{float(q)!r}" for i, q in zip(IDS, p)]
    (run_dir / "predictions.csv").write_text("\n".join(rows) + "\n")
    return run_dir


def fake_attention(run_dir: Path) -> None:
    arm, seed = run_dir.parent.name, int(run_dir.name.removeprefix("seed"))
    per_image, mean = [], {}
    for layer in ("pool3", "pool4"):
        j = _fake_jaccard(arm, seed, layer)
        method = f"attention:{layer}"
        per_image += [{"method": method, "image_id": i, "jaccard": float(v), "dice": 0.5, "pointing_game": 1.0,
                       "energy_inside": 0.4} for i, v in zip(IDS, j)]
        mean[method] = {"jaccard": float(j.mean()), "dice": 0.5, "pointing_game": 1.0, "energy_inside": 0.4}
    m = json.loads((run_dir / "metrics.json").read_text())
    m["attention"] = {"per_image": per_image, "mean": mean}
    (run_dir / "metrics.json").write_text(json.dumps(m))


def fake_labels(sweep_dir: Path, cfg: dict) -> Path:
    path = sweep_dir / "test_labels.csv"
    path.write_text("image_id,melanoma\n" + "".join(f"{i},{y}\n" for i, y in zip(IDS, LABELS)))
    return path


@pytest.fixture
def fake_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[str, int, bool]] = []

    def counting_train(cfg: dict, resume: bool = False) -> Path:
        calls.append((Path(cfg["out_dir"]).name, cfg["seed"], resume))
        return fake_train(cfg, resume)

    monkeypatch.setattr(sweep_one, "_train", counting_train)
    monkeypatch.setattr(sweep_one, "_score_attention", fake_attention)
    monkeypatch.setattr(sweep_run, "_prepare_data", lambda cfg: None)
    monkeypatch.setattr(sweep_run, "write_test_labels", fake_labels)
    monkeypatch.setattr("attnmel.sweep.summary._rebuild_index", lambda root: None)
    path = _sweep_file(tmp_path, [{"name": "base", "label": "Base", "paper": "attnmel"},
                                  {"name": "good", "label": "Good <b>"}, {"name": "bad"}], seeds=[0, 1])
    (tmp_path / "paper_numbers.yaml").write_text(yaml.safe_dump({"synthetic": {"attnmel": {"auc": 0.872, "ap": 0.655,
                                                                                   "jaccard_pool4": 0.3186}}}))
    return path, tmp_path / "out", calls


def _run(path: Path, out: Path, jobs: int | None = 1) -> int:
    from rich.console import Console

    return sweep_run.run_sweep(path, jobs=jobs, out_root=out, console=Console(file=open("/dev/null", "w")))


def test_failed_arm_reported_others_run_then_resume_skips(fake_sweep) -> None:
    path, out, calls = fake_sweep
    assert _run(path, out) == 1  # "bad" failed
    sweep_dir = out / "tiny"
    assert sorted(calls) == [("bad", 0, False), ("bad", 1, False), ("base", 0, False), ("base", 1, False),
                             ("good", 0, False), ("good", 1, False)]
    err = (sweep_dir / "bad" / "seed0" / "error.txt").read_text()
    assert err.startswith("training loss became nan")
    md = (sweep_dir / "summary.md").read_text()
    assert "`bad` seed 0: failed (training loss became nan" in md and "`bad` seed 1" in md
    for name in ("summary.csv", "summary.html", "summary.json", "summary_tests.csv", "summary_auc_vs_jaccard.png"):
        assert (sweep_dir / name).is_file(), name

    # Resume: finished runs are skipped; an interrupted one (last.ckpt, no metrics) resumes.
    calls.clear()
    (sweep_dir / "good" / "seed1" / "metrics.json").unlink()
    assert _run(path, out) == 1
    assert sorted(calls) == [("bad", 0, False), ("bad", 1, False), ("good", 1, True)]

    # A run with test metrics but no attention section only gets its attention scored.
    calls.clear()
    m = json.loads((sweep_dir / "base" / "seed0" / "metrics.json").read_text())
    del m["attention"]
    (sweep_dir / "base" / "seed0" / "metrics.json").write_text(json.dumps(m))
    _run(path, out)
    assert ("base", 0, False) not in calls and ("base", 0, True) not in calls
    assert "attention" in json.loads((sweep_dir / "base" / "seed0" / "metrics.json").read_text())


def test_sweep_folder_of_another_dataset_is_refused(fake_sweep) -> None:
    path, out, calls = fake_sweep
    _run(path, out)
    record = out / "tiny" / "sweep.json"
    rec = json.loads(record.read_text())
    rec["dataset"] = "isic2017"
    record.write_text(json.dumps(rec))
    calls.clear()
    with pytest.raises(AttnMelError, match="holds the 'isic2017' runs of this sweep"):
        _run(path, out)
    assert calls == []  # nothing trained over the other dataset's runs


def test_summary_numbers_by_hand(fake_sweep) -> None:
    path, out, _ = fake_sweep
    _run(path, out)
    sweep_dir = out / "tiny"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    arms = {a["name"]: a for a in summary["arms"]}
    g = arms["good"]
    # Hand: mean(0.90, 0.86) = 0.88, sample std = |0.90 - 0.86| / sqrt(2).
    assert g["classification"]["auc"]["mean"] == pytest.approx(0.88)
    assert g["classification"]["auc"]["std"] == pytest.approx(0.04 / math.sqrt(2))
    assert g["classification"]["average_precision"]["mean"] == pytest.approx(0.68)
    assert g["classification"]["specificity"]["mean"] == pytest.approx(0.90)
    assert g["attention"]["pool4"]["jaccard"]["mean"] == pytest.approx(0.65)
    assert g["attention"]["pool4"]["jaccard"]["std"] == pytest.approx(0.10 / math.sqrt(2))
    assert arms["base"]["attention"]["pool3"]["jaccard"]["mean"] == pytest.approx(0.32)
    assert arms["base"]["paper"] == {"auc": 0.872, "ap": 0.655, "jaccard_pool4": 0.3186}
    assert arms["bad"]["seeds_missing"] == [0, 1] and arms["bad"]["classification"]["auc"]["mean"] is None

    # Paired tests: the fabricated "good" scores separate the classes much better, and its maps by 0.3.
    t = g["tests"]
    y = LABELS
    expect_p = _slow_delong(y, np.stack([_fake_scores("good", s) for s in (0, 1)]),
                            np.stack([_fake_scores("base", s) for s in (0, 1)]))[3]
    assert t["auc"]["p"] == pytest.approx(expect_p, rel=1e-6) and t["auc"]["p"] < 0.05
    assert t["jaccard"]["pool4"]["delta"] == pytest.approx(0.65 - 0.34)
    assert t["jaccard"]["pool4"]["p"] < 0.01
    assert "average_precision" in t and t["seeds"] == [0, 1]

    rows = {r["arm"]: r for r in csv.DictReader((sweep_dir / "summary.csv").read_text().splitlines())}
    assert float(rows["good"]["auc_mean"]) == pytest.approx(0.88)
    assert float(rows["base"]["jaccard_pool4_mean"]) == pytest.approx(0.34)
    assert rows["bad"]["auc_mean"] == "" and rows["bad"]["seeds_missing"] == "0 1"
    md = (sweep_dir / "summary.md").read_text()
    assert "| Good <b> | 2/2 | 0.680 ± 0.028 | 0.880 ± 0.028 |" in md
    assert "Table 3" in md and "Jaccard pool-4" in md
    assert "| Base | 2/2 | 0.620 ± 0.028 | 0.820 ± 0.028 | 0.750 ± 0.071 | 0.850 ± 0.071 | 0.655 | 0.872 |" in md
    assert "| Paper pool-4 |" in md and "| 0.3186 |" in md and "Paper pool-3" not in md
    page = (sweep_dir / "summary.html").read_text()
    assert "Good &lt;b&gt;" in page and "Good <b>" not in page  # autoescaped
    assert "data:image/png;base64," in page


def test_summary_links_reports_relative(fake_sweep) -> None:
    path, out, _ = fake_sweep
    _run(path, out)
    sweep_dir = out / "tiny"
    report = sweep_dir / "good" / "seed0" / "report" / "index.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html></html>")
    spec = load_sweep(path)
    write_summary(sweep_dir, spec, n_resamples=50)
    page = (sweep_dir / "summary.html").read_text()
    assert 'href="good/seed0/report/index.html"' in page
    recs = collect(sweep_dir, spec)
    assert [r.status for r in recs] == ["done", "done", "done", "done", "failed", "failed"]
    assert len(read_predictions(sweep_dir / "good" / "seed0" / "predictions.csv")) == N_IMAGES
    s = build_summary(sweep_dir, spec, recs, labels=None, n_resamples=50)
    assert "no AUC/AP test" in s["arms"][1]["tests"]["note"]


def test_wants_own_process_for_ddp() -> None:
    def cfg(**t: Any) -> dict:
        return {"trainer": {"devices": 1, "num_nodes": 1, "strategy": "auto", **t}}

    assert not sweep_run.wants_own_process(cfg())
    assert not sweep_run.wants_own_process(cfg(devices=[0]))
    assert sweep_run.wants_own_process(cfg(devices="auto"))
    assert sweep_run.wants_own_process(cfg(devices=2))
    assert sweep_run.wants_own_process(cfg(strategy="ddp"))
    assert sweep_run.wants_own_process(cfg(num_nodes=2))


def test_run_one_mismatched_folder_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _sweep_file(tmp_path, [{"name": "a", "overrides": {"loss.regulariser": "lesion"}}])
    plan = plan_runs(load_sweep(path), tmp_path / "out")[0]
    plan.run_dir.mkdir(parents=True)
    other = dict(plan.cfg, loss={**plan.cfg["loss"], "regulariser": "background"})
    (plan.run_dir / "config.yaml").write_text(yaml.safe_dump(other))
    res = sweep_run.run_one(plan, train_fn=fake_train, attention_fn=fake_attention)
    assert res.status == "failed" and "different loss" in res.error


# -- end to end at a tiny size -------------------------------------------------------------------------
@pytest.mark.slow
def test_two_arm_sweep_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # reports/index.html is rebuilt relative to the working directory
    path = _sweep_file(tmp_path, [{"name": "none", "overrides": {"loss.regulariser": "none"}},
                                  {"name": "lesion", "overrides": {"loss.regulariser": "lesion",
                                                                   "loss.weights": {"pool3": 0.5, "pool4": 0.5}}}],
                       overrides={"data.cache_dir": str(tmp_path / "cache")}, jobs=2)
    out = tmp_path / "out"
    assert _run(path, out, jobs=None) == 0  # the file's jobs: 2 spawned processes
    sweep_dir = out / "tiny"
    for arm in ("none", "lesion"):
        m = json.loads((sweep_dir / arm / "seed0" / "metrics.json").read_text())
        assert "auc" in m["classification"]
        assert (sweep_dir / arm / "seed0" / "checkpoints" / "best.ckpt").is_file()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert not summary["missing"]
    assert (sweep_dir / "test_labels.csv").is_file()
    assert "auc" in summary["arms"][1]["tests"]
    assert "pool4" in summary["arms"][1]["attention"] and "pool4" in summary["arms"][1]["tests"]["jaccard"]
    # The sweep asks for the report's numbers only: no page, no figures per run.
    assert m["attention"]["mean"] and "report" not in m
    assert not (sweep_dir / "none" / "seed0" / "report").exists()
    assert 'href="none/seed0/report/index.html"' not in (sweep_dir / "summary.html").read_text()
    assert "tiny/summary.html" in (tmp_path / "reports" / "index.html").read_text()
    # Second call: everything finished, nothing retrained; a page drawn since (attnmel report) is linked.
    from attnmel.report.build import build_report

    build_report(sweep_dir / "none" / "seed0", reports_root=None)
    calls = []
    monkeypatch.setattr(sweep_one, "_train", lambda cfg, resume=False: calls.append(cfg))
    assert _run(path, out, jobs=1) == 0 and calls == []
    assert 'href="none/seed0/report/index.html"' in (sweep_dir / "summary.html").read_text()


@pytest.mark.slow
def test_ddp_run_goes_to_its_own_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run asking for 2 CPU processes (DDP) trains in `python -m attnmel.sweep.run`, which Lightning relaunches."""
    monkeypatch.chdir(tmp_path)
    path = _sweep_file(tmp_path, [{"name": "none", "overrides": {"loss.regulariser": "none"}}],
                       overrides={"data.cache_dir": str(tmp_path / "cache"), "trainer.devices": 2,
                                  "trainer.strategy": "ddp", "trainer.accelerator": "cpu"})
    out = tmp_path / "out"
    assert _run(path, out) == 0
    m = json.loads((out / "tiny" / "none" / "seed0" / "metrics.json").read_text())
    assert "auc" in m["classification"] and m["attention"]["mean"]


def test_isic2017_cpu_sweep_file_has_the_issue_arms() -> None:
    spec = load_sweep(REPO / "experiments" / "sweeps" / "isic2017_cpu.yaml")
    assert spec.dataset == "isic2017" and spec.seeds == [0, 1, 2] and spec.baseline == "none"
    arms = {a.name: a.overrides for a in spec.arms}
    assert set(arms) == {"none", "lesion", "background", "gap_remove_lesion"}
    assert arms["gap_remove_lesion"]["model"]["gap_path"] == "remove"
    assert arms["gap_remove_lesion"]["loss"]["regulariser"] == "lesion"


def test_the_fp32_cpu_sweep_runs_the_same_arms_on_the_smaller_recipe() -> None:
    bf16 = load_sweep(REPO / "experiments" / "sweeps" / "isic2017_cpu.yaml")
    fp32 = load_sweep(REPO / "experiments" / "sweeps" / "isic2017_cpu_fp32.yaml")
    assert [(a.name, a.overrides) for a in fp32.arms] == [(a.name, a.overrides) for a in bf16.arms]
    assert (fp32.seeds, fp32.baseline, fp32.dataset) == (bf16.seeds, bf16.baseline, bf16.dataset)
    assert fp32.base.name == "isic2017_cpu_fp32.yaml" and bf16.base.name == "isic2017_cpu.yaml"


def test_attention_is_scored_on_validation_when_the_test_split_has_no_masks(make_isic2017_tree, tmp_path) -> None:
    from attnmel.config import defaults, dump
    from attnmel.sweep.summary import attention_split_note, attention_split_of

    root = make_isic2017_tree(tmp_path / "tree", counts={"train": (2, 1, 1), "val": (1, 1, 1)})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = defaults()
    cfg["data"].update(dataset="isic2017", root=str(root), cache_dir=str(tmp_path / "cache"))
    (run_dir / "config.yaml").write_text(dump(cfg))
    make_isic2017_tree(root, counts={"test": (1, 1, 0)}, masks=False, first_id=100)  # the test masks are not public
    assert sweep_one.attention_split(run_dir) == "val"
    make_isic2017_tree(root, counts={"test": (1, 1, 0)}, masks=True, first_id=100)
    assert sweep_one.attention_split(run_dir) == "test"

    scored = {"attention": {"available": True, "split": "val", "mean": {"attention:pool4": {"jaccard": 0.3}}}}
    unscored = {"attention": {"available": False, "split": "test", "mean": {}}}
    assert attention_split_of(scored) == "val" and attention_split_of(unscored) is None
    assert "validation split (the test split has no lesion masks)" in attention_split_note(
        {"arms": [{"attention_splits": ["val"]}, {"attention_splits": []}]})
    assert attention_split_note({"arms": [{"attention_splits": ["test"]}]}) == ""


def test_attention_scored_on_validation_lands_in_the_sweeps_section(synthetic_root, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On ISIC 2017 (no test masks) the sweep scores the maps on val: the numbers must reach `attention`, which
    the summary and run_finished read (they went only to `attention_val`, and the run was marked skipped)."""
    from attnmel import config as config_mod
    from attnmel.sweep.state import read_metrics
    from attnmel.sweep.summary import attention_means, attention_split_of
    from attnmel.train import run as run_mod

    cfg = config_mod.load_config(REPO / "experiments" / "synthetic.yaml", [
        f"data.root={synthetic_root}", f"out_dir={tmp_path}", "name=r", "data.image_size=64", "data.resize=64",
        "data.batch_size=8", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}", "model.width=0.25",
        "trainer.max_epochs=1", "trainer.progress_bar=false"])
    run_dir = run_mod.train(cfg)
    monkeypatch.setattr(sweep_one, "attention_split", lambda _run_dir: "val")
    sweep_one._score_attention(run_dir)
    m = read_metrics(run_dir)
    assert "attention_skipped" not in m
    assert attention_split_of(m) == "val" and attention_means(m)["pool4"]["jaccard"] >= 0.0
