"""``attnmel predict``: class probabilities for arbitrary images, with optional map overlays.

The run is opened on its device (:func:`attnmel.train.inference.open_run`; ``device`` or ``trainer.accelerator``)
and its probabilities come from the one scoring function, :func:`attnmel.train.inference.score_loader` (so a
``model.svm`` run shows the fused probabilities, as in ``metrics.json`` and the report), scaled by the run's
temperature where it was kept (:mod:`attnmel.train.calibration`), as ``predictions.csv`` and the report are.
Maps come from :func:`attnmel.explain.attributions.explain_batch`, the report's implementation: the attention
maps (class-agnostic), Grad-CAM, and CAM for VGG-16-GAP, the class-specific ones explaining
:data:`~attnmel.explain.attributions.DEFAULT_TARGET` (each image's predicted class) as in the report. Overlays are
drawn by :mod:`attnmel.explain.overlay` on the original image's region that the network saw, at its own
resolution with the long side capped at ``overlay_size`` (1024 px by default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnmel.errors import AttnMelError
from attnmel.explain.attributions import DEFAULT_TARGET
from attnmel.explain.overlay import DEFAULT_OVERLAY_SIDE

PREDICT_METHODS = ("attention", "gradcam", "cam")


def predict_images(run_dir: str | Path, images: list[Path], overlay_dir: Path | None = None,
                   batch_size: int = 16, print_table: bool = True, overlay_size: int | None = DEFAULT_OVERLAY_SIDE,
                   target: str | int = DEFAULT_TARGET, device: str | None = None) -> list[dict]:
    """Probabilities per image (printed as a table); ``overlay_dir``: a PNG per image with its maps.

    Each row: ``image``, one probability per class, ``predicted`` and ``explained`` (the class the Grad-CAM/CAM
    maps explain). ``overlay_size``: long side of the overlays in pixels (None: the original's resolution).
    """
    from attnmel.data.images import load_image
    from attnmel.explain.attributions import check_target, describe_target
    from attnmel.explain.overlay import check_overlay_side
    from attnmel.train.calibration import apply_kept, read_calibration
    from attnmel.train.inference import open_run

    check_target(target)
    check_overlay_side(overlay_size)
    run = open_run(run_dir, device)
    if run.cfg.get("task", "classification") != "classification":
        raise AttnMelError(f"{run_dir}: a segmentation run; use `attnmel segment`")
    for p in images:  # fail before any work on the first bad file, naming it
        load_image(p)
    dm = run.data()
    ds = dm.predict_dataset([Path(p) for p in images])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    probs, targets, maps_all = explain_images(run, loader, target)
    probs = apply_kept(probs, read_calibration(run.run_dir))  # the run's temperature, as evaluate and the report
    rows: list[dict] = []
    for i in range(probs.shape[0]):
        row = {"image": str(images[i]), **{c: float(p) for c, p in zip(run.class_names, probs[i])}}
        row["predicted"] = run.class_names[int(probs[i].argmax())]
        row["explained"] = run.class_names[int(targets[i])]
        rows.append(row)
    explains = describe_target(target, run.class_names, run.melanoma_index)
    if print_table:
        _print_rows(rows, run.class_names)
        print(f"maps: attention is class-agnostic; Grad-CAM{' and CAM' if 'cam' in maps_all[0] else ''} "
              f"explain {explains}")
    if overlay_dir is not None:
        write_overlays(Path(overlay_dir), rows, maps_all, ds, dm, run, explains, overlay_size)
        print(f"overlays: {overlay_dir}")
    return rows


def explain_images(run, loader, target: str | int) -> tuple[np.ndarray, list[int], list[dict[str, np.ndarray]]]:
    """Probabilities (N, K) from the one scoring function, the class each image's maps explain, and its maps."""
    from attnmel.explain.attributions import explain_batch
    from attnmel.train.inference import score_loader

    targets: list[int] = []
    maps_all: list[dict[str, np.ndarray]] = []

    def forward(batch: dict):
        with run.autocast():
            ex = explain_batch(run.model, batch["image"], PREDICT_METHODS, target, run.melanoma_index)
        targets.extend(int(t) for t in ex.targets)
        maps_all.extend({k: v[i].numpy() for k, v in ex.maps.items()} for i in range(len(ex.targets)))
        return ex

    return score_loader(run, loader, forward).probs, targets, maps_all


def write_overlays(overlay_dir: Path, rows: list[dict], maps_all: list[dict[str, np.ndarray]], ds, dm, run,
                   explains: str, overlay_size: int | None) -> list[Path]:
    """``<stem>_attention.png`` per image: the image's region the network saw and each map over it."""
    from attnmel.explain.methods import short_label
    from attnmel.explain.overlay import display_view, map_panels, write_overlay_figure

    mel = run.class_names[run.melanoma_index]
    out = []
    for k, (row, maps) in enumerate(zip(rows, maps_all)):
        shown, mask = display_view(ds.sources[k], dm.spec, dm.image_size, overlay_size)
        panels = map_panels(shown, maps, mask)
        titles = {"image": "image", **{m: short_label(m) for m in maps}}
        caption = (f"Grad-CAM{' and CAM' if 'cam' in maps else ''} explain {explains} (here '{row['explained']}'); "
                   "attention maps are the model's own, class-agnostic.")
        out.append(write_overlay_figure(overlay_dir / f"{Path(row['image']).stem}_attention.png", panels, titles,
                                        title=f"{Path(row['image']).name}: predicted {row['predicted']} "
                                              f"(p({mel}) = {row[mel]:.3f})", caption=caption))
    return out


def _print_rows(rows: list[dict], class_names: list[str]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="predictions")
    table.add_column("image", overflow="fold")
    for c in class_names:
        table.add_column(escape(c), justify="right")
    table.add_column("predicted")
    for r in rows:
        table.add_row(escape(Path(r["image"]).name), *(f"{r[c]:.4f}" for c in class_names), escape(r["predicted"]))
    Console().print(table)
