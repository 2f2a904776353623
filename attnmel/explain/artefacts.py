"""Attention on artefacts: how much of a map lies on the artefacts planted in an image (synthetic sets).

The same post-processing and scores as the lesion (:mod:`attnmel.explain.maps`), against the artefact mask:
``artefact_share`` is the share of the re-normalised map's mass on artefact pixels (energy inside, with the
artefact as the region), ``artefact_peak`` whether the map's maximum lies on an artefact (pointing game; ties
share the hit). An image without artefacts (an all-zero mask) scores 0 on both.
"""

from __future__ import annotations

import numpy as np
import torch

from attnmel.explain.maps import _as_mask, energy_inside, pointing_game, postprocess_map

ARTEFACT_KEYS = ("artefact_share", "artefact_peak")


def artefact_scores(m: np.ndarray | torch.Tensor, artefact: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``{"artefact_share", "artefact_peak"}`` of a raw map against a boolean artefact mask (H, W)."""
    mask = _as_mask(artefact)
    pm = postprocess_map(m, mask.shape)
    return {"artefact_share": energy_inside(pm, mask), "artefact_peak": pointing_game(pm, mask)}
