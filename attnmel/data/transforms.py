"""The training recipe's preprocessing and augmentation, applied jointly to the image and its masks.

Two stages:

* **base** (deterministic, done once and cached by :mod:`attnmel.data.cache`): a square centre crop of
  side ``center_crop * min(W, H)`` (or, for segment-then-classify, a crop to the mask's bounding box or
  zeroing outside the mask), then a resize to ``resize`` x ``resize`` (bilinear for the image, nearest for
  masks). Works on ``uint8`` numpy arrays: :func:`base_preprocess`.
* **random / eval** (every epoch): random ``image_size`` crop, rotation by a random multiple of 90 degrees,
  random horizontal and vertical flips, to float and normalise (:class:`TrainTransform`); or a centre crop
  and normalise (:class:`EvalTransform`). Images and masks are ``torchvision`` ``tv_tensors`` and go through
  the same ``transforms.v2`` kernels with the same parameters, so masks keep exactly the image's geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision import tv_tensors

from attnmel.errors import AttnMelError

Triple = tuple[float, float, float]

IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)

# Per-dataset channel statistics (RGB in [0, 1], after the base centre crop + resize).
# isic2016 / isic2017: the paper's released numbers (spec section 3). synthetic: measured with
# attnmel.data.stats.compute_stats on the train split of the default synthetic set (n 600, size 96, seed 0,
# spurious; without the spurious cue the numbers move by < 0.003). Datasets not listed (ham10000,
# isic2018_task1) fall back to ImageNet's; `attnmel data stats` computes a split's numbers for the
# data.mean / data.std overrides.
NORMALIZATION: dict[str, tuple[Triple, Triple]] = {
    "isic2016": ((0.7012, 0.5517, 0.4875), (0.0942, 0.1331, 0.1521)),
    "isic2017": ((0.6820, 0.5312, 0.4736), (0.0840, 0.1140, 0.1282)),
    "synthetic": ((0.6980, 0.5073, 0.4236), (0.1787, 0.1424, 0.1331)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

CROP_TO_MASK_MODES = (None, "crop", "masked")
COLOR_CONSTANCY = (None, "shades_of_gray")
SHADES_OF_GRAY_POWER = 6  # Finlayson & Trezzi's Minkowski norm; p = 6 is the usual choice on ISIC (Barata et al.)


def shades_of_gray(image: np.ndarray, power: float = SHADES_OF_GRAY_POWER) -> np.ndarray:
    """Shades of Gray colour constancy on a uint8 (h, w, 3) image: each channel divided by its Minkowski
    ``power``-norm mean (the illuminant estimate), rescaled so the three estimates become equal (grey light)
    at the image's mean estimate; returns uint8. Dermoscopes differ in light and white balance; this removes
    most of that cast, deterministically, so train, eval and predict see the same correction."""
    x = np.asarray(image, dtype=np.float32)
    illum = np.power(np.mean(np.power(x, power), axis=(0, 1)), 1.0 / power)  # (3,)
    norm = float(np.sqrt(np.sum(illum ** 2)))
    if norm <= 0 or not np.all(illum > 0):
        return np.asarray(image, dtype=np.uint8).copy()  # an all-black channel: nothing to correct
    gain = (norm / np.sqrt(3.0)) / illum  # equal estimates of the same length as before
    return np.clip(x * gain + 0.5, 0, 255).astype(np.uint8)


def _triple(value: object, key: str, positive: bool) -> Triple:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise AttnMelError(f"config: {key} must be a list of 3 numbers (R, G, B), got {value!r}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise AttnMelError(f"config: {key} must be a list of 3 numbers (R, G, B), got {value!r}") from None
    if positive and min(out) <= 0:
        raise AttnMelError(f"config: {key} must be positive, got {value!r}")
    return out  # type: ignore[return-value]


def normalization_stats(dataset: str, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None) -> tuple[Triple, Triple]:
    """(mean, std) for ``dataset``: the ``data.mean`` / ``data.std`` overrides where given, else the
    dataset's entry in :data:`NORMALIZATION`, else ImageNet's."""
    base_mean, base_std = NORMALIZATION.get(dataset, NORMALIZATION["imagenet"])
    m = _triple(mean, "data.mean", positive=False) if mean is not None else base_mean
    s = _triple(std, "data.std", positive=True) if std is not None else base_std
    return m, s


def normalization_from_cfg(cfg_data: Mapping) -> tuple[Triple, Triple]:
    """:func:`normalization_stats` for a config's ``data`` section."""
    return normalization_stats(cfg_data["dataset"], cfg_data.get("mean"), cfg_data.get("std"))


