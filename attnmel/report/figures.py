"""The report's pictures: matplotlib (Agg) plots of the metrics and numpy/PIL gallery panels.

Every function draws one figure and writes it atomically as a PNG; none keeps state, so the report draws each
figure exactly once. Gallery panels are composed with numpy and written with PIL (no matplotlib figure per
image), which keeps drawing a gallery of a few dozen cases well under a second.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from attnmel.io import atomic_path

MIN_PANEL_SIDE = 160  # small (64 px) images are enlarged so contours stay visible
TRUTH_RGB = (0, 255, 0)  # ground-truth lesion contour
REGION_RGB = (255, 255, 255)  # contour of the binarised map (what the Jaccard scores)
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


# -- gallery panels ---------------------------------------------------------------------------------
def display_scale(side: int) -> int:
    """Integer enlargement that brings a ``side``-px image to at least :data:`MIN_PANEL_SIDE`."""
    return max(1, math.ceil(MIN_PANEL_SIDE / max(1, int(side))))


def _enlarge(a: np.ndarray, s: int) -> np.ndarray:
    # Nearest-neighbour, so the panel shows exactly the pixels that were scored.
    return a if s == 1 else np.repeat(np.repeat(a, s, axis=0), s, axis=1)


def contour_pixels(mask: np.ndarray, scale: int, thick: bool = True) -> np.ndarray:
    """Boolean (H*s, W*s) image of the 0.5-level contours of ``mask`` (skimage ``find_contours``)."""
    from skimage.draw import line
    from skimage.measure import find_contours

    h, w = mask.shape
    out = np.zeros((h * scale, w * scale), dtype=bool)
    if not mask.any() or mask.all():
        return out
    # Pad so contours touching the border close along it instead of stopping short.
    padded = np.pad(mask.astype(np.float32), 1)
    for c in find_contours(padded, 0.5):
        pts = np.rint((c - 1 + 0.5) * scale - 0.5).astype(np.int64)
        pts[:, 0] = pts[:, 0].clip(0, h * scale - 1)
        pts[:, 1] = pts[:, 1].clip(0, w * scale - 1)
        for (r0, c0), (r1, c1) in itertools.pairwise(pts):
            rr, cc = line(int(r0), int(c0), int(r1), int(c1))
            out[rr, cc] = True
    if thick and scale * max(h, w) >= MIN_PANEL_SIDE:
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:, 1:] |= out[:, :-1]
        out = grown
    return out


def overlay_panel(image: np.ndarray, heat: np.ndarray | None = None, mask: np.ndarray | None = None,
                  threshold: float = 0.5, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 panel: the image, the [0, 1] ``heat`` map in jet over it (if given), the contour of
    ``heat >= threshold`` in white and the ground-truth ``mask`` contour in green (if given).

    ``heat`` and ``mask`` are at the image's size (the size the scores were computed at).
    """
    from matplotlib import colormaps

    s = display_scale(max(image.shape[:2]))
    img = _enlarge(np.asarray(image, dtype=np.uint8), s).astype(np.float32)
    if heat is not None:
        rgb = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
        img = (1.0 - alpha) * img + alpha * _enlarge(rgb.astype(np.float32), s)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if heat is not None:
        out[contour_pixels(np.asarray(heat) >= threshold, s, thick=False)] = REGION_RGB
    if mask is not None:
        out[contour_pixels(np.asarray(mask, dtype=bool), s)] = TRUTH_RGB
    return out


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        # Fast zlib level: panels are small, and encoding at the default level cost more than drawing them.
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG", compress_level=1)
    return Path(path)
