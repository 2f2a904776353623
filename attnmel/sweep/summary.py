"""A sweep's summary: ``summary.csv`` / ``summary.md`` / ``summary.html`` + ``summary_auc_vs_jaccard.png``.

Per arm: mean and standard deviation over seeds (sample std, ddof=1; undefined from one seed) of AUC,
AP, sensitivity, specificity and each attention map's Jaccard, Dice, pointing game and energy inside,
laid out like the paper's Table 2 (classification) and Table 3 (attention Jaccard per layer), with the
paper's published numbers beside ours where the arm names a paper row (``paper:``) and the dataset matches.

Paired tests against the baseline arm use only the seeds both arms finished (seed k paired with seed k)
and the test images both have:

- AUC: DeLong on the seed-mean AUC (per-seed structural components averaged; see
  :mod:`attnmel.sweep.stats`): p says whether the difference could come from the test images drawn;
  per-seed DeLong p-values are in ``summary_tests.csv``.
- AUC on each further evaluated split (``classification_<split>`` in metrics.json: ``val`` and the
  synthetic shortcut benchmark's ``test_reversed`` / ``test_absent``): DeLong as above, on
  ``predictions_<split>.csv`` against ``<split>_labels.csv``; shown in the "test conditions" table.
- AP and mean Jaccard per attention map: paired bootstrap, 2000 resamples of image indices (stratified by
  label for AP), fixed seed 0, same resamples for both arms and all seeds; ``p = 2 * min(P(d* <= 0),
  P(d* >= 0))`` with +1 correction.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from attnmel.io import atomic_path, write_text
from attnmel.sweep import stats
from attnmel.sweep.spec import SweepSpec
from attnmel.sweep.state import classification_done, read_metrics
from attnmel.train.rundir import RunDir

CLASSIFICATION_KEYS = ("auc", "average_precision", "sensitivity", "specificity", "balanced_accuracy")
ATTENTION_KEYS = ("jaccard", "dice", "pointing_game", "energy_inside")
KEY_LABELS = {"auc": "AUC", "average_precision": "AP", "sensitivity": "Sensitivity", "specificity": "Specificity",
              "balanced_accuracy": "Bal. acc.", "jaccard": "Jaccard", "dice": "Dice",
              "pointing_game": "Pointing game", "energy_inside": "Energy inside"}
PLOT_FILE = "summary_auc_vs_jaccard.png"
TEMPLATES = Path(__file__).resolve().parent / "templates"  # summary.html (package data)
# Maps of Table 3 and of the paired Jaccard tests; the rest (e.g. the mask-derived centre-blob baseline, the
# same for every arm) appear in the all-scores table and the csv only.
TABLE3_MAPS = ("pool3", "pool4", "cam", "gradcam")
PLOT_LAYER = "pool4"
MELANOMA_NAMES = ("melanoma", "mel", "malignant")


# -- reading run folders ---------------------------------------------------------------------------
def map_name(method: str) -> str:
    """Short name of an attention method/layer as the report names it: ``pool3``, ``pool4``, ``cam``, ..."""
    m = method.lower()
    for layer in ("pool3", "pool4"):
        if layer in m:
            return layer
    return m


def attention_means(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{map: {jaccard, dice, pointing_game, energy_inside}}`` from a run's ``attention`` section."""
    att = metrics.get("attention")
    if not isinstance(att, dict):
        return {}
    mean = att.get("mean") if isinstance(att.get("mean"), dict) else {}
    out: dict[str, dict[str, float]] = {}
    for method, vals in mean.items():
        if isinstance(vals, dict) and any(k in vals for k in ATTENTION_KEYS):
            out[map_name(str(method))] = {k: float(vals[k]) for k in ATTENTION_KEYS
                                          if isinstance(vals.get(k), (int, float))}
    return out