normalisation = normalization_from_cfg  # the British spelling the rest of the code base uses


# ----------------------------------------------------------------------------------------------- base


@dataclass(frozen=True)
class BaseSpec:
    """Parameters of the deterministic base step (everything that changes the cached arrays)."""

    resize: int = 256
    center_crop: float | None = 0.8  # None: the whole image, resized to a square (aspect not kept)
    crop_to_mask: str | None = None  # None | "crop" | "masked"
    crop_margin: float = 0.1
    color_constancy: str | None = None  # None | "shades_of_gray" (on the resized image)

    def __post_init__(self) -> None:
        if self.color_constancy not in COLOR_CONSTANCY:
            raise AttnMelError(f"config: data.color_constancy must be null or shades_of_gray, "
                               f"got {self.color_constancy!r}")
        if self.crop_to_mask not in CROP_TO_MASK_MODES:
            raise AttnMelError(f"config: data.crop_to_mask must be null, crop or masked, got {self.crop_to_mask!r}")
        if self.center_crop is not None and not 0 < self.center_crop <= 1:
            raise AttnMelError(f"config: data.center_crop must be in (0, 1] or null, got {self.center_crop!r}")
        if self.crop_margin < 0:
            raise AttnMelError(f"config: data.crop_margin must be >= 0, got {self.crop_margin!r}")
        if self.resize < 1:
            raise AttnMelError(f"config: data.resize must be positive, got {self.resize!r}")

    @classmethod
    def from_cfg(cls, cfg_data: Mapping) -> BaseSpec:
        """The base spec of a config's ``data`` section."""
        mode = cfg_data.get("crop_to_mask")
        if isinstance(mode, str) and mode.lower() in ("none", "null", ""):
            mode = None
        crop = cfg_data.get("center_crop", 0.8)
        cc = cfg_data.get("color_constancy")
        if isinstance(cc, str) and cc.lower() in ("none", "null", ""):
            cc = None
        return cls(resize=int(cfg_data.get("resize", 256)), center_crop=None if crop is None else float(crop),
                   crop_to_mask=mode, crop_margin=float(cfg_data.get("crop_margin", 0.1) or 0.0),
                   color_constancy=cc)

    def as_dict(self) -> dict:
        out = {"resize": self.resize, "center_crop": self.center_crop, "crop_to_mask": self.crop_to_mask,
               "crop_margin": self.crop_margin}
        if self.color_constancy:  # only when set, so the caches built before this option keep their keys
            out["color_constancy"] = self.color_constancy
        return out


Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels of the full-resolution image


