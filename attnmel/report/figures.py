"""The report's plots of the metrics: matplotlib (Agg), one figure per function, written atomically as PNG.

None keeps state, so the report draws each figure exactly once. The gallery's map overlays are drawn by
:mod:`attnmel.explain.overlay`, which ``attnmel predict --overlay`` shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from attnmel.io import atomic_path

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#7f7f7f", "#8c564b", "#e377c2")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display, the same output everywhere
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    plt = _plt()
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def roc_figure(curve: Mapping[str, Any] | None, path: Path, auc: float | None = None,
               per_class: Mapping[str, Mapping[str, Any]] | None = None, reason: str = "") -> Path:
    """ROC curve of the melanoma column (``curves()["melanoma"]["roc"]``), per-class curves dotted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    if curve is None:
        _no_data(ax, reason or "ROC undefined")
    else:
        label = "melanoma" + (f" (AUC {auc:.3f})" if auc is not None else "")
        ax.plot(curve["fpr"], curve["tpr"], color=_PALETTE[0], lw=2, label=label)
        for i, (name, c) in enumerate((per_class or {}).items()):
            if c.get("roc"):
                ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], ls=":", lw=1.2, color=_PALETTE[(i + 1) % len(_PALETTE)],
                        label=name)
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title("ROC", fontsize=10)
    return save_figure(fig, path)


def pr_figure(curve: Mapping[str, Any] | None, path: Path, ap: float | None = None, prevalence: float | None = None,
              reason: str = "") -> Path:
    """Precision-recall curve of the melanoma column, with the prevalence (a random ranking) dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    if curve is None:
        _no_data(ax, reason or "precision-recall undefined")
    else:
        label = "melanoma" + (f" (AP {ap:.3f})" if ap is not None else "")
        ax.step(curve["recall"], curve["precision"], where="post", color=_PALETTE[1], lw=2, label=label)
        if prevalence is not None:
            ax.axhline(prevalence, color="0.7", lw=1, ls="--", label=f"prevalence {prevalence:.2f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Precision-recall", fontsize=10)
    return save_figure(fig, path)


def confusion_figure(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """Confusion matrix (rows truth, columns argmax prediction) with counts in the cells."""
    plt = _plt()
    a = np.asarray(cm, dtype=np.int64)
    k = a.shape[0]
    side = 2.6 + 0.6 * k
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    ax.imshow(a, cmap="Blues", vmin=0, vmax=max(1, int(a.max())))
    ax.set_xticks(range(k), [str(c) for c in class_names], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(k), [str(c) for c in class_names], fontsize=8)
    ax.set_xlabel("predicted (argmax)")
    ax.set_ylabel("true")
    hi = a.max() if a.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(a[i, j]), ha="center", va="center", fontsize=9,
                    color="white" if hi and a[i, j] > hi / 2 else "black")
    ax.set_title("Confusion matrix", fontsize=10)
    return save_figure(fig, path)


def jaccard_curve_figure(thresholds: Sequence[float], curves: Mapping[str, Sequence[float]],
                         labels: Mapping[str, str], path: Path, threshold: float = 0.5) -> Path:
    """Mean Jaccard against the binarisation threshold, one line per method/layer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for i, (method, ys) in enumerate(curves.items()):
        ls = "--" if method == "blob" else "-"
        ax.plot(thresholds, ys, ls=ls, lw=1.8, marker="o", ms=3, color=_PALETTE[i % len(_PALETTE)],
                label=labels.get(method, method))
    ax.axvline(threshold, color="0.6", lw=1, ls=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("threshold on the re-normalised map")
    ax.set_ylabel("mean Jaccard")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Jaccard vs threshold", fontsize=10)
    return save_figure(fig, path)


def jaccard_histogram_figure(values: Mapping[str, Sequence[float]], labels: Mapping[str, str], path: Path,
                             bins: int = 20) -> Path:
    """Distribution of per-image Jaccard (at the report threshold), one outline per method/layer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for i, (method, vs) in enumerate(values.items()):
        ls = "--" if method == "blob" else "-"
        ax.hist(np.asarray(vs, dtype=float), bins=edges, histtype="step", lw=1.8, ls=ls,
                color=_PALETTE[i % len(_PALETTE)], label=labels.get(method, method))
    ax.set_xlim(0, 1)
    ax.set_xlabel("per-image Jaccard")
    ax.set_ylabel("images")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Per-image Jaccard", fontsize=10)
    return save_figure(fig, path)


def reliability_figure(curves: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Reliability diagram of p(melanoma): per curve (``label -> calibration_summary()``), each non-empty bin's
    observed melanoma frequency against its mean probability (marker area ~ images), the diagonal dashed;
    below, how many images fall in each bin."""
    plt = _plt()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(4.4, 5.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    width = None
    for i, (label, s) in enumerate(curves.items()):
        rows = [b for b in s["bins"] if b["n"]]
        colour = _PALETTE[i % len(_PALETTE)]
        ax.plot([b["mean_p"] for b in rows], [b["frequency"] for b in rows], color=colour, lw=1.2,
                label=f"{label} (ECE {s['ece']:.3f})")
        total = max(sum(b["n"] for b in rows), 1)  # marker area ~ the bin's share of the images
        ax.scatter([b["mean_p"] for b in rows], [b["frequency"] for b in rows], color=colour, zorder=3,
                   s=[8 + 400 * b["n"] / total for b in rows], alpha=0.8)
        width = 1.0 / s["n_bins"]
        offset = (i - (len(curves) - 1) / 2) * width / max(len(curves), 1)
        hx.bar([b["low"] + width / 2 + offset for b in s["bins"]], [b["n"] for b in s["bins"]],
               width=width / max(len(curves), 1), color=colour, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("observed melanoma frequency")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability of p(melanoma)", fontsize=10)
    hx.set_xlabel("predicted p(melanoma), equal-width bins")
    hx.set_ylabel("images")
    return save_figure(fig, path)
