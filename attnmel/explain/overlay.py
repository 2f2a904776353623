"""Saliency maps drawn over the image at a resolution people can read: shared by ``attnmel predict --overlay``
(train layer) and the report's gallery.

- :func:`display_view`: the region of the ORIGINAL image that the network saw (the eval transform's geometry,
  :func:`attnmel.data.transforms.eval_box`), at its own resolution with the long side capped at ``max_side``
  (:data:`DEFAULT_OVERLAY_SIDE`), and the lesion mask in the same geometry where there is one.
- :func:`overlay_panel`: one RGB panel, the map upsampled to the panel (bilinear, min-max to [0, 1]) in
  :data:`HEAT_CMAP` at opacity :data:`HEAT_ALPHA` over the image, the contour of the map at >= 0.5 in white and
  the lesion contour in green.
- :func:`write_overlay_figure`: the image and each map side by side with titles, a colour bar and a caption
  that states the colour scale, the opacity and what the maps explain.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from attnmel.io import atomic_path

DEFAULT_OVERLAY_SIDE = 1024  # long side of an overlay, in pixels, unless the original is smaller
MIN_PANEL_SIDE = 160  # small (64 px) images are enlarged (nearest) so that contours stay visible
HEAT_CMAP = "jet"
HEAT_ALPHA = 0.5
REGION_THRESHOLD = 0.5
TRUTH_RGB = (0, 255, 0)  # ground-truth lesion contour
REGION_RGB = (255, 255, 255)  # contour of the binarised map (what the Jaccard scores)
JPEG_ABOVE = 512  # panels with a longer side are written as JPEG (quality 90): a 1024-px PNG is megabytes


def colour_scale_note(alpha: float = HEAT_ALPHA, cmap: str = HEAT_CMAP) -> str:
    """The words every overlay carries about its colours."""
    return (f"Colour: each map upsampled (bilinear) to the image and min-max re-normalised to [0, 1] per image, "
            f"{cmap} colour map (blue 0 to red 1) drawn at {alpha:.0%} opacity over the image; white: the map's "
            f"contour at >= {REGION_THRESHOLD}; green: the lesion contour, where a mask exists.")


def check_overlay_side(max_side: int | None) -> int | None:
    """``max_side`` if None or an integer >= 32, else a one-line error."""
    from attnmel.errors import AttnMelError

    if max_side is None:
        return None
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 32:
        raise AttnMelError(f"overlay size must be an integer >= 32 (pixels of the long side), got {max_side!r}")
    return max_side


# -- geometry --------------------------------------------------------------------------------------------
def display_view(src, spec, image_size: int, max_side: int | None = DEFAULT_OVERLAY_SIDE
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """The original pixels behind the network's input, and the lesion mask over them.

    ``src``: the item's :class:`attnmel.data.cache.SourceFiles` (image, mask, crop mask); ``spec`` the run's
    :class:`~attnmel.data.transforms.BaseSpec`; ``image_size`` its ``data.image_size``. Returns the image uint8
    (h, w, 3), its long side ``min(max_side, the region's own)``, and the mask bool (h, w) or None.
    """
    from attnmel.data.images import image_size as file_size
    from attnmel.data.images import load_image, load_mask
    from attnmel.data.transforms import crop_resize, display_size, eval_box

    W, H = file_size(src.image)
    crop = load_mask(src.crop_mask) if spec.crop_to_mask and src.crop_mask is not None else None
    box = eval_box(W, H, spec, image_size, crop)
    out_wh = display_size(box, check_overlay_side(max_side))
    # Decode no larger than needed (JPEG draft), then one resize from the box.
    from attnmel.data.transforms import draft_min_side

    image = load_image(src.image, draft_min_side=draft_min_side(W, H, box, max(out_wh)))
    shown = crop_resize(image, box, (W, H), out_wh, nearest=False)
    mask = None
    if src.mask is not None:
        m = (load_mask(src.mask) > 0).astype(np.uint8)
        mask = crop_resize(m, box, (W, H), out_wh, nearest=True).astype(bool)
    return shown, mask


# -- panels ----------------------------------------------------------------------------------------------
def display_scale(side: int) -> int:
    """Integer enlargement that brings a ``side``-px image to at least :data:`MIN_PANEL_SIDE`."""
    return max(1, math.ceil(MIN_PANEL_SIDE / max(1, int(side))))


def _enlarge(a: np.ndarray, s: int) -> np.ndarray:
    # Nearest-neighbour, so a small panel shows exactly the pixels that were scored.
    return a if s == 1 else np.repeat(np.repeat(a, s, axis=0), s, axis=1)


def _thicken(b: np.ndarray, k: int) -> np.ndarray:
    out = b.copy()
    for _ in range(max(0, k - 1)):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:, 1:] |= out[:, :-1]
        out = grown
    return out


def line_width(h: int, w: int) -> int:
    """Contour width in pixels: 1 px on small panels, about 1/300 of the long side on large ones."""
    return max(1, int(round(max(h, w) / 300)))


def contour_pixels(mask: np.ndarray, scale: int = 1, width: int = 1) -> np.ndarray:
    """Boolean (H*s, W*s) image of the 0.5-level contours of ``mask`` (skimage ``find_contours``), ``width`` px."""
    from skimage.draw import line
    from skimage.measure import find_contours

    h, w = mask.shape
    out = np.zeros((h * scale, w * scale), dtype=bool)
    if not mask.any() or mask.all():
        return out
    # Pad so contours touching the border close along it instead of stopping short.
    padded = np.pad(mask.astype(np.float32), 1)
    for c in find_contours(padded, 0.5):
        pts = np.rint((c - 1 + 0.5) * scale - 0.5).astype(np.int64)
        pts[:, 0] = pts[:, 0].clip(0, h * scale - 1)
        pts[:, 1] = pts[:, 1].clip(0, w * scale - 1)
        for (r0, c0), (r1, c1) in itertools.pairwise(pts):
            rr, cc = line(int(r0), int(c0), int(r1), int(c1))
            out[rr, cc] = True
    return _thicken(out, width)


def heat_rgb(heat: np.ndarray, cmap: str = HEAT_CMAP) -> np.ndarray:
    """float (H, W, 3) in [0, 255]: ``heat`` (clipped to [0, 1]) through the colour map."""
    from matplotlib import colormaps

    return colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0


def overlay_panel(image: np.ndarray, heat: np.ndarray | None = None, mask: np.ndarray | None = None,
                  threshold: float = REGION_THRESHOLD, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """RGB uint8 panel: the image, the [0, 1] ``heat`` map in :data:`HEAT_CMAP` over it at opacity ``alpha`` (if
    given), the contour of ``heat >= threshold`` in white and the lesion ``mask`` contour in green (if given).

    ``heat`` and ``mask`` are at the image's size. Images under :data:`MIN_PANEL_SIDE` are enlarged (nearest).
    """
    h, w = image.shape[:2]
    s = display_scale(max(h, w))
    lw = line_width(h * s, w * s)
    img = _enlarge(np.asarray(image, dtype=np.uint8), s).astype(np.float32)
    if heat is not None:
        img = (1.0 - alpha) * img + alpha * _enlarge(heat_rgb(heat).astype(np.float32), s)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if heat is not None:
        out[contour_pixels(np.asarray(heat) >= threshold, s, max(1, lw - 1))] = REGION_RGB
    if mask is not None:
        out[contour_pixels(np.asarray(mask, dtype=bool), s, lw + (1 if s > 1 else 0))] = TRUTH_RGB
    return out


def map_panels(image: np.ndarray, maps: Mapping[str, np.ndarray], mask: np.ndarray | None = None,
               alpha: float = HEAT_ALPHA) -> dict[str, np.ndarray]:
    """``{"image": image + lesion contour, method: its overlay}``: each raw map post-processed to the image's
    size by :func:`attnmel.explain.maps.postprocess_map` (upsample, then min-max), the rule of the scores."""
    from attnmel.explain.maps import postprocess_map

    hw = image.shape[:2]
    out = {"image": overlay_panel(image, None, mask)}
    for method, raw in maps.items():
        out[method] = overlay_panel(image, postprocess_map(np.asarray(raw, dtype=np.float32), hw), mask, alpha=alpha)
    return out


def panel_suffix(rgb: np.ndarray) -> str:
    """``.jpg`` for panels longer than :data:`JPEG_ABOVE` px, else ``.png`` (lossless, small)."""
    return ".jpg" if max(rgb.shape[:2]) > JPEG_ABOVE else ".png"


def write_panel(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array atomically, as PNG or JPEG (quality 90) by ``path``'s suffix."""
    from PIL import Image

    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    # Fast zlib level for PNG: encoding at the default level cost more than drawing the panels.
    opts = {"quality": 90} if fmt == "JPEG" else {"compress_level": 1}
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format=fmt, **opts)
    return path