def _mask_bbox(mask: np.ndarray, width: int, height: int) -> Box | None:
    """Bounding box of a (possibly differently sized) mask, in the full image's pixel coordinates."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    sy, sx = height / mask.shape[0], width / mask.shape[1]
    return (cols[0] * sx, rows[0] * sy, (cols[-1] + 1) * sx, (rows[-1] + 1) * sy)


def crop_box(width: int, height: int, spec: BaseSpec, crop_mask: np.ndarray | None = None) -> Box:
    """The region of a ``width`` x ``height`` image the base step keeps.

    Default: the centred square of side ``center_crop * min(W, H)``. With ``crop_to_mask == "crop"`` and a
    non-empty ``crop_mask``: a square around the mask's bounding box, its side the box's longer side plus
    ``crop_margin`` of it on each side, shifted (not shrunk) to stay inside the image and clipped only where
    the image is smaller. An empty mask falls back to the centre crop (a segmenter that found nothing should
    not blank the image). ``center_crop`` None: the whole image (the segmentation seeds' choice, so a
    predicted mask maps back onto every pixel).
    """
    if spec.crop_to_mask == "crop" and crop_mask is not None:
        bbox = _mask_bbox(crop_mask, width, height)
        if bbox is not None:
            bx0, by0, bx1, by1 = bbox
            side = max(bx1 - bx0, by1 - by0) * (1 + 2 * spec.crop_margin)
            w, h = min(side, float(width)), min(side, float(height))
            cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
            x0 = min(max(cx - w / 2, 0.0), width - w)
            y0 = min(max(cy - h / 2, 0.0), height - h)
            return (x0, y0, x0 + w, y0 + h)
    if spec.center_crop is None:
        return (0.0, 0.0, float(width), float(height))
    side = spec.center_crop * min(width, height)
    return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


def draft_min_side(width: int, height: int, box: Box, resize: int) -> int:
    """Smallest decoded shorter side for which ``box`` still holds >= ``resize`` pixels per side
    (what :func:`attnmel.data.images.load_image` may reduce a JPEG to)."""
    box_side = max(min(box[2] - box[0], box[3] - box[1]), 1e-6)
    return int(math.ceil(resize * min(width, height) / box_side))


def _scaled_box(box: Box, full_wh: tuple[int, int], arr_wh: tuple[int, int]) -> Box:
    """``box`` (full-resolution pixels) in the pixels of an array of size ``arr_wh``.

    A JPEG decoded in draft mode at 1/s is ceil(W/s) wide and its pixel i covers source pixels [i*s, (i+1)*s):
    dividing by s is exact, while W/w would drift by up to a pixel at the far edge.
    """
    (W, H), (w, h) = full_wh, arr_wh
    if (w, h) == (W, H):
        return box
    s = round(W / w)
    if s >= 1 and math.ceil(W / s) == w and math.ceil(H / s) == h:
        return (box[0] / s, box[1] / s, box[2] / s, box[3] / s)
    sx, sy = w / W, h / H
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def crop_resize(arr: np.ndarray, box: Box, full_wh: tuple[int, int], out_wh: tuple[int, int],
                nearest: bool) -> np.ndarray:
    """The ``box`` (pixels of the ``full_wh`` = (W, H) original) of ``arr`` resized to ``out_wh`` = (w, h).

    ``arr`` may be the original or a reduced decode / a mask of another resolution with the same aspect: one PIL
    call with a float box, so images and masks of different resolutions stay aligned to the sub-pixel.
    Bilinear for images, nearest for masks (``nearest``). Returns a writable copy.
    """
    h, w = arr.shape[:2]
    sub = _scaled_box(box, full_wh, (w, h))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.array(Image.fromarray(arr).resize((int(out_wh[0]), int(out_wh[1])), resample, box=sub))


def _crop_resize(arr: np.ndarray, box: Box, full_wh: tuple[int, int], size: int, nearest: bool) -> np.ndarray:
    return crop_resize(arr, box, full_wh, (size, size), nearest)


def eval_box(width: int, height: int, spec: BaseSpec, image_size: int, crop_mask: np.ndarray | None = None) -> Box:
    """The region of a ``width`` x ``height`` original that the eval transform's output shows, in its pixels.

    The base step keeps :func:`crop_box` and resizes it to ``spec.resize`` squared; :class:`EvalTransform` then
    keeps the centred ``image_size`` of that, i.e. the centred ``image_size / resize`` of the box along each
    axis (a non-square box when ``center_crop`` is None: the network saw it squeezed to a square). A map of the
    network's input, stretched over this box, lands where the network looked.
    """
    x0, y0, x1, y1 = crop_box(width, height, spec, crop_mask)
    if image_size > spec.resize:
        raise AttnMelError(f"data.image_size {image_size} is larger than the preprocessed image "
                           f"({spec.resize}x{spec.resize})")
    # EvalTransform's centre crop starts at round((R - S) / 2) (torchvision), in resized pixels.
    off = int(round((spec.resize - image_size) / 2.0))
    sx, sy = (x1 - x0) / spec.resize, (y1 - y0) / spec.resize
    return (x0 + off * sx, y0 + off * sy, x0 + (off + image_size) * sx, y0 + (off + image_size) * sy)


def display_size(box: Box, max_side: int | None) -> tuple[int, int]:
    """(w, h) at which to show ``box``: its own pixels, the long side capped at ``max_side`` (None: no cap)."""
    bw, bh = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
    scale = 1.0 if max_side is None else min(1.0, float(max_side) / max(bw, bh))
    return max(1, int(round(bw * scale))), max(1, int(round(bh * scale)))


def resize_label_map(arr: np.ndarray, box: Box, full_wh: tuple[int, int], size: int) -> np.ndarray:
    """A uint8 label map (e.g. packed attribute bits) through the base step's crop and resize, nearest
    neighbour so no value is blended into another; ``box`` as :func:`crop_box` gives it."""
    return _crop_resize(np.ascontiguousarray(arr, dtype=np.uint8), box, full_wh, size, nearest=True)


def base_preprocess(image: np.ndarray, full_size: tuple[int, int], spec: BaseSpec,
                    mask: np.ndarray | None = None, dermo: np.ndarray | None = None,
                    crop_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The base step on decoded arrays.

    ``image`` uint8 (h, w, 3), possibly decoded at reduced size from a ``full_size`` = (W, H) original;
    ``mask`` / ``dermo`` / ``crop_mask`` bool or 0/1 arrays of any resolution with the image's aspect.
    ``crop_mask`` is the mask ``spec.crop_to_mask`` uses (defaults to ``mask``). Returns the image uint8
    (R, R, 3) and the masks uint8 (R, R) in {0, 1} (None where not given).
    """
    W, H = full_size
    crop_mask = mask if crop_mask is None else crop_mask
    if spec.crop_to_mask and crop_mask is None:
        raise AttnMelError(f"data.crop_to_mask={spec.crop_to_mask} needs a mask for every image")
    box = crop_box(W, H, spec, crop_mask)
    R = spec.resize
    img = _crop_resize(image, box, (W, H), R, nearest=False)
    if spec.color_constancy == "shades_of_gray":
        img = shades_of_gray(img)

    out_mask, out_dermo = _resize_mask(mask, box, (W, H), R), _resize_mask(dermo, box, (W, H), R)
    if spec.crop_to_mask == "masked":
        keep = out_mask if crop_mask is mask else _resize_mask(crop_mask, box, (W, H), R)
        if keep is not None and keep.any():  # empty: leave the image as is, like crop_box does
            img = img * keep[..., None]
    return img, out_mask, out_dermo


