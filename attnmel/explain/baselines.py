"""The no-model baseline saliency map: a centred Gaussian blob (VGG-16-GAP's CAM is in :mod:`.attributions`).

Dermoscopy lesions sit near the image centre (the images are framed on them and the eval transform
centre-crops), so a centred blob already overlaps them well; every method is reported next to it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from attnmel.errors import AttnMelError

DEFAULT_SIGMA_FRACTION = 0.25


def gaussian_blob(hw: tuple[int, int], sigma_fraction: float = DEFAULT_SIGMA_FRACTION) -> np.ndarray:
    """Centred Gaussian (H, W) float32 with peak 1; sigma along each axis = ``sigma_fraction`` x that side."""
    if sigma_fraction <= 0:
        raise AttnMelError(f"blob sigma fraction must be > 0; got {sigma_fraction}")
    h, w = int(hw[0]), int(hw[1])
    # Pixel centres, so the blob is symmetric for even and odd sides alike.
    y = (np.arange(h) + 0.5 - h / 2.0) / (sigma_fraction * h)
    x = (np.arange(w) + 0.5 - w / 2.0) / (sigma_fraction * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)


def blob_maps(masks: Sequence[np.ndarray], sigma_fraction: float = DEFAULT_SIGMA_FRACTION) -> list[np.ndarray]:
    """One centred blob per mask, at that mask's size (ready for ``attention_quality``)."""
    return [gaussian_blob(np.shape(m)[-2:], sigma_fraction) for m in masks]


RANDOM_MAP_STRIDE = 8  # the random map's grid: one value per 8 x 8 input pixels (pool-3's grid)


def random_map(image_id: str, hw: tuple[int, int]) -> np.ndarray:
    """A uniform-random map (h, w) float32 in [0, 1), the floor every method should beat.

    Seeded by the image id (CRC-32), so an image gets the same map in every report, model and pass, whatever
    else was drawn: it does not depend on the model at all.
    """
    import zlib

    rng = np.random.default_rng(zlib.crc32(str(image_id).encode("utf-8")))
    return rng.random((max(1, int(hw[0])), max(1, int(hw[1]))), dtype=np.float32)


def random_map_hw(image_hw: tuple[int, int]) -> tuple[int, int]:
    """The random map's size for an input of ``image_hw``."""
    return max(1, int(image_hw[0]) // RANDOM_MAP_STRIDE), max(1, int(image_hw[1]) // RANDOM_MAP_STRIDE)


def baseline_maps(ids: Sequence[str], hw: tuple[int, int]) -> dict[str, list[np.ndarray]]:
    """The model-free maps of each image at ``hw``: the centred blob and the uniform-random floor, by method key."""
    blob = gaussian_blob(hw)
    return {"blob": [blob for _ in ids], "random": [random_map(i, random_map_hw(hw)) for i in ids]}