# -- figures ---------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display, the same output everywhere
    import matplotlib.pyplot as plt

    return plt


def colourbar_figure(path: Path, alpha: float = HEAT_ALPHA, cmap: str = HEAT_CMAP) -> Path:
    """A horizontal colour bar of the overlays (0 to 1, at the overlays' opacity over grey) with its caption."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 0.9))
    bar = np.linspace(0.0, 1.0, 256)[None, :].repeat(8, axis=0)
    grey = np.full((*bar.shape, 3), 128.0)
    rgb = (1 - alpha) * grey + alpha * heat_rgb(bar, cmap)
    ax.imshow(rgb.astype(np.uint8), extent=(0, 1, 0, 0.05), aspect="auto")
    ax.set_yticks([])
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel(f"re-normalised map value ({cmap}, {alpha:.0%} opacity over the image; white contour at "
                  f">= {REGION_THRESHOLD})", fontsize=8)
    with atomic_path(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def write_overlay_figure(path: Path, panels: Mapping[str, np.ndarray], titles: Mapping[str, str], title: str = "",
                         caption: str = "", alpha: float = HEAT_ALPHA) -> Path:
    """One PNG: the panels side by side at their own pixel size (no resampling), titled, with a colour bar
    and ``caption`` + :func:`colour_scale_note` under them."""
    plt = _plt()
    from matplotlib import colors
    from matplotlib.cm import ScalarMappable

    items: Sequence[tuple[str, np.ndarray]] = list(panels.items())
    h = max(p.shape[0] for _, p in items)
    w = max(p.shape[1] for _, p in items)
    dpi = 100
    head, foot = 60, 130  # pixels for titles and for the colour bar + caption
    fig = plt.figure(figsize=(len(items) * w / dpi, (h + head + foot) / dpi), dpi=dpi)
    for i, (key, p) in enumerate(items):
        ax = fig.add_axes((i / len(items), foot / (h + head + foot), p.shape[1] / (w * len(items)),
                           p.shape[0] / (h + head + foot)))
        ax.imshow(p, interpolation="nearest")
        ax.set_title(titles.get(key, key), fontsize=11)
        ax.axis("off")
    cax = fig.add_axes((0.25, 0.62 * foot / (h + head + foot), 0.5, 0.12 * foot / (h + head + foot)))
    cb = fig.colorbar(ScalarMappable(colors.Normalize(0, 1), HEAT_CMAP), cax=cax, orientation="horizontal")
    cb.solids.set_alpha(alpha)
    cb.ax.tick_params(labelsize=8)
    note = " ".join(t for t in (caption, colour_scale_note(alpha)) if t)
    fig.text(0.5, 0.12 * foot / (h + head + foot), note, ha="center", va="bottom", fontsize=8, wrap=True)
    if title:
        fig.suptitle(title, fontsize=12, y=1 - 0.15 * head / (h + head + foot), va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)