def _resize_mask(m: np.ndarray | None, box: Box, full_wh: tuple[int, int], size: int) -> np.ndarray | None:
    if m is None:
        return None
    m8 = (np.asarray(m) > 0).astype(np.uint8)
    return _crop_resize(m8, box, full_wh, size, nearest=True)


def base_mask(m: np.ndarray, full_size: tuple[int, int], spec: BaseSpec,
              crop_mask: np.ndarray | None = None) -> np.ndarray:
    """The base step of :func:`base_preprocess` on one more mask (e.g. the artefact mask): the same crop box
    and nearest resize, and with ``crop_to_mask: masked`` zero where the image is zeroed (what is blanked
    out of the image is no longer there to look at). ``crop_mask``: the mask the crop follows, as given to
    :func:`base_preprocess`. Returns uint8 (R, R) in {0, 1}."""
    W, H = full_size
    if spec.crop_to_mask and crop_mask is None:
        raise AttnMelError(f"data.crop_to_mask={spec.crop_to_mask} needs a mask for every image")
    box = crop_box(W, H, spec, crop_mask)
    out = _resize_mask(m, box, (W, H), spec.resize)
    if spec.crop_to_mask == "masked":
        keep = _resize_mask(crop_mask, box, (W, H), spec.resize)
        if keep is not None and keep.any():
            out = out * keep
    return out