def attention_per_image(metrics: dict[str, Any], key: str = "jaccard") -> dict[str, dict[str, float]]:
    """``{map: {image_id: value}}`` from the ``attention`` section's per-image rows."""
    att = metrics.get("attention")
    rows = att.get("per_image") if isinstance(att, dict) else None
    out: dict[str, dict[str, float]] = {}
    if isinstance(rows, list):
        for r in rows:
            if isinstance(r, dict) and "method" in r and "image_id" in r and isinstance(r.get(key), (int, float)):
                out.setdefault(map_name(str(r["method"])), {})[str(r["image_id"])] = float(r[key])
    return out


def read_predictions(path: Path) -> dict[str, float]:
    """``{image_id: melanoma probability}`` from a run's ``predictions.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        cols = [c.lower() for c in header[1:]]
        col = next((i for i, c in enumerate(cols) if c in MELANOMA_NAMES), len(cols) - 1) + 1
        return {row[0]: float(row[col]) for row in reader if row}


def read_labels(path: Path) -> dict[str, int]:
    """``{image_id: 1 if melanoma else 0}`` from the sweep's ``test_labels.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        return {r["image_id"]: int(float(r["melanoma"])) for r in csv.DictReader(f)}


SPLIT_PREFIX = "classification_"
SPLIT_KEYS = ("auc", "average_precision", "balanced_accuracy")


def condition_splits(records: Sequence[RunRecord]) -> list[str]:
    """The further splits the finished runs were scored on (``val``, ``test_reversed``, ...), in a stable order."""
    found: list[str] = []
    for r in records:
        if r.ok:
            found += [k[len(SPLIT_PREFIX):] for k, v in r.metrics.items() if k.startswith(SPLIT_PREFIX)
                      and isinstance(v, dict) and "auc" in v and k[len(SPLIT_PREFIX):] not in found]
    known = [s for s in ("val", "test_balanced", "test_shortcut", "test_reversed", "test_absent") if s in found]
    return known + sorted(s for s in found if s not in known and s != "softmax_only")


@dataclass
class RunRecord:
    """One arm x seed as found on disk."""

    arm: str
    seed: int
    run_dir: Path
    status: str  # done | failed | missing; queued | running (cluster jobs)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "done"


def collect(sweep_dir: Path, spec: SweepSpec, results: Iterable[Any] = ()) -> list[RunRecord]:
    """Every planned arm x seed with its status and metrics (from the folders; ``results`` add errors)."""
    results = list(results)  # read twice below
    errors = {(r.arm, r.seed): r.error for r in results if getattr(r, "status", None) == "failed"}
    # Cluster jobs still in the queue (``--launcher slurm``): their folders are not final yet.
    pending = {(r.arm, r.seed): r.status for r in results if getattr(r, "status", None) in ("queued", "running")}
    records = []
    for arm in spec.arms:
        for seed in spec.seeds:
            run_dir = Path(sweep_dir) / arm.name / f"seed{seed}"
            m = read_metrics(run_dir)
            err = errors.get((arm.name, seed))
            if err is None and RunDir(run_dir).error_file.is_file():
                err = RunDir(run_dir).error_file.read_text(encoding="utf-8").splitlines()[0:1]
                err = err[0] if err else "failed"
            if (arm.name, seed) in pending:
                status, err = pending[(arm.name, seed)], None
            elif err is not None:
                status = "failed"
            elif classification_done(m):
                status = "done"
            else:
                status = "missing"
            records.append(RunRecord(arm.name, seed, run_dir, status, m if status == "done" else {}, err))
    return records


