"""Attention-quality protocol: one post-processing rule and one set of scores for every map.

Every saliency map (attention pool-3/pool-4, CAM, Grad-CAM, Integrated Gradients, the centre-blob
baseline) goes through :func:`postprocess_map` and is scored against the binary lesion mask by
:func:`score_map`; see :data:`ORDER_RULE`. Binary overlap scores reuse
:mod:`attnmel.metrics.segmentation`, so the Jaccard here is the official ISIC scorer's Jaccard
(including its convention that an empty prediction on an empty mask scores 1.0).

The masks must be in the geometry of the image the model saw (the eval transform's crop), at any
resolution; the comparison happens at the mask's resolution.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from attnmel.errors import AttnMelError
from attnmel.metrics.segmentation import confusion_counts, scores_from_counts

ORDER_RULE = (
    "Every map (attention, CAM, Grad-CAM, Integrated Gradients, centre blob) is first upsampled "
    "bilinearly (align_corners=False) to the ground-truth mask's full size, then min-max re-normalised "
    "to [0, 1] over that image's map (a constant map becomes all zeros), then binarised at >= 0.5 and "
    "compared with the mask; the reference's CAM order (threshold at 7x7, then upsample) is not used, "
    "so all methods share one order."
)
DEFAULT_THRESHOLD = 0.5
# Thresholds of the Jaccard curve: 0.05, 0.10, ..., 0.95 (rounded so they print and compare cleanly).
CURVE_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
_CONSTANT_RTOL = 1e-6
SCORE_KEYS = ("jaccard", "dice", "pointing_game", "energy_inside")


def _as_2d_tensor(m: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = m.detach().to("cpu") if isinstance(m, torch.Tensor) else torch.from_numpy(np.asarray(m))
    t = t.to(torch.float32)
    # Tolerate the (1,h,w) / (1,1,h,w) shapes a model's map slice comes in.
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise AttnMelError(f"a saliency map must be 2-D (h, w); got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise AttnMelError("a saliency map contains NaN or infinite values")
    return t


def postprocess_map(m: np.ndarray | torch.Tensor, out_hw: tuple[int, int]) -> np.ndarray:
    """Upsample ``m`` (h, w) bilinearly to ``out_hw`` FIRST, then min-max re-normalise to [0, 1].

    A constant map (no spatial preference; spread within float32 precision, relative 1e-6) becomes
    all zeros rather than all ones or NaN, so it neither "points" anywhere nor covers the lesion.
    Returns float32 (H, W).
    """
    t = _as_2d_tensor(m)
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    if bool(t.max() == t.min()):
        return np.zeros(out_hw, dtype=np.float32)
    if tuple(t.shape) != out_hw:
        t = F.interpolate(t[None, None], size=out_hw, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(t.min()), float(t.max())
    rng = hi - lo
    # A spread within float32 rounding (e.g. interpolation noise on a saturated map) is no signal;
    # min-max would blow it up to [0, 1].
    if rng <= _CONSTANT_RTOL * max(abs(lo), abs(hi), 1e-30):
        return np.zeros(out_hw, dtype=np.float32)
    return ((t - lo) / rng).clamp_(0.0, 1.0).numpy()


def binarise(m: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean map ``m >= threshold``."""
    return np.asarray(m) >= threshold