# ---------------------------------------------------------------------------------------------- random


def _to_tv(image: np.ndarray | torch.Tensor, masks: Mapping[str, np.ndarray | torch.Tensor | None]
           ) -> tuple[tv_tensors.Image, dict[str, tv_tensors.Mask]]:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    img = tv_tensors.Image(image)
    out = {}
    for name, m in masks.items():
        if m is None:
            continue
        t = torch.from_numpy(np.ascontiguousarray(m)) if isinstance(m, np.ndarray) else m
        if t.ndim == 2:
            t = t[None]
        out[name] = tv_tensors.Mask(t)
    return img, out


def _finish(img: torch.Tensor, masks: Mapping[str, torch.Tensor], mean: Triple, std: Triple) -> dict[str, torch.Tensor]:
    x = F.to_dtype(img, torch.float32, scale=True)
    x = F.normalize(x, list(mean), list(std))
    out = {"image": x.as_subclass(torch.Tensor).contiguous()}
    for name, m in masks.items():
        out[name] = (m.as_subclass(torch.Tensor) > 0).float().contiguous()
    return out


@dataclass(frozen=True)
class Augment:
    """The optional stronger augmentation of :class:`TrainTransform` (all off by default: the paper's recipe).

    ``crop_scale``: (lo, hi) share of the base image's area a random-resized crop keeps (aspect 3/4..4/3),
    resized to ``image_size``; None: a plain random ``image_size`` crop. ``rotation``: a further rotation by a
    uniform angle in [-rotation, rotation] degrees (after the rot90). ``color_jitter``: brightness, contrast
    and saturation each scaled by a uniform factor in [1 - j, 1 + j] (the image only, never the masks).
    """

    crop_scale: tuple[float, float] | None = None
    rotation: float = 0.0
    color_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            if not 0 < lo <= hi <= 1:
                raise AttnMelError(f"config: data.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, "
                                   f"got {list(self.crop_scale)!r}")
        if not 0 <= self.rotation <= 180:
            raise AttnMelError(f"config: data.rotation must be in [0, 180] degrees, got {self.rotation!r}")
        if not 0 <= self.color_jitter < 1:
            raise AttnMelError(f"config: data.color_jitter must be in [0, 1), got {self.color_jitter!r}")

    @classmethod
    def from_cfg(cls, cfg_data: Mapping) -> Augment:
        """The augmentation of a config's ``data`` section."""
        scale = cfg_data.get("crop_scale")
        return cls(crop_scale=None if scale is None else (float(scale[0]), float(scale[1])),
                   rotation=float(cfg_data.get("rotation") or 0.0),
                   color_jitter=float(cfg_data.get("color_jitter") or 0.0))