# -- statistics per arm ----------------------------------------------------------------------------
def summarise_arm(records: Sequence[RunRecord]) -> dict[str, Any]:
    """Mean/std/n over the arm's finished seeds.

    ``{"classification": {key: {...}}, "attention": {map: {key: {...}}}}``.
    """
    done = [r for r in records if r.ok]
    cls: dict[str, Any] = {}
    for key in CLASSIFICATION_KEYS:
        mean, std, n = stats.mean_std([r.metrics["classification"].get(key) for r in done])
        cls[key] = {"mean": mean, "std": std, "n": n}
    maps: list[str] = []
    per_run = [attention_means(r.metrics) for r in done]
    for pr in per_run:
        maps += [m for m in pr if m not in maps]
    att: dict[str, Any] = {}
    for m in maps:
        att[m] = {}
        for key in ATTENTION_KEYS:
            mean, std, n = stats.mean_std([pr.get(m, {}).get(key) for pr in per_run])
            att[m][key] = {"mean": mean, "std": std, "n": n}
    splits: dict[str, Any] = {}
    for split in condition_splits(done):
        sec = [r.metrics.get(SPLIT_PREFIX + split) or {} for r in done]
        splits[split] = {}
        for key in SPLIT_KEYS:
            mean, std, n = stats.mean_std([m.get(key) for m in sec])
            splits[split][key] = {"mean": mean, "std": std, "n": n}
    return {"classification": cls, "attention": att, "splits": splits, "seeds_done": [r.seed for r in done],
            "seeds_missing": [r.seed for r in records if not r.ok]}


def _delong_on_split(pairs: Sequence[tuple[RunRecord, RunRecord]], split: str,
                     labels: dict[str, int]) -> dict[str, Any] | None:
    """DeLong on the seed-mean AUC of ``predictions_<split>.csv`` (None where a file or a class is missing)."""
    def path(r: RunRecord) -> Path:
        return RunDir(r.run_dir).predictions(split)

    if not pairs or not all(path(a).is_file() and path(b).is_file() for a, b in pairs):
        return None
    preds = [(read_predictions(path(a)), read_predictions(path(b))) for a, b in pairs]
    ids = [i for i in labels if all(i in pa and i in pb for pa, pb in preds)]
    y = np.array([labels[i] for i in ids])
    if not len(ids) or not 0 < y.sum() < len(y):
        return None
    sa = np.array([[pa[i] for i in ids] for pa, _ in preds])
    sb = np.array([[pb[i] for i in ids] for _, pb in preds])
    d = stats.delong_test(y, sa, sb)
    return {"delta": d.delta, "p": d.p_value, "se": d.se, "test": "DeLong (seed-mean AUC)", "n_images": len(ids),
            "per_seed_p": {a.seed: stats.delong_test(y, sa[k], sb[k]).p_value for k, (a, _) in enumerate(pairs)}}


