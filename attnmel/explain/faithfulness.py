"""Faithfulness of saliency maps: deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018), batched.

Does removing what a map points at change the prediction? Pixels are ranked by the map (upsampled to the
input first, like every map of the report); for ``k = 0 .. steps`` the top ``k / steps`` of them are

- **deleted**: replaced by the deletion baseline (default 0 in normalised space, i.e. the dataset's mean
  colour, the Integrated Gradients baseline of :mod:`attnmel.explain.attributions`), starting from the image;
- **inserted**: copied from the image into the insertion baseline (default: the image under a strong
  Gaussian blur, RISE's choice), starting from that baseline;

and the probability of the explained class is read at each step. A faithful map makes the deletion curve
fall fast (small area under it) and the insertion curve rise fast (large area). Areas are trapezoids over
the removed fraction in [0, 1]. Ties in a map (plateaus, a constant map) are broken by a fixed random
permutation of the pixels, so a map without information behaves like a random one, not like a raster scan.

Both curves of every method share the images' unperturbed and fully perturbed points, computed once; the
perturbed images of all methods and steps go through the model in batches of ``batch_size``.
Deletion here is the pixel-flipping of Quantus (``quantus.PixelFlipping``; the tests check the curves against
it); insertion has no Quantus counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from attnmel.errors import AttnMelError

DEFAULT_STEPS = 8
DEFAULT_BATCH = 32
BLUR_SIGMA_FRACTION = 0.1  # sigma of the insertion baseline's blur, as a share of the image side
PROTOCOL = ("Pixels are ranked by the map (upsampled bilinearly to the input; ties broken by a fixed random "
            "permutation). Deletion: the top k/{steps} of them (k = 0..{steps}) are replaced by the dataset's mean "
            "colour (0 after normalisation); insertion: they are copied from the image into a blurred copy of it "
            "(Gaussian, sigma = {blur:.0%} of the side). The curve is the probability of the class the map "
            "explains (the predicted class); AUC: trapezoid over the perturbed fraction in [0, 1]. Deletion AUC: "
            "lower is more faithful; insertion AUC: higher is more faithful.")


@dataclass
class Curves:
    """Per image (rows) and step (columns): the explained class's probability; areas under each row."""

    fractions: np.ndarray  # (S+1,) share of pixels perturbed
    deletion: np.ndarray  # (B, S+1)
    insertion: np.ndarray  # (B, S+1)

    @property
    def deletion_auc(self) -> np.ndarray:
        return np.trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray:
        return np.trapezoid(self.insertion, self.fractions, axis=1)


def protocol(steps: int = DEFAULT_STEPS) -> str:
    """The page's sentence on how the curves are made."""
    return PROTOCOL.format(steps=steps, blur=BLUR_SIGMA_FRACTION)


