"""Overlays people can read: the eval transform's geometry mapped back onto the original image, and the view
:func:`attnmel.explain.overlay.display_view` draws the maps on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnmel.data.cache import SourceFiles
from attnmel.data.transforms import BaseSpec, EvalTransform, base_preprocess, crop_resize, display_size, eval_box
from attnmel.errors import AttnMelError
from attnmel.explain.overlay import check_overlay_side, display_view, map_panels, write_overlay_figure


def _ramp(w: int, h: int) -> np.ndarray:
    """A smooth image whose colour encodes the position (R: x, G: y), so resampling errors stay small."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    return np.stack([255 * xx / (w - 1), 255 * yy / (h - 1), np.full_like(xx, 128)], -1).round().astype(np.uint8)


def _network_view(img: np.ndarray, spec: BaseSpec, size: int, crop_mask=None) -> np.ndarray:
    """What the network sees, through the real base step and EvalTransform, back in uint8 RGB."""
    h, w = img.shape[:2]
    base, _, _ = base_preprocess(img, (w, h), spec, mask=crop_mask)
    x = EvalTransform(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(base)["image"]
    return (x.permute(1, 2, 0).numpy() * 255).round()


@pytest.mark.parametrize("center_crop, crop_to_mask", [(0.8, None), (None, None), (1.0, "crop")])
def test_eval_box_is_where_the_network_looked(center_crop, crop_to_mask):
    W, H, R, S = 300, 200, 64, 48
    img = _ramp(W, H)
    mask = None
    if crop_to_mask:
        mask = np.zeros((H, W), bool)
        mask[40:100, 180:260] = True  # off-centre: the crop follows it
    spec = BaseSpec(resize=R, center_crop=center_crop, crop_to_mask=crop_to_mask, crop_margin=0.1)
    seen = _network_view(img, spec, S, mask)
    box = eval_box(W, H, spec, S, mask)
    mine = crop_resize(img, box, (W, H), (S, S), nearest=False).astype(np.float32)
    # Two resamplings (the pipeline) against one (the view): equal up to interpolation on a smooth ramp.
    assert np.abs(mine - seen).max() <= 3.0
    # And it is not true of a box a few pixels off (the check can fail).
    off = (box[0] + 6, box[1], box[2] + 6, box[3])
    assert np.abs(crop_resize(img, off, (W, H), (S, S), nearest=False) - seen).max() > 3.0
    if center_crop is None:  # the whole image squeezed: a box with the image's aspect
        assert (box[2] - box[0]) / (box[3] - box[1]) == pytest.approx(W / H)


def test_display_size_caps_the_long_side_only():
    assert display_size((0, 0, 3000, 2000), 1024) == (1024, 683)
    assert display_size((10, 10, 90, 70), 1024) == (80, 60)  # a small original keeps its own pixels
    assert display_size((0, 0, 3000, 2000), None) == (3000, 2000)
    with pytest.raises(AttnMelError, match="overlay size"):
        check_overlay_side(8)


def test_display_view_gives_the_original_region_and_its_mask(tmp_path: Path):
    W, H = 1600, 1200
    img = _ramp(W, H)
    mask = np.zeros((H, W), np.uint8)
    mask[500:700, 700:900] = 255  # a 200-px square lesion at the centre
    Image.fromarray(img).save(tmp_path / "ISIC_1.png")
    Image.fromarray(mask).save(tmp_path / "ISIC_1_segmentation.png")
    src = SourceFiles("ISIC_1", tmp_path / "ISIC_1.png", mask=tmp_path / "ISIC_1_segmentation.png")
    spec = BaseSpec(resize=256, center_crop=0.8)
    shown, m = display_view(src, spec, 224, max_side=512)
    assert shown.shape == (512, 512, 3) and m.shape == (512, 512) and m.dtype == bool
    # The box: 960 px square at the centre, keep 224/256 of it: 840 px from x = 380, y = 180.
    box = eval_box(W, H, spec, 224)
    assert box == pytest.approx((380.0, 180.0, 1220.0, 1020.0))
    scale = 512 / 840
    rows, cols = np.nonzero(m)
    assert rows.min() == pytest.approx((500 - 180) * scale, abs=1.5)
    assert cols.min() == pytest.approx((700 - 380) * scale, abs=1.5)
    assert m.sum() == pytest.approx((200 * scale) ** 2, rel=0.03)
    # The colours are the original's at those positions (R encodes x).
    assert shown[256, 0, 0] == pytest.approx(255 * 380 / (W - 1), abs=2)
    full, _ = display_view(src, spec, 224, max_side=None)
    assert full.shape[:2] == (840, 840)  # no cap: the original's own pixels


def test_overlay_figure_is_drawn_at_the_panels_resolution(tmp_path: Path):
    image = _ramp(400, 300)
    mask = np.zeros((300, 400), bool)
    mask[100:200, 150:250] = True
    maps = {"attention:pool3": np.random.default_rng(0).random((7, 7)), "gradcam": np.eye(4)}
    panels = map_panels(image, maps, mask)
    assert set(panels) == {"image", "attention:pool3", "gradcam"}
    assert all(p.shape == (300, 400, 3) for p in panels.values())
    assert np.all(panels["image"] == (0, 255, 0), axis=-1).any()  # the lesion contour
    path = write_overlay_figure(tmp_path / "o.png", panels, {"image": "image"}, title="t", caption="c")
    w, h = Image.open(path).size
    assert w == 3 * 400 and h > 300  # one column per panel at its own pixels, plus titles and the colour bar


def test_gradcam_panel_follows_the_map(tmp_path: Path):
    # A map that is hot only in its top-left cell lands in the top-left of the drawn panel.
    image = np.full((200, 200, 3), 128, np.uint8)
    raw = torch.zeros(4, 4)
    raw[0, 0] = 1.0
    panel = map_panels(image, {"gradcam": raw.numpy()})["gradcam"].astype(int)
    assert panel[10, 10, 0] > panel[190, 190, 0] and panel[190, 190, 2] > panel[10, 10, 2]  # red vs blue