def _resized_crop_box(height: int, width: int, scale: tuple[float, float], u: list[float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop from uniforms ``u`` (4 values in [0, 1)); torchvision's
    RandomResizedCrop rule in one draw (no retry loop): the box is clipped to the image instead."""
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1]
    aspect = math.exp(log_r)
    w = int(round(math.sqrt(area * aspect)))
    h = int(round(math.sqrt(area / aspect)))
    w, h = max(1, min(w, width)), max(1, min(h, height))
    return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w


class TrainTransform:
    """Random ``size`` crop -> rot90 x k -> random h/v flips -> float + normalise, jointly on image and masks.

    With an :class:`Augment`: a random-resized crop instead of the plain crop, a free rotation after the
    flips (zeros filled in; masks nearest) and colour jitter on the image. Call with the base image (uint8
    (R, R, 3) array or (3, R, R) tensor) and a mapping of masks (``{"mask": (R, R), "dermo": (R, R)}``, None
    values skipped); returns ``{"image": float (3, S, S), "mask": float (1, S, S), ...}``. Random draws come
    from ``generator`` (torch's global RNG when None, which DataLoader workers seed per worker).
    """

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 augment: Augment | None = None) -> None:
        self.size = int(size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment or Augment()

    def params(self, height: int, width: int, generator: torch.Generator | None = None) -> dict:
        """Draw one set of augmentation parameters for an input of ``height`` x ``width``."""
        S = self.size
        if height < S or width < S:
            raise AttnMelError(f"data.image_size {S} is larger than the preprocessed image ({width}x{height})")
        r = torch.randint(0, 1 << 30, (5,), generator=generator).tolist()
        p: dict = {"top": r[0] % (height - S + 1), "left": r[1] % (width - S + 1), "k": r[2] % 4,
                   "hflip": bool(r[3] & 1), "vflip": bool(r[4] & 1)}
        a = self.augment
        if a.crop_scale is None and not a.rotation and not a.color_jitter:
            return p  # the paper's draws, unchanged
        u = torch.rand(8, generator=generator).tolist()
        if a.crop_scale is not None:
            p["box"] = _resized_crop_box(height, width, a.crop_scale, u[:4])
        if a.rotation:
            p["angle"] = (2 * u[4] - 1) * a.rotation
        if a.color_jitter:
            j = a.color_jitter
            p["jitter"] = tuple(1 + (2 * v - 1) * j for v in u[5:8])  # brightness, contrast, saturation
        return p

    @staticmethod
    def apply(x: torch.Tensor, p: Mapping, size: int) -> torch.Tensor:
        """The geometric part with fixed parameters ``p``, on one tv_tensor (Image or Mask; a Mask is resized
        and rotated nearest-neighbour by torchvision's dispatch)."""
        if "box" in p:
            top, left, h, w = p["box"]
            x = F.resized_crop(x, top, left, h, w, [size, size], antialias=True)
        else:
            x = F.crop(x, p["top"], p["left"], size, size)
        if p["k"]:
            x = tv_tensors.wrap(torch.rot90(x, p["k"], dims=(-2, -1)), like=x)
        if p["hflip"]:
            x = F.horizontal_flip(x)
        if p["vflip"]:
            x = F.vertical_flip(x)
        if p.get("angle"):
            x = F.rotate(x, float(p["angle"]))
        return x

    @staticmethod
    def jitter(img: torch.Tensor, p: Mapping) -> torch.Tensor:
        """Colour jitter of a uint8 image with the drawn factors (no-op without them)."""
        if "jitter" not in p:
            return img
        b, c, s = p["jitter"]
        img = F.adjust_brightness(img, b)
        img = F.adjust_contrast(img, c)
        return F.adjust_saturation(img, s)

    def __call__(self, image: np.ndarray | torch.Tensor, masks: Mapping[str, np.ndarray | None] | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        img, ms = _to_tv(image, masks or {})
        p = self.params(img.shape[-2], img.shape[-1], generator)
        img = self.jitter(self.apply(img, p, self.size), p)
        ms = {k: self.apply(m, p, self.size) for k, m in ms.items()}
        return _finish(img, ms, self.mean, self.std)


class EvalTransform:
    """Centre ``size`` crop -> float + normalise (deterministic); same call signature as TrainTransform."""

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.size = int(size)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: np.ndarray | torch.Tensor, masks: Mapping[str, np.ndarray | None] | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        img, ms = _to_tv(image, masks or {})
        if img.shape[-2] < self.size or img.shape[-1] < self.size:
            raise AttnMelError(f"data.image_size {self.size} is larger than the preprocessed image "
                               f"({img.shape[-1]}x{img.shape[-2]})")
        img = F.center_crop(img, [self.size, self.size])
        ms = {k: F.center_crop(m, [self.size, self.size]) for k, m in ms.items()}
        return _finish(img, ms, self.mean, self.std)