def blurred(images: torch.Tensor, sigma_fraction: float = BLUR_SIGMA_FRACTION) -> torch.Tensor:
    """The insertion baseline: each image under a Gaussian blur of sigma ``sigma_fraction`` x its shorter side."""
    side = min(images.shape[-2:])
    sigma = max(sigma_fraction * side, 0.5)
    k = int(2 * round(3 * sigma) + 1)
    k = min(k, 2 * (side // 2) - 1) if side > 2 else 1  # torchvision wants an odd kernel within the image
    return TF.gaussian_blur(images, [k, k], [sigma, sigma])


def pixel_ranks(saliency: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, H*W) rank of each pixel in its map, 0 = the most salient; ties in a fixed random order."""
    b = saliency.shape[0]
    flat = saliency.reshape(b, -1).float()
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(flat.shape[1], generator=gen)
    # A stable descending sort of the permuted values: equal values keep the permutation's order.
    order = perm[torch.sort(flat[:, perm], dim=1, descending=True, stable=True).indices]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand(b, -1).contiguous())
    return ranks


def _to_input(saliency: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    s = saliency.float()
    if s.ndim == 4:
        s = s[:, 0]
    if s.ndim != 3:
        raise AttnMelError(f"saliency maps must be (B, h, w); got shape {tuple(saliency.shape)}")
    if not torch.isfinite(s).all():
        raise AttnMelError("a saliency map contains NaN or infinite values")
    if tuple(s.shape[-2:]) != tuple(hw):
        s = F.interpolate(s[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
    return s


def _steps_counts(hw: tuple[int, int], steps: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AttnMelError(f"faithfulness steps must be a positive integer, got {steps!r}")
    n = hw[0] * hw[1]
    fractions = np.linspace(0.0, 1.0, steps + 1)
    return fractions, np.round(fractions * n).astype(np.int64)


def perturbation_curves(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                        saliencies: Mapping[str, torch.Tensor], targets: torch.Tensor, steps: int = DEFAULT_STEPS,
                        deletion_baseline: torch.Tensor | float = 0.0,
                        insertion_baseline: torch.Tensor | None = None, batch_size: int = DEFAULT_BATCH,
                        seed: int = 0) -> dict[str, Curves]:
    """Deletion and insertion curves of every method's maps on the same images.

    ``predict(x) -> (N, K)`` class probabilities; ``images`` (B, C, H, W) as the model takes them;
    ``saliencies`` ``{method: (B, h, w)}`` (upsampled to (H, W) when smaller); ``targets`` (B,) the class
    whose probability is tracked. ``insertion_baseline`` None: :func:`blurred` images.
    """
    if images.ndim != 4:
        raise AttnMelError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    fractions, counts = _steps_counts((h, w), steps)
    images = images.float()
    dele = (torch.full_like(images, float(deletion_baseline)) if not isinstance(deletion_baseline, torch.Tensor)
            else deletion_baseline.float().expand_as(images))
    ins = blurred(images) if insertion_baseline is None else insertion_baseline.float().expand_as(images)
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if targets.numel() != b:
        raise AttnMelError(f"{targets.numel()} targets for {b} images")
    ranks = {m: pixel_ranks(_to_input(s, (h, w)), seed).reshape(b, 1, h, w) for m, s in saliencies.items()}

    # Jobs: (key, image, step); the endpoints do not depend on the map and are computed once.
    jobs: list[tuple[str, int, int]] = [(e, i, 0) for e in ("image", "deleted", "blurred") for i in range(b)]
    for m in saliencies:
        jobs += [(f"{c}:{m}", i, k) for c in ("deletion", "insertion") for i in range(b) for k in range(1, steps)]

    def build(job: tuple[str, int, int]) -> torch.Tensor:
        key, i, k = job
        if key == "image":
            return images[i]
        if key == "deleted":
            return dele[i]
        if key == "blurred":
            return ins[i]
        curve, m = key.split(":", 1)
        top = ranks[m][i] < int(counts[k])
        return torch.where(top, dele[i], images[i]) if curve == "deletion" else torch.where(top, images[i], ins[i])

    probs = _predict_jobs(predict, jobs, build, targets, batch_size)
    out: dict[str, Curves] = {}
    for m in saliencies:
        d = np.empty((b, steps + 1))
        s = np.empty((b, steps + 1))
        for i in range(b):
            d[i, 0], d[i, steps] = probs[("image", i, 0)], probs[("deleted", i, 0)]
            s[i, 0], s[i, steps] = probs[("blurred", i, 0)], probs[("image", i, 0)]
            for k in range(1, steps):
                d[i, k] = probs[(f"deletion:{m}", i, k)]
                s[i, k] = probs[(f"insertion:{m}", i, k)]
        out[m] = Curves(fractions, d, s)
    return out


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.inference_mode()
def _predict_jobs(predict, jobs, build, targets: torch.Tensor, batch_size: int) -> dict[tuple[str, int, int], float]:
    out: dict[tuple[str, int, int], float] = {}
    for chunk in _chunks(jobs, max(1, int(batch_size))):
        x = torch.stack([build(j) for j in chunk])
        p = predict(x).float()
        t = targets[[j[1] for j in chunk]]
        vals = p[torch.arange(len(chunk)), t].tolist()
        out.update(zip(chunk, vals))
    return out
