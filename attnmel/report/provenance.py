"""What the report's reader must know before trusting its figures: which split chose the checkpoint, and which
geometry turned the images into the network's input.

- **Selection**: a classifier's ``best.ckpt`` is the epoch with the best validation AUC, so the AUC of a report
  on that same validation split is optimistic; the page says so next to the AUC, with the test AUC beside it when
  the run has one.
- **Geometry**: the image sizes of the reported tree (which may not be the tree the run was trained on: a
  moved or re-exported dataset at another resolution goes through the run's own transform), the transform
  (centre crop or squeeze, resize, centre crop) and the grid of each map.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence


def _same_path(a: Any, b: Any) -> bool:
    try:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    except (OSError, RuntimeError):
        return str(a) == str(b)


def image_sizes(paths: Sequence[Path]) -> str:
    """``"256 x 256 (all 150 images)"``, or the three commonest sizes of a mixed tree."""
    from attnmel.data.images import image_size

    counts = Counter(image_size(p) for p in paths)
    if len(counts) == 1:
        (w, h), n = next(iter(counts.items()))
        return f"{w} x {h} (all {n} image{'s' if n != 1 else ''})"
    top = ", ".join(f"{w} x {h} ({n})" for (w, h), n in counts.most_common(3))
    return f"mixed, {len(counts)} sizes: {top}" + (", ..." if len(counts) > 3 else "")


def transform_text(data_cfg: dict[str, Any]) -> str:
    """The eval transform in words: the network's input from an original image."""
    cc, r, s = data_cfg.get("center_crop"), int(data_cfg["resize"]), int(data_cfg["image_size"])
    first = ("the whole image squeezed to a square (aspect ratio not kept)" if cc is None
             else f"a centred square of {float(cc):.0%} of the short side")
    return f"{first}, resized to {r} x {r}, centre crop {s} x {s} (the network's input)"


def provenance_block(run: Any, split: str, samples: Sequence[Any], maps: dict[str, Any] | None,
                     metrics: dict[str, Any]) -> dict[str, Any]:
    """Context of the page's selection note and geometry rows (``run``: the loaded run; ``samples``: the
    reported images; ``maps``: one image's maps by method; ``metrics``: the run's metrics.json)."""
    from attnmel.train.rundir import checkpoint_provenance

    prov = checkpoint_provenance(run.checkpoint)
    d = run.cfg["data"]
    trained_data = (prov["config"] or {}).get("data") or {}
    trained_root = trained_data.get("root", d["root"])
    same_tree = _same_path(trained_root, d["root"])
    chose = split == "val" and prov["monitor"] == "val_auc" and same_tree
    test_auc = (metrics.get("classification") or {}).get("auc")
    selection = ""
    if chose:
        best = f", validation AUC {prov['best_score']:.3f} at selection" if prov["best_score"] is not None else ""
        selection = (f"this split chose the checkpoint (the epoch with the highest validation AUC, "
                     f"epoch {prov['epoch']} counting from 0{best}), so this AUC is optimistic"
                     + (f"; the test AUC, on images no choice saw, is {test_auc:.3f}" if test_auc is not None else
                        "; score the test split (attnmel evaluate) for an unbiased figure"))
    grids = {k: f"{v.shape[-1]} x {v.shape[-2]}" for k, v in (maps or {}).items() if getattr(v, "ndim", 0) >= 2}
    return dict(
        selection=selection, chose_checkpoint=chose, epoch=prov["epoch"], trained_root=str(trained_root),
        same_tree=same_tree, sizes=image_sizes([s.image for s in samples]) if samples else "no image",
        transform=transform_text(d), grids=grids,
    )
