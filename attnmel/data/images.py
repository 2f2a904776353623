"""Reading images and masks with one-line errors for everything a download can get wrong.

Images come back as ``uint8`` RGB arrays (H, W, 3); masks as ``bool`` arrays (H, W), thresholded at
> 128 like the official ISIC scorer. Grayscale, RGBA, palette and 16-bit files are converted with a
one-line warning; corrupt or truncated files raise :class:`~attnmel.errors.AttnMelError`.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnmel.errors import file_error

log = logging.getLogger("attnmel.data")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise file_error(path, "file not found")
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise file_error(path, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise file_error(path, f"image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise file_error(path, f"cannot open image ({_one_line(e)})") from None
    return im


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or e.__class__.__name__


def _load(im: Image.Image, path: Path) -> None:
    _warn_deep_colour(im, path)
    try:
        im.load()
    # PIL reports broken files through several exception types depending on the codec and where
    # the data ends; all of them mean the same to the user.
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        msg = _one_line(e)
        problem = "truncated image file" if "truncated" in msg else f"corrupt image ({msg})"
        raise file_error(path, problem) from None


def _warn_deep_colour(im: Image.Image, path: Path) -> None:
    """PIL reads 48-bit RGB (and 64-bit RGBA) PNGs as 8 bits per channel without a word; say so."""
    tile = getattr(im, "tile", None) or []
    raw = str(tile[0][3]) if tile and len(tile[0]) > 3 else ""
    if im.mode in ("RGB", "RGBA") and ";16" in raw:
        log.warning("%s: %d-bit %s (16 bits per channel), read as 8 bits per channel", path,
                    16 * len(im.mode), im.mode)


def _to_uint8(im: Image.Image, path: Path, what: str) -> Image.Image:
    """16-bit and 32-bit integer modes scaled to 8 bits (PIL's own convert clips them)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        log.warning("%s: 16-bit %s, scaled to 8 bits", path, what)
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        hi = 255.0 if arr.max() > 1.0 else 1.0
        log.warning("%s: floating-point %s, scaled to 8 bits", path, what)
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return im


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding the pixels."""
    path = Path(path)
    with _open(path) as im:
        return im.size


def verify_image(path: str | Path, draft_min_side: int = 64) -> tuple[int, int]:
    """Decode the whole file (to catch truncation) and return its (width, height) from the header.

    JPEGs are decoded at a reduced DCT scale: every byte is still read, so a truncated or corrupt
    stream is still caught, at a fraction of the cost of a full-size decode.
    """
    path = Path(path)
    with _open(path) as im:
        size = im.size
        if im.format == "JPEG":
            _draft(im, draft_min_side)
        _load(im, path)
    return size


def _draft(im: Image.Image, min_side: int) -> None:
    w, h = im.size
    scale = 1
    while scale < 8 and min(w, h) // (scale * 2) >= min_side:
        scale *= 2
    if scale > 1:
        im.draft("RGB", (max(1, w // scale), max(1, h // scale)))


def load_image(path: str | Path, draft_min_side: int | None = None) -> np.ndarray:
    """Decode an image as RGB ``uint8`` (H, W, 3).

    ``draft_min_side``: for JPEGs, let the decoder downscale by a power of two (DCT scaling) as long
    as the shorter side stays >= this many pixels: several times faster on ISIC-sized files.
    """
    path = Path(path)
    im = _open(path)
    with im:
        if draft_min_side and im.format == "JPEG":
            _draft(im, draft_min_side)
        _load(im, path)
        mode = im.mode
        if mode != "RGB":
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                log.warning("%s: image has an alpha channel (%s), composited on black and used as RGB", path, mode)
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im).convert("RGB")
            elif mode == "P":
                log.warning("%s: palette image, converted to RGB", path)
                im = im.convert("RGB")
            elif mode in ("L", "1"):
                log.warning("%s: grayscale image, replicated to 3 channels", path)
                im = im.convert("RGB")
            elif mode == "CMYK" or mode == "YCbCr":
                im = im.convert("RGB")
            else:
                im = _to_uint8(im, path, "image").convert("RGB")
                if mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
                    log.warning("%s: image mode %s, converted to RGB", path, mode)
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise file_error(path, f"unexpected image shape {arr.shape}")
    return arr


def load_mask_u8(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask's raw 8-bit values (H, W) ``uint8``, before thresholding (``check`` counts non-binary masks).

    ``expected_hw``: the (height, width) of the image it belongs to; a mask of another size is an error
    (never silently resized: that is how masks and images drift apart).
    """
    path = Path(path)
    im = _open(path)
    with im:
        _load(im, path)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # Converting straight to L drops the alpha. A mask painted as colour-on-transparent carries
            # the lesion in the alpha channel: recognisable as uniform colour with varying alpha.
            im = im.convert("RGBA")
            alpha = np.asarray(im, dtype=np.uint8)[..., 3]
            gray = np.asarray(im.convert("L"), dtype=np.uint8)
            arr = alpha if gray.min() == gray.max() and alpha.min() != alpha.max() else gray
        else:
            im = _to_uint8(im, path, "mask")
            if im.mode != "L":
                im = im.convert("L")
            arr = np.asarray(im, dtype=np.uint8)
    if expected_hw is not None and tuple(arr.shape) != tuple(expected_hw):
        raise file_error(
            path,
            f"mask is {arr.shape[1]}x{arr.shape[0]} but its image is {expected_hw[1]}x{expected_hw[0]} "
            "(width x height)",
        )
    return arr


def load_mask(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask (H, W) as ``bool``: pixels > 128 are lesion (the official ISIC scorer's rule).

    A mask whose only values are 0 and 1 (saved without scaling to 0/255) would threshold to empty;
    it is read as 0/1 with a warning instead of silently losing the lesion.
    """
    arr = load_mask_u8(path, expected_hw)
    top = int(arr.max()) if arr.size else 0
    if top == 1:
        log.warning("%s: mask values are 0/1 (expected 0/255); read 1 as lesion", path)
        return arr > 0
    if 1 < top <= 128:
        # e.g. a red lesion on an RGB mask (gray 76) or values {0, 100}: the > 128 rule reads no lesion at all.
        log.warning("%s: mask values go up to %d, none above 128: read as an empty mask (expected 0/255)", path, top)
    return arr > 128


def load_lesion_mask(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A dataset's own lesion mask (ISIC Part 1): as :func:`load_mask`, and one without any lesion pixel is
    an error in the data (every Part 1 image shows a lesion)."""
    m = load_mask(path, expected_hw)
    if not m.any():
        raise file_error(path, "lesion mask is empty (no pixel above 128): a ground-truth lesion mask always "
                               "marks the lesion")
    return m


DERMO_FEATURES = ("pigment_network", "negative_network", "streaks", "milia_like_cyst")


def load_dermo_mask(features_json: str | Path, superpixels_png: str | Path,
                    expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Union mask of the four ISIC 2017 Part 2 dermoscopic features, as ``bool`` (H, W).

    The superpixel map is RGB-encoded (index = R + G*256 + B*65536). The JSON holds, per feature, either
    one 0/1 flag per superpixel (the official format) or a list of superpixel indices.
    """
    features_json, superpixels_png = Path(features_json), Path(superpixels_png)
    if not features_json.is_file():
        raise file_error(features_json, "file not found")
    try:
        feats = json.loads(features_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise file_error(features_json, f"not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(feats, dict):
        raise file_error(features_json, "expected a JSON object of feature -> superpixel list")
    im = _open(superpixels_png)
    with im:
        _load(im, superpixels_png)
        if im.mode in ("I", "I;16", "I;16B", "I;16L"):
            index = np.asarray(im, dtype=np.int64)  # already a plain index map
        else:
            rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
            index = rgb[..., 0] + rgb[..., 1] * 256 + rgb[..., 2] * 65536
    if expected_hw is not None and tuple(index.shape) != tuple(expected_hw):
        raise file_error(superpixels_png, f"superpixel map is {index.shape[1]}x{index.shape[0]} but its image is "
                                          f"{expected_hw[1]}x{expected_hw[0]}")
    n_sp = int(index.max()) + 1
    selected = np.zeros(n_sp, dtype=bool)
    found = False
    for name in DERMO_FEATURES:
        values = feats.get(name)
        if values is None:
            continue
        found = True
        try:
            values = np.asarray(values, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise file_error(features_json, f"'{name}' must be a list of numbers") from None
        if values.size == 0:
            continue
        if np.any(values != np.round(values)):
            raise file_error(features_json, f"'{name}' holds non-integer values")
        if _is_flag_list(values):
            # The official format: one 0/1 flag per superpixel. Flags past the map's highest index name
            # superpixels the map does not use (harmless); a list too short leaves superpixels unknown.
            if values.size < n_sp:
                raise file_error(features_json, f"'{name}' has {values.size} flags but the superpixel map "
                                                f"{superpixels_png.name} has {n_sp} superpixels")
            selected |= values[:n_sp].astype(bool)
        else:
            idx = values.astype(np.int64)
            if idx.min() < 0 or idx.max() >= n_sp:
                bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
                raise file_error(features_json, f"'{name}' names superpixel {bad} but the map "
                                                f"{superpixels_png.name} has {n_sp}")
            selected[idx] = True
    if not found:
        raise file_error(features_json, f"none of the features {', '.join(DERMO_FEATURES)} is present")
    return selected[index]


def _is_flag_list(values: np.ndarray) -> bool:
    """0/1 flags (official) vs a list of superpixel indices.

    Deciding by ``len == number of superpixels`` (as before) misread a flag list one entry longer than
    the map's highest index as the indices {0, 1}. Index lists never repeat a value; a flag list of more
    than two entries always does.
    """
    if not set(np.unique(values).tolist()) <= {0.0, 1.0}:
        return False
    return values.size > 2 or np.unique(values).size < values.size
