"""The report's section on real artefacts (``data.artefact_flags`` / ``data.artefact_masks``) and the two
counterfactual tests (:mod:`attnmel.explain.counterfactuals`). On by default wherever the inputs exist:

- flags: AUC and mean P(melanoma) with / without each artefact (95 % bootstrap intervals); with lesion masks,
  how often the primary map's peak falls outside the lesion with / without it; the images the model gets
  right while its map peaks off the lesion (or on the artefact's pixels) on a flagged image;
- artefact masks: the share of each map's mass on the artefact, where an evaluated image has a mask;
- artefact insertion: cut-outs from the artefact masks' own images (never an evaluated image) pasted outside
  the lesion; lesion removal where the split has lesion masks.

:func:`real_artefact_section` returns ``(metrics, page context)``; the page shows it in its own block
(``templates/_real_artefacts.html``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("attnmel.report")

MAX_RIGHT_CASES = 20
INSERTION_SEED = 0


def real_artefact_section(inp: Any, c: Any, s: Any, own_cfg: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """``metrics`` for metrics.json (``artefacts_real``) and ``ctx`` for the page; both empty without inputs.

    ``inp``/``c``/``s``: the report's Inputs, Collected and Scores; ``own_cfg``: the run's own config (the
    artefact cut-outs of an external evaluation come from the run's own dataset)."""
    d = inp.run.cfg["data"]
    if not d.get("artefact_flags") and not d.get("artefact_masks"):
        return {}, {}
    mel = inp.run.melanoma_index
    is_mel = s.labels == mel
    p_mel = s.probs[:, mel]
    metrics: dict[str, Any] = {}
    if d.get("artefact_flags"):
        metrics["flags"] = _flag_figures(inp, c, s, is_mel, p_mel)
    if d.get("artefact_masks"):
        metrics.update(_mask_figures(inp, c, s, own_cfg, p_mel))
    return metrics, {"metrics": metrics, "primary": s.primary}


def _flag_figures(inp: Any, c: Any, s: Any, is_mel: np.ndarray, p_mel: np.ndarray) -> dict[str, Any]:
    from attnmel.data.artefacts import read_flags
    from attnmel.metrics.artefacts import artefact_stratified
    from attnmel.metrics.bootstrap import mean_ci

    flags = read_flags(inp.run.cfg["data"]["artefact_flags"], c.ids)
    out = artefact_stratified(flags, c.ids, is_mel, p_mel)
    m = flags.matrix(c.ids)
    correct = s.pred == s.labels
    if inp.has_masks:
        outside = np.array([(c.score(s.primary, k, "pointing_game") or 0.0) == 0.0 for k in range(len(c.ids))])
        out["peak_outside_lesion"] = {
            a: {"with": mean_ci(outside[m[:, j] == 1].astype(float)),
                "without": mean_ci(outside[m[:, j] == 0].astype(float))} for j, a in enumerate(flags.names)}
        right = [k for k in range(len(c.ids)) if correct[k] and outside[k] and np.nansum(m[k]) > 0]
        out["right_looking_off_lesion"] = [
            {"image_id": c.ids[k], "artefacts": [a for j, a in enumerate(flags.names) if m[k, j] == 1],
             "p_melanoma": float(p_mel[k]), "label": int(is_mel[k])} for k in right[:MAX_RIGHT_CASES]]
        out["n_right_looking_off_lesion"] = len(right)
    return out


def _mask_figures(inp: Any, c: Any, s: Any, own_cfg: dict, p_mel: np.ndarray) -> dict[str, Any]:
    from attnmel.data.artefacts import list_artefact_masks

    folder = inp.run.cfg["data"]["artefact_masks"]
    out: dict[str, Any] = {}
    out["map_mass_on_artefact"] = _mass_on_masks(inp, c, list_artefact_masks(folder, c.ids, require=False))
    cuts = _cutouts(inp, own_cfg, folder, set(c.ids))
    if not cuts:
        out["insertion"] = {"skipped": f"no artefact mask in {folder} belongs to an image of the run's dataset "
                                       "outside the evaluated split"}
    else:
        out["insertion"] = _insertion(inp, s, cuts)
    out["removal"] = _removal(inp, p_mel) if inp.has_masks else {
        "skipped": "the split has no lesion masks (give data.masks=<segmentation run or folder>)"}
    return out


def _mass_on_masks(inp: Any, c: Any, masks: dict[str, Path]) -> dict[str, Any]:
    """Mean share of each map's mass (and peak) on the artefact, over the evaluated images with a mask."""
    from attnmel.data.artefacts import network_mask
    from attnmel.explain.artefacts import artefact_scores
    from attnmel.metrics.bootstrap import mean_ci

    samples = {x.image_id: x for x in inp.dm.index(inp.split).samples}
    size = int(inp.run.cfg["data"]["image_size"])
    rows: dict[str, list[dict[str, float]]] = {}
    for k, iid in enumerate(c.ids):
        if iid not in masks:
            continue
        am = network_mask(masks[iid], samples[iid].image, inp.dm.spec, size)
        for method, m in c.maps[k].items():
            rows.setdefault(method, []).append(artefact_scores(np.asarray(m, dtype=np.float32), am))
    return {m: {"n_images": len(r), "share": mean_ci([x["artefact_share"] for x in r]),
                "peak_on_artefact": float(np.mean([x["artefact_peak"] for x in r]))} for m, r in rows.items()}


def _cutouts(inp: Any, own_cfg: dict, folder: str | Path, evaluated: set[str]) -> list:
    """Cut-outs of every artefact mask whose image is in the run's own dataset and not evaluated here."""
    from attnmel.data.artefacts import list_artefact_masks, network_mask
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.errors import AttnMelError
    from attnmel.explain.counterfactuals import cutout

    dm = inp.dm if inp.dm.dataset_name == own_cfg["data"]["dataset"] else AttnMelDataModule(own_cfg, progress=False)
    size = int(inp.run.cfg["data"]["image_size"])
    cuts = []
    for split in ("train", "val", "test"):
        try:
            index = dm.index(split)
        except AttnMelError:
            continue
        masks = list_artefact_masks(folder, [x.image_id for x in index.samples], require=False)
        wanted = [k for k, x in enumerate(index.samples) if x.image_id in masks and x.image_id not in evaluated]
        if not wanted:
            continue
        ds = dm.dataset(split, train=False)
        for k in wanted:
            sample = index.samples[k]
            cut = cutout(ds[k]["image"], network_mask(masks[sample.image_id], sample.image, dm.spec, size),
                         sample.image_id)
            if cut is not None:
                cuts.append(cut)
    return cuts


def _insertion(inp: Any, s: Any, cuts: list) -> dict[str, Any]:
    from attnmel.explain.counterfactuals import insertion, summarise_insertion

    methods = ("attention", "gradcam")
    r = insertion(inp.run.model, inp.dm.loader(inp.used), cuts, inp.run.melanoma_index, seed=INSERTION_SEED,
                  map_methods=methods, has_masks=inp.has_masks)
    out = summarise_insertion(r)
    out.update(n_cutouts=len(cuts), cutout_sources=sorted({c.source for c in cuts}), seed=INSERTION_SEED,
               placement="outside the lesion mask" if inp.has_masks else
               "outside a centred disk (radius 0.3 of the side) standing in for the lesion: the split has no masks")
    return out


def _removal(inp: Any, p_mel: np.ndarray) -> dict[str, Any]:
    from attnmel.explain.counterfactuals import removal, summarise_removal

    with torch.inference_mode():
        r = removal(inp.run.model, inp.dm.loader(inp.used), inp.run.melanoma_index)
    return summarise_removal(r, p_mel)
