"""Baseline saliency maps: the trivial centred Gaussian blob and VGG-16-GAP's class activation map.

Dermoscopy lesions sit near the image centre (the images are framed on them and the eval transform
centre-crops), so a centred blob already overlaps them well; every method is reported next to it.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch
from torch import nn

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


def _resolve_target(target: str | int, logits: torch.Tensor | None, melanoma_index: int,
                    batch: int, device: torch.device) -> torch.Tensor:
    """Class index per image: ``"melanoma"``, ``"predicted"`` (argmax of logits) or a fixed int."""
    if target == "melanoma":
        return torch.full((batch,), melanoma_index, dtype=torch.long, device=device)
    if target == "predicted":
        if logits is None:
            raise ValueError("target='predicted' needs the logits")
        return logits.argmax(dim=1)
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        return torch.full((batch,), int(target), dtype=torch.long, device=device)
    raise AttnMelError(f"unknown explanation target {target!r}; use 'melanoma', 'predicted' or a class index")


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def cam_maps(model: nn.Module, images: torch.Tensor, target: str | int = "predicted",
             melanoma_index: int = 1) -> torch.Tensor:
    """Class activation maps (B, h, w), float on the CPU, of a model with ``class_activation_map`` (``vgg16_gap``).

    ``target``: ``"predicted"`` (the argmax class, the paper's CAM), ``"melanoma"`` or a class index.
    The model is put in eval mode for the call and restored afterwards.
    """
    if not callable(getattr(model, "class_activation_map", None)):
        raise AttnMelError(f"{type(model).__name__} has no class_activation_map; CAM needs the vgg16_gap model")
    was_training = model.training
    model.eval()
    try:
        x = images.to(_device_of(model))
        cams = model.class_activation_map(x)
        logits = model(x).logits if target == "predicted" else None
        idx = _resolve_target(target, logits, melanoma_index, x.shape[0], cams.device)
        return cams[torch.arange(x.shape[0], device=cams.device), idx].float().cpu()
    finally:
        model.train(was_training)


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