def paired_tests(arm_records: Sequence[RunRecord], base_records: Sequence[RunRecord],
                 labels: dict[str, int] | None, n_resamples: int = stats.DEFAULT_RESAMPLES,
                 seed: int = stats.DEFAULT_BOOTSTRAP_SEED,
                 split_labels: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """DeLong (AUC) and paired bootstrap (AP, per-map mean Jaccard) of an arm against the baseline;
    ``split_labels`` (``{split: labels}``) adds DeLong on those splits' AUC (``auc_splits``)."""
    base = {r.seed: r for r in base_records if r.ok}
    pairs = [(r, base[r.seed]) for r in arm_records if r.ok and r.seed in base]
    out: dict[str, Any] = {"seeds": [a.seed for a, _ in pairs]}
    if not pairs:
        out["note"] = "no seed finished in both this arm and the baseline"
        return out
    if labels:
        test = [(RunDir(a.run_dir).predictions(), RunDir(b.run_dir).predictions()) for a, b in pairs]
        preds = [(read_predictions(pa), read_predictions(pb)) for pa, pb in test if pa.is_file() and pb.is_file()]
        if len(preds) == len(pairs):
            ids = [i for i in labels if all(i in pa and i in pb for pa, pb in preds)]
            y = np.array([labels[i] for i in ids])
            if len(ids) and 0 < y.sum() < len(y):
                sa = np.array([[pa[i] for i in ids] for pa, _ in preds])
                sb = np.array([[pb[i] for i in ids] for _, pb in preds])
                d = stats.delong_test(y, sa, sb)
                out["auc"] = {"delta": d.delta, "p": d.p_value, "se": d.se, "test": "DeLong (seed-mean AUC)",
                              "n_images": len(ids),
                              "per_seed_p": {a.seed: stats.delong_test(y, sa[k], sb[k]).p_value
                                             for k, (a, _) in enumerate(pairs)}}
                b = stats.paired_bootstrap(sa, sb, stats.average_precision_statistic(y), n_resamples, seed, strata=y)
                out["average_precision"] = {"delta": b.delta, "p": b.p_value, "ci": [b.ci_low, b.ci_high],
                                            "test": f"paired bootstrap ({b.n_resamples} resamples)"}
            else:
                out["note"] = "the test images shared by both arms hold a single class: no AUC/AP test"
        else:
            out["note"] = f"{RunDir(pairs[0][0].run_dir).predictions().name} missing: no AUC/AP test"
    else:
        out["note"] = "test labels unavailable (test_labels.csv): no AUC/AP test"
    out["auc_splits"] = {split: t for split, lab in (split_labels or {}).items()
                         if (t := _delong_on_split(pairs, split, lab)) is not None}
    jac: dict[str, Any] = {}
    per_a = [attention_per_image(a.metrics) for a, _ in pairs]
    per_b = [attention_per_image(b.metrics) for _, b in pairs]
    for m in per_a[0]:
        if m not in TABLE3_MAPS:
            continue
        if not all(m in pa for pa in per_a) or not all(m in pb for pb in per_b):
            continue
        ids = [i for i in per_a[0][m] if all(i in pa[m] for pa in per_a) and all(i in pb[m] for pb in per_b)]
        if not ids:
            continue
        va = np.array([[pa[m][i] for i in ids] for pa in per_a])
        vb = np.array([[pb[m][i] for i in ids] for pb in per_b])
        b = stats.paired_bootstrap(va, vb, None, n_resamples, seed)
        jac[m] = {"delta": b.delta, "p": b.p_value, "ci": [b.ci_low, b.ci_high], "n_images": len(ids),
                  "test": f"paired bootstrap ({b.n_resamples} resamples)"}
    out["jaccard"] = jac
    return out


def build_summary(sweep_dir: Path, spec: SweepSpec, records: Sequence[RunRecord],
                  labels: dict[str, int] | None = None, n_resamples: int = stats.DEFAULT_RESAMPLES,
                  split_labels: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """Everything the summary files show, as plain data (also written as ``summary.json``)."""
    by_arm = {a.name: [r for r in records if r.arm == a.name] for a in spec.arms}
    arms = []
    for a in spec.arms:
        s = summarise_arm(by_arm[a.name])
        s.update(name=a.name, label=a.label, paper_row=a.paper,
                 paper=dict(spec.paper_numbers.get(a.paper) or {}) if a.paper else {},
                 runs=[{"seed": r.seed, "status": r.status, "error": r.error,
                        "report": _report_link(sweep_dir, r.run_dir)} for r in by_arm[a.name]])
        if a.name != spec.baseline:
            s["tests"] = paired_tests(by_arm[a.name], by_arm[spec.baseline], labels, n_resamples,
                                      split_labels=split_labels)
        arms.append(s)
    maps: list[str] = []
    for s in arms:
        maps += [m for m in s["attention"] if m not in maps]
    maps.sort(key=lambda m: (m not in ("pool3", "pool4"), m))
    return {"name": spec.name, "dataset": spec.dataset, "description": spec.description,
            "baseline": spec.baseline, "seeds": spec.seeds, "maps": maps, "arms": arms,
            "splits": condition_splits(records),
            "missing": [{"arm": r.arm, "seed": r.seed, "status": r.status, "error": r.error}
                        for r in records if not r.ok],
            "counts": {k: sum(r.status == k for r in records)
                       for k in ("done", "queued", "running", "failed", "missing")},
            "rules": {"std": "sample standard deviation over seeds (ddof=1); blank from a single seed",
                      "auc_test": "DeLong on the seed-mean AUC: per-seed structural components averaged over the "
                                  "seeds both arms finished (seed k with seed k); variance over test images",
                      "bootstrap": f"paired bootstrap, {n_resamples} resamples of test-image indices (stratified "
                                   "by label for AP), seed 0, p = 2 min(P(d*<=0), P(d*>=0)) with +1 correction"}}


def _report_link(sweep_dir: Path, run_dir: Path) -> str | None:
    page = RunDir(run_dir).report_page
    return os.path.relpath(page, sweep_dir) if page.is_file() else None


# -- formatting ------------------------------------------------------------------------------------
def fmt(cell: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± std`` (``mean`` alone from one seed, ``–`` when undefined)."""
    if not cell or cell.get("mean") is None:
        return "–"
    text = f"{cell['mean']:.{digits}f}"
    return text + (f" ± {cell['std']:.{digits}f}" if cell.get("std") is not None else "")


def fmt_num(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.{digits}f}"


def fmt_p(p: Any) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_test(t: dict[str, Any] | None) -> str:
    """``+0.012 (p=0.034)``."""
    if not t:
        return "–"
    return f"{t['delta']:+.3f} (p={fmt_p(t['p'])})"


def _map_label(m: str) -> str:
    from attnmel.explain.methods import compact_label

    return compact_label(m)


def tables(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The summary's tables as ``{name: {"title", "header", "rows"}}`` (strings), shared by md and html."""
    maps = [m for m in summary["maps"] if m in TABLE3_MAPS]
    paper_maps = [m for m in maps if any(a["paper"].get(f"jaccard_{m}") is not None for a in summary["arms"])]
    test_maps = [m for m in maps if any(m in ((a.get("tests") or {}).get("jaccard") or {}) for a in summary["arms"])]
    base = summary["baseline"]
    t2_header = ["Method", "Seeds", "AP", "AUC", "Sensitivity", "Specificity", "Paper AP", "Paper AUC",
                 f"ΔAUC vs {base}", f"ΔAP vs {base}"]
    t2 = []
    for a in summary["arms"]:
        c = a["classification"]
        tests = a.get("tests") or {}
        t2.append([a["label"], f"{len(a['seeds_done'])}/{len(a['seeds_done']) + len(a['seeds_missing'])}",
                   fmt(c["average_precision"]), fmt(c["auc"]), fmt(c["sensitivity"]), fmt(c["specificity"]),
                   fmt_num(a["paper"].get("ap")), fmt_num(a["paper"].get("auc")),
                   "baseline" if a["name"] == base else fmt_test(tests.get("auc")),
                   "baseline" if a["name"] == base else fmt_test(tests.get("average_precision"))])
    t3_header = ["Method"] + [f"Jaccard {_map_label(m)}" for m in maps] + \
                [f"Paper {_map_label(m)}" for m in paper_maps] + \
                [f"ΔJaccard {_map_label(m)} vs {base}" for m in test_maps]
    t3 = []
    for a in summary["arms"]:
        att = a["attention"]
        tests = (a.get("tests") or {}).get("jaccard") or {}
        t3.append([a["label"]] + [fmt(att.get(m, {}).get("jaccard"), 4) for m in maps] +
                  [fmt_num(a["paper"].get(f"jaccard_{m}"), 4) for m in paper_maps] +
                  ["baseline" if a["name"] == base else fmt_test(tests.get(m)) for m in test_maps])
    other_header = ["Method", "Map"] + [KEY_LABELS[k] for k in ATTENTION_KEYS]
    other = []
    for a in summary["arms"]:
        for m, vals in a["attention"].items():
            other.append([a["label"], _map_label(m)] + [fmt(vals.get(k)) for k in ATTENTION_KEYS])
    out = {
        "table2": {"title": "Table 2: classification on the test set (mean ± std over seeds)",
                   "header": t2_header, "rows": t2},
        "table3": {"title": "Table 3: attention Jaccard against the lesion masks (mean ± std over seeds)",
                   "header": t3_header, "rows": t3},
        "attention": {"title": "Attention quality, all scores (mean ± std over seeds)",
                      "header": other_header, "rows": other},
    }
    if summary.get("splits"):
        out["conditions"] = conditions_table(summary)
    return out


def _split_label(split: str) -> str:
    return {"val": "validation", "test": "test"}.get(split, split.replace("_", " "))


def conditions_table(summary: dict[str, Any]) -> dict[str, Any]:
    """AUC per evaluated split side by side (validation, test, reversed test, ...), DeLong against the baseline
    on every split but validation, and the pool-3 / pool-4 attention Jaccard."""
    splits = [s for s in summary.get("splits", []) if s != "test"]
    shown = (["val"] if "val" in splits else []) + ["test"] + [s for s in splits if s != "val"]
    tested = ["test"] + [s for s in splits if s != "val"]
    jmaps = [m for m in ("pool3", "pool4") if m in summary["maps"]]
    base = summary["baseline"]
    header = (["Method", "Seeds"] + [f"AUC {_split_label(s)}" for s in shown]
              + [f"Jaccard {_map_label(m)}" for m in jmaps] + [f"ΔAUC {_split_label(s)} vs {base}" for s in tested])
    rows = []
    for a in summary["arms"]:
        t = a.get("tests") or {}
        cells = [a["label"], f"{len(a['seeds_done'])}/{len(a['seeds_done']) + len(a['seeds_missing'])}"]
        cells += [fmt(a["classification"]["auc"]) if s == "test" else fmt((a["splits"].get(s) or {}).get("auc"))
                  for s in shown]
        cells += [fmt(a["attention"].get(m, {}).get("jaccard")) for m in jmaps]
        cells += ["baseline" if a["name"] == base else
                  fmt_test(t.get("auc") if s == "test" else (t.get("auc_splits") or {}).get(s)) for s in tested]
        rows.append(cells)
    return {"title": "Test conditions: AUC per split, DeLong against the baseline (mean ± std over seeds)",
            "header": header, "rows": rows}


def _md(cell: str) -> str:
    # A "|" inside a cell (e.g. an arm labelled "KL(mask || map)") would split the table column.
    return str(cell).replace("|", "\\|")


def markdown(summary: dict[str, Any]) -> str:
    """``summary.md``."""
    lines = [f"# Sweep `{summary['name']}` on `{summary['dataset']}`", ""]
    if summary["description"]:
        lines += [summary["description"], ""]
    lines += [f"Seeds: {', '.join(map(str, summary['seeds']))}. Baseline arm: `{summary['baseline']}`.", ""]
    lines += [run_counts(summary), ""]
    for t in tables(summary).values():
        lines += [f"## {t['title']}", "", "| " + " | ".join(_md(c) for c in t["header"]) + " |",
                  "|" + "|".join("---" for _ in t["header"]) + "|"]
        lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in t["rows"]]
        if not t["rows"]:
            lines.append("| (nothing finished) |" + " |" * (len(t["header"]) - 1))
        lines.append("")
    lines += ["## Missing runs", ""]
    if summary["missing"]:
        lines += [f"- `{m['arm']}` seed {m['seed']}: {m['status']}" + (f" ({m['error']})" if m["error"] else "")
                  for m in summary["missing"]]
    else:
        lines.append("None: every arm x seed finished.")
    lines += ["", "## Statistics", ""] + [f"- {k}: {v}" for k, v in summary["rules"].items()]
    lines += ["", f"![AUC against mean attention Jaccard]({PLOT_FILE})", ""]
    return "\n".join(lines)


def run_counts(summary: dict[str, Any]) -> str:
    """``Runs: 3 finished, 1 queued, 0 running, 0 failed.`` (plus missing ones, when any)."""
    c = summary["counts"]
    text = f"Runs: {c['done']} finished, {c['queued']} queued, {c['running']} running, {c['failed']} failed"
    return text + (f", {c['missing']} not started." if c["missing"] else ".")


def csv_text(summary: dict[str, Any]) -> str:
    """``summary.csv``: one row per arm, every number as its own column."""
    maps = summary["maps"]
    header = ["arm", "label", "seeds_done", "seeds_missing"]
    for k in CLASSIFICATION_KEYS:
        header += [f"{k}_mean", f"{k}_std"]
    for m in maps:
        for k in ATTENTION_KEYS:
            header += [f"{k}_{m}_mean", f"{k}_{m}_std"]
    header += ["paper_ap", "paper_auc"] + [f"paper_jaccard_{m}" for m in maps]
    header += ["delta_auc", "p_auc_delong", "delta_ap", "p_ap_bootstrap"]
    for m in maps:
        header += [f"delta_jaccard_{m}", f"p_jaccard_{m}_bootstrap"]
    splits = summary.get("splits", [])
    for sp in splits:
        header += [f"auc_{sp}_mean", f"auc_{sp}_std", f"delta_auc_{sp}", f"p_auc_{sp}_delong"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def num(v: Any) -> str:
        return "" if v is None else repr(float(v))

    for a in summary["arms"]:
        row: list[str] = [a["name"], a["label"], " ".join(map(str, a["seeds_done"])),
                          " ".join(map(str, a["seeds_missing"]))]
        for k in CLASSIFICATION_KEYS:
            row += [num(a["classification"][k]["mean"]), num(a["classification"][k]["std"])]
        for m in maps:
            for k in ATTENTION_KEYS:
                cell = a["attention"].get(m, {}).get(k) or {}
                row += [num(cell.get("mean")), num(cell.get("std"))]
        row += [num(a["paper"].get("ap")), num(a["paper"].get("auc"))]
        row += [num(a["paper"].get(f"jaccard_{m}")) for m in maps]
        t = a.get("tests") or {}
        for key in ("auc", "average_precision"):
            row += [num((t.get(key) or {}).get("delta")), num((t.get(key) or {}).get("p"))]
        for m in maps:
            jt = (t.get("jaccard") or {}).get(m) or {}
            row += [num(jt.get("delta")), num(jt.get("p"))]
        for sp in splits:
            cell = (a.get("splits", {}).get(sp) or {}).get("auc") or {}
            st = (t.get("auc_splits") or {}).get(sp) or {}
            row += [num(cell.get("mean")), num(cell.get("std")), num(st.get("delta")), num(st.get("p"))]
        w.writerow(row)
    return buf.getvalue()


def tests_csv_text(summary: dict[str, Any]) -> str:
    """``summary_tests.csv``: every paired test, including the per-seed DeLong p-values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["arm", "baseline", "metric", "seeds", "delta", "p", "test"])
    for a in summary["arms"]:
        t = a.get("tests")
        if not t:
            continue
        seeds = " ".join(map(str, t.get("seeds", [])))
        for key in ("auc", "average_precision"):
            if key in t:
                w.writerow([a["name"], summary["baseline"], key, seeds, repr(t[key]["delta"]), repr(t[key]["p"]),
                            t[key]["test"]])
        for s, p in (t.get("auc") or {}).get("per_seed_p", {}).items():
            w.writerow([a["name"], summary["baseline"], "auc", s, "", repr(p), "DeLong (this seed)"])
        for sp, st in (t.get("auc_splits") or {}).items():
            w.writerow([a["name"], summary["baseline"], f"auc_{sp}", seeds, repr(st["delta"]), repr(st["p"]),
                        st["test"]])
            for sd, p in st.get("per_seed_p", {}).items():
                w.writerow([a["name"], summary["baseline"], f"auc_{sp}", sd, "", repr(p), "DeLong (this seed)"])
        for m, jt in (t.get("jaccard") or {}).items():
            w.writerow([a["name"], summary["baseline"], f"jaccard_{m}", seeds, repr(jt["delta"]), repr(jt["p"]),
                        jt["test"]])
    return buf.getvalue()


def plot(summary: dict[str, Any], path: Path, layer: str = PLOT_LAYER) -> bool:
    """AUC against mean attention Jaccard (``layer``) per arm, error bars = std over seeds; False if empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = []
    for a in summary["arms"]:
        auc = a["classification"]["auc"]
        jac = a["attention"].get(layer, {}).get("jaccard")
        if auc["mean"] is None or not jac or jac.get("mean") is None:
            continue
        pts.append((a["name"], a["label"], jac["mean"], jac.get("std") or 0.0, auc["mean"], auc.get("std") or 0.0))
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
    for name, label, x, xe, y, ye in pts:
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", capsize=3, label=label if label == name else f"{name}: {label}")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlabel(f"mean attention Jaccard ({_map_label(layer)})")
    ax.set_ylabel("test AUC")
    ax.set_title(f"{summary['name']} on {summary['dataset']} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def html(summary: dict[str, Any], plot_png: bytes | None) -> str:
    """``summary.html``: self-contained (plot inlined), autoescaped, relative links to run reports."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    tmpl = env.get_template("summary.html")
    encoded = base64.b64encode(plot_png).decode("ascii") if plot_png else None
    return tmpl.render(s=summary, tables=list(tables(summary).values()), plot=encoded, counts=run_counts(summary))


def write_summary(sweep_dir: str | Path, spec: SweepSpec, results: Iterable[Any] = (),
                  n_resamples: int = stats.DEFAULT_RESAMPLES) -> dict[str, Path]:
    """Write ``summary.{json,csv,md,html}``, ``summary_tests.csv`` and the plot; rebuild ``reports/index.html``."""
    sweep_dir = Path(sweep_dir)
    records = collect(sweep_dir, spec, results)
    labels_path = sweep_dir / "test_labels.csv"
    labels = read_labels(labels_path) if labels_path.is_file() else None
    split_labels = {sp: read_labels(sweep_dir / f"{sp}_labels.csv") for sp in condition_splits(records)
                    if (sweep_dir / f"{sp}_labels.csv").is_file()}
    summary = build_summary(sweep_dir, spec, records, labels, n_resamples, split_labels=split_labels)
    paths = {"json": sweep_dir / "summary.json", "csv": sweep_dir / "summary.csv", "md": sweep_dir / "summary.md",
             "html": sweep_dir / "summary.html", "tests": sweep_dir / "summary_tests.csv",
             "plot": sweep_dir / PLOT_FILE}
    write_text(paths["json"], json.dumps(summary, indent=2, default=str) + "\n")
    write_text(paths["csv"], csv_text(summary))
    write_text(paths["tests"], tests_csv_text(summary))
    has_plot = plot(summary, paths["plot"])
    if not has_plot and paths["plot"].is_file():
        paths["plot"].unlink()
    md = markdown(summary)
    if not has_plot:
        md = md.replace(f"![AUC against mean attention Jaccard]({PLOT_FILE})",
                        f"(no plot: no arm has both an AUC and a {PLOT_LAYER} Jaccard)")
    write_text(paths["md"], md)
    write_text(paths["html"], html(summary, paths["plot"].read_bytes() if has_plot else None))
    _rebuild_index(sweep_dir.parent)
    return paths


def _rebuild_index(sweeps_root: Path) -> None:
    """Let ``reports/index.html`` list this sweep (and its runs)."""
    from attnmel.report.index import rebuild_index

    roots = [Path("runs"), Path("sweeps")]
    if not any(r.resolve() == sweeps_root.resolve() for r in roots):
        roots.append(sweeps_root)
    try:
        rebuild_index(Path("reports"), roots)
    except Exception as e:  # noqa: BLE001 - the index is a convenience; the summary is written
        import logging

        logging.getLogger("attnmel.sweep").warning("reports/index.html not rebuilt: %s", e)
