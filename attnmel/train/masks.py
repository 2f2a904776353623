"""``data.masks`` naming a segmentation run: resolved once, here, to the folder of that run's masks.

The masks of every image of the dataset are predicted once (:func:`ensure_predicted_masks`) into the
segmentation run's ``masks/<dataset>/`` (:meth:`attnmel.train.rundir.RunDir.masks_dir`), before any DataModule
exists, so the data layer only ever reads a folder of masks. Training saves the resolved config; a run that is
opened later (:func:`attnmel.train.inference.open_run`) goes through the same function, so an edited
``data.masks`` in ``config.yaml`` works too.
"""

from __future__ import annotations

from pathlib import Path

from attnmel.errors import AttnMelError, file_error
from attnmel.train.rundir import RunDir, load_run


def resolve_mask_source(cfg: dict) -> dict:
    """The config with ``data.masks`` naming a segmentation run replaced by that run's masks folder for the
    dataset (predicted on first use); any other config comes back unchanged. ``data.masks`` naming a run folder
    that is not a segmentation run is a one-line error."""
    d = cfg["data"]
    if not d.get("masks") or not RunDir(d["masks"]).is_run():
        return cfg
    if not RunDir(d["masks"]).is_segmentation_run():
        raise file_error(d["masks"], "data.masks names a run folder that is not a segmentation run")
    out = ensure_predicted_masks(d["masks"], d["dataset"], d["root"], num_classes=int(d["num_classes"]))
    return {**cfg, "data": {**d, "masks": str(out)}}


def ensure_predicted_masks(seg_run_dir: str | Path, dataset: str, root: str | Path, num_classes: int = 2,
                           progress: bool = True) -> Path:
    """Masks of every image of a dataset (all splits) from a segmentation run, made once and kept.

    They live in ``<seg run>/masks/<dataset>/`` as ``<image_id>_segmentation.png``; images already done
    are skipped, so an interrupted pass resumes and a second classifier reuses them.
    """
    from attnmel.train.segment import check_segmentation_run, samples_without_masks, write_masks

    out = RunDir(seg_run_dir).masks_dir(dataset)
    todo = samples_without_masks(dataset, root, out, num_classes=num_classes)
    if todo:
        from attnmel.train.segmentation import segmentation_outputs

        run = check_segmentation_run(load_run(seg_run_dir))
        if segmentation_outputs(run.cfg) != ("lesion",):
            raise AttnMelError(f"{seg_run_dir}: data.masks needs a lesion segmentation run; this one detects "
                               "attributes")
        write_masks(run, [s.image for s in todo], out, ids=[s.image_id for s in todo], progress=progress)
    return out