def _as_mask(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    a = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.dtype != np.bool_:
        raise AttnMelError(f"a lesion mask must be a boolean array; got {a.dtype}")
    if a.ndim != 2:
        raise AttnMelError(f"a lesion mask must be 2-D (H, W); got shape {a.shape}")
    return a


def pointing_game(m: np.ndarray, mask: np.ndarray) -> float:
    """1.0 if the map's maximum lies inside the lesion, else 0.0 (on a post-processed map).

    Where several pixels tie for the maximum (plateaus from upsampling) the score is the share of them
    inside the lesion, i.e. the expected hit under a random tie-break. An all-zero map scores 0.0.
    """
    m = np.asarray(m)
    top = m.max()
    if top <= 0:
        return 0.0
    at_max = m == top
    return float(np.count_nonzero(at_max & mask) / np.count_nonzero(at_max))


def energy_inside(m: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (re-normalised, non-negative) map's mass inside the lesion; 0.0 for an all-zero map."""
    m = np.asarray(m, dtype=np.float64)
    total = m.sum()
    return 0.0 if total <= 0 else float(m[mask].sum() / total)


def jaccard_curve(m: np.ndarray, mask: np.ndarray,
                  thresholds: Sequence[float] = CURVE_THRESHOLDS) -> list[float]:
    """Jaccard of ``m >= t`` against the mask for each threshold ``t`` (scorer conventions)."""
    inside = np.asarray(m)[mask]
    outside = np.asarray(m)[~mask]
    n_truth = inside.size
    out = []
    for t in thresholds:
        tp = int(np.count_nonzero(inside >= t))
        fp = int(np.count_nonzero(outside >= t))
        fn = n_truth - tp
        out.append(scores_from_counts({"TP": tp, "FP": fp, "FN": fn, "TN": outside.size - fp})["jaccard"])
    return out


def score_map(m: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor,
              threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """All per-image scores of a raw map against a boolean lesion mask (post-processing included).

    Keys: ``jaccard``, ``dice`` (binarised at ``threshold``), ``pointing_game``, ``energy_inside``,
    ``jaccard_curve`` (list, one value per :data:`CURVE_THRESHOLDS`).
    """
    mask = _as_mask(mask)
    pm = postprocess_map(m, mask.shape)
    seg = scores_from_counts(confusion_counts(binarise(pm, threshold), mask))
    return {
        "jaccard": seg["jaccard"],
        "dice": seg["dice"],
        "pointing_game": pointing_game(pm, mask),
        "energy_inside": energy_inside(pm, mask),
        "jaccard_curve": jaccard_curve(pm, mask),
    }


def attention_quality(maps: Mapping[str, Sequence[np.ndarray | torch.Tensor]],
                      masks: Sequence[np.ndarray | torch.Tensor],
                      image_ids: Sequence[str] | None = None,
                      threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Score every method/layer's maps against the lesion masks, per image and on average.

    ``maps`` is ``{method_layer: [map (h, w) per image]}`` (a (N, h, w) or (N, 1, h, w) array/tensor
    works too); ``masks`` is one boolean (H, W) mask per image, same order.
    Returns ``{"per_image": [{"method", "image_id", <SCORE_KEYS>, "jaccard_curve"}...],
    "mean": {method: {<SCORE_KEYS>, "jaccard_curve", "n_images"}}, "thresholds": CURVE_THRESHOLDS,
    "threshold": threshold, "order_rule": ORDER_RULE}``.
    """
    n = len(masks)
    if n == 0:
        raise AttnMelError("no lesion masks to score attention maps against")
    if image_ids is None:
        image_ids = [str(i) for i in range(n)]
    elif len(image_ids) != n:
        raise AttnMelError(f"{len(image_ids)} image ids for {n} masks")
    bool_masks = [_as_mask(mk) for mk in masks]
    per_image: list[dict[str, Any]] = []
    mean: dict[str, dict[str, Any]] = {}
    for method, method_maps in maps.items():
        if len(method_maps) != n:
            raise AttnMelError(f"method {method!r} has {len(method_maps)} maps for {n} masks")
        rows = []
        for iid, m, mk in zip(image_ids, method_maps, bool_masks):
            rows.append({"method": method, "image_id": iid, **score_map(m, mk, threshold)})
        per_image.extend(rows)
        summary: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in SCORE_KEYS}
        summary["jaccard_curve"] = np.mean([r["jaccard_curve"] for r in rows], axis=0).tolist()
        summary["n_images"] = n
        mean[method] = summary
    return {"per_image": per_image, "mean": mean, "thresholds": list(CURVE_THRESHOLDS),
            "threshold": threshold, "order_rule": ORDER_RULE}
