"""Joint image + mask transforms: geometry stays aligned, shapes, determinism, normalisation, base step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnmel.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BaseSpec,
    EvalTransform,
    TrainTransform,
    base_preprocess,
    crop_box,
    draft_min_side,
    normalization_stats,
)
from attnmel.errors import AttnMelError

LESION = np.array([255, 0, 255], dtype=np.uint8)
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def lesion_image(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy background (never the lesion colour) with an asymmetric lesion of a known colour."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 200, size=(size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    # an L-shaped blob plus scattered pixels: any wrong rotation/flip/offset of the mask shows
    mask[size // 5: size // 2, size // 6: size // 3] = 1
    mask[size // 2: size // 2 + 4, size // 6: size - 5] = 1
    mask[rng.integers(0, size, 40), rng.integers(0, size, 40)] = 1
    img[mask == 1] = LESION
    return img, mask


def lesion_pixels(x: torch.Tensor) -> torch.Tensor:
    """(1, H, W) 0/1: where an identity-normalised image has the lesion colour."""
    target = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)
    return (x - target).abs().amax(dim=0, keepdim=True).lt(1e-6).float()


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("vflip", [False, True])
def test_each_geometric_step_keeps_mask_aligned_and_matches_numpy(k, hflip, vflip):
    img, mask = lesion_image(48)
    t = TrainTransform(32, **IDENTITY)
    from attnmel.data.transforms import _to_tv  # the same conversion the transform uses

    timg, tm = _to_tv(img, {"mask": mask})
    p = {"top": 5, "left": 11, "k": k, "hflip": hflip, "vflip": vflip}
    out_img = t.apply(timg, p, 32)
    out_mask = t.apply(tm["mask"], p, 32)
    # reference: the same steps in numpy on (H, W, C)
    ref = img[5:37, 11:43]
    ref_m = mask[5:37, 11:43]
    ref, ref_m = np.rot90(ref, k), np.rot90(ref_m, k)
    if hflip:
        ref, ref_m = ref[:, ::-1], ref_m[:, ::-1]
    if vflip:
        ref, ref_m = ref[::-1], ref_m[::-1]
    assert np.array_equal(out_img.permute(1, 2, 0).numpy(), ref)
    assert np.array_equal(out_mask[0].numpy(), ref_m)


def test_random_transform_keeps_mask_on_the_lesion_over_many_seeds():
    img, mask = lesion_image(64, seed=3)
    dermo = (np.arange(64)[None, :] % 7 == 0).astype(np.uint8) * mask  # a sub-mask of the lesion
    t = TrainTransform(48, **IDENTITY)
    seen = set()
    for seed in range(64):
        g = torch.Generator().manual_seed(seed)
        out = t(img, {"mask": mask, "dermo": dermo}, generator=g)
        assert out["mask"].shape == (1, 48, 48) and out["dermo"].shape == (1, 48, 48)
        assert torch.equal(out["mask"], lesion_pixels(out["image"]))
        assert torch.all(out["dermo"] <= out["mask"])  # dermo moved with the same geometry
        p = t.params(64, 64, torch.Generator().manual_seed(seed))
        seen.add((p["k"], p["hflip"], p["vflip"], p["top"], p["left"]))
    assert len({s[:3] for s in seen}) == 16  # every rotation x flip combination occurs
    assert len({s[3:] for s in seen}) > 30  # crop offsets vary


def test_global_rng_used_without_generator_and_generator_reproducible():
    img, mask = lesion_image(64)
    t = TrainTransform(32)
    a = t(img, {"mask": mask}, generator=torch.Generator().manual_seed(7))
    b = t(img, {"mask": mask}, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    torch.manual_seed(1)
    c = t(img, {"mask": mask})
    torch.manual_seed(1)
    d = t(img, {"mask": mask})
    assert torch.equal(c["image"], d["image"])


@pytest.mark.parametrize("size,resize", [(64, 73), (96, 110), (224, 256)])
def test_output_shapes_and_dtypes(size, resize):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (resize, resize, 3), dtype=np.uint8)
    m = (rng.random((resize, resize)) > 0.5).astype(np.uint8)
    for t in (TrainTransform(size), EvalTransform(size)):
        out = t(base, {"mask": m, "dermo": m, "skipped": None})
        assert out["image"].shape == (3, size, size) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (1, size, size) and out["mask"].dtype == torch.float32
        assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
        assert "skipped" not in out
        assert type(out["image"]) is torch.Tensor and type(out["mask"]) is torch.Tensor


def test_eval_transform_is_deterministic_centre_crop_normalised():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    m = (rng.random((40, 40)) > 0.5).astype(np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.1)
    t = EvalTransform(32, mean, std)
    torch.manual_seed(0)
    a = t(base, {"mask": m})
    torch.manual_seed(123)
    b = t(base, {"mask": m})
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    ref = (base[4:36, 4:36].astype(np.float32) / 255 - np.array(mean, np.float32)) / np.array(std, np.float32)
    np.testing.assert_allclose(a["image"].permute(1, 2, 0).numpy(), ref, rtol=1e-5, atol=1e-5)
    assert np.array_equal(a["mask"][0].numpy(), m[4:36, 4:36].astype(np.float32))


def test_normalisation_table_and_overrides():
    assert normalization_stats("isic2016") == ((0.7012, 0.5517, 0.4875), (0.0942, 0.1331, 0.1521))
    assert normalization_stats("isic2017") == ((0.6820, 0.5312, 0.4736), (0.0840, 0.1140, 0.1282))
    assert normalization_stats("some_new_set") == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalization_stats("isic2017", mean=[0.1, 0.2, 0.3]) == ((0.1, 0.2, 0.3), (0.0840, 0.1140, 0.1282))
    assert normalization_stats("isic2017", std=[1, 1, 1])[1] == (1.0, 1.0, 1.0)
    with pytest.raises(AttnMelError, match="data.std"):
        normalization_stats("isic2017", std=[0.1, 0.0, 0.1])
    with pytest.raises(AttnMelError, match="data.mean"):
        normalization_stats("isic2017", mean=[0.1, 0.2])
    # the numbers really are applied: a constant image of value v -> (v/255 - mean) / std
    mean, std = normalization_stats("isic2017")
    out = EvalTransform(32, mean, std)(np.full((32, 32, 3), 200, np.uint8))
    expected = (200 / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out["image"][:, 0, 0].numpy(), expected, rtol=1e-5)


def test_centre_crop_box_and_draft_side():
    spec = BaseSpec(resize=64, center_crop=0.8)
    assert crop_box(100, 80, spec) == pytest.approx((18.0, 8.0, 82.0, 72.0))
    # the crop (0.8 * 3000 = 2400 px) must keep >= 256 px: decoding down to a 320 px short side is allowed
    assert draft_min_side(4000, 3000, crop_box(4000, 3000, BaseSpec()), 256) == 320


def test_base_preprocess_crops_the_centre_and_keeps_masks_binary():
    W, H = 100, 80
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :16] = 255  # outside the centre crop (x < 18) and the resize filter's reach: must not survive
    mask = np.zeros((H, W), bool)
    mask[30:50, 40:60] = True
    out, m, d = base_preprocess(img, (W, H), BaseSpec(resize=32), mask=mask)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and out.max() == 0
    assert m.dtype == np.uint8 and set(np.unique(m).tolist()) == {0, 1} and d is None
    # the lesion box [40, 60) x [30, 50) maps to ([40-18, 60-18) x [30-8, 50-8)) * 32/64
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (11, 21, 11, 21)


def test_base_preprocess_reduced_decode_matches_full_geometry():
    """An image decoded at 1/4 (draft) and its full-size mask land on the same pixels."""
    W, H = 160, 120
    mask = np.zeros((H, W), bool)
    mask[40:80, 60:100] = True
    full = np.where(mask[..., None], LESION, np.uint8(30)).astype(np.uint8)
    small = full[::4, ::4]  # what a 1/4 draft decode of this block image gives
    out_full, m_full, _ = base_preprocess(full, (W, H), BaseSpec(resize=24), mask=mask)
    out_small, m_small, _ = base_preprocess(small, (W, H), BaseSpec(resize=24), mask=mask)
    # the crop is 96 px of the original = 24 px of the 1/4 decode: a 1:1 copy, so exact colours
    assert np.array_equal((out_small == LESION).all(-1), m_small == 1)
    assert m_small.sum() == 100 and np.array_equal(m_full, m_small)
    inner = m_full.copy()
    inner[1:-1, 1:-1] &= m_full[:-2, 1:-1] & m_full[2:, 1:-1] & m_full[1:-1, :-2] & m_full[1:-1, 2:]
    assert np.all((out_full[inner == 1] == LESION).all(-1))  # full decode: same place, blurred edges only


def test_crop_to_mask_crop_and_masked():
    W, H = 120, 90
    img = np.full((H, W, 3), 90, np.uint8)
    mask = np.zeros((H, W), bool)
    mask[5:25, 80:110] = True  # 30 wide x 20 high, near the top-right corner
    img[mask] = LESION
    # margin 0: the square is the bbox's long side (30); shifted to stay in the image (y from 0)
    assert crop_box(W, H, BaseSpec(crop_to_mask="crop", crop_margin=0.0), mask) == pytest.approx((80, 0, 110, 30))
    box = crop_box(W, H, BaseSpec(crop_to_mask="crop", crop_margin=0.1), mask)
    assert box == pytest.approx((77, 0, 113, 36))  # side 36 centred on the bbox (x 95), shifted down to y 0
    out, m, _ = base_preprocess(img, (W, H), BaseSpec(resize=30, crop_to_mask="crop", crop_margin=0.0), mask=mask)
    assert m[5:25].all() and not m[:5].any() and not m[25:].any()  # the lesion fills the crop's width
    assert m.mean() > 0.6  # vs ~0.07 with the centre crop
    _, m_centre, _ = base_preprocess(img, (W, H), BaseSpec(resize=30), mask=mask)
    assert m_centre.mean() < 0.15

    out, m, _ = base_preprocess(img, (W, H), BaseSpec(resize=30, crop_to_mask="masked"), mask=mask)
    assert np.all(out[m == 0] == 0) and np.all(out[m == 1].max(-1) > 0)

    empty = np.zeros_like(mask)
    out_e, _, _ = base_preprocess(img, (W, H), BaseSpec(resize=30, crop_to_mask="crop"), mask=empty)
    out_c, _, _ = base_preprocess(img, (W, H), BaseSpec(resize=30), mask=empty)
    assert np.array_equal(out_e, out_c)  # nothing to crop to: the centre crop


def test_bad_spec_is_a_config_error():
    with pytest.raises(AttnMelError, match="crop_to_mask"):
        BaseSpec(crop_to_mask="zoom")
    with pytest.raises(AttnMelError, match="image_size"):
        TrainTransform(64)(np.zeros((32, 32, 3), np.uint8))


def test_whole_image_mode_keeps_every_pixel_of_a_non_square_image():
    from attnmel.data.transforms import BaseSpec, base_preprocess, crop_box

    spec = BaseSpec.from_cfg({"resize": 32, "center_crop": None})
    assert crop_box(120, 60, spec) == (0.0, 0.0, 120.0, 60.0)
    image = np.zeros((60, 120, 3), np.uint8)
    mask = np.zeros((60, 120), bool)
    image[:10, :20] = 255  # top-left corner block: a centre crop would cut it off
    mask[:10, :20] = True
    img, m, _ = base_preprocess(image, (120, 60), spec, mask=mask)
    assert img.shape == (32, 32, 3) and m.shape == (32, 32)
    # The block covers the top-left 20/120 x 10/60 of the frame: 5 x 5 of 32 pixels after squeezing.
    assert m[:5, :5].all() and not m[6:, :].any() and not m[:, 6:].any()
    assert (img[m.astype(bool)] > 200).all()
    assert (img[7:] < 10).all() and (img[:, 7:] < 10).all()  # beyond the bilinear edge pixel: background
    with pytest.raises(AttnMelError, match="center_crop must be in"):
        BaseSpec.from_cfg({"resize": 32, "center_crop": 1.5})


# -- colour constancy and the stronger augmentation (issue 17) ------------------------------------------------


def test_shades_of_gray_removes_a_colour_cast_computed_by_hand():
    from attnmel.data.transforms import shades_of_gray

    rng = np.random.default_rng(0)
    grey = rng.integers(20, 200, size=(16, 16, 1)).astype(np.float64)
    cast = np.array([1.2, 0.9, 0.6])
    img = np.clip(grey * cast, 0, 255).round().astype(np.uint8)
    out = shades_of_gray(img, power=6).astype(np.float64)
    # By hand: the illuminant of channel c is the 6-norm mean of that channel; each channel is scaled to the
    # common length |e| / sqrt(3), so a cast that is a per-channel gain disappears (up to uint8 rounding).
    x = img.astype(np.float64)
    e = np.mean(x ** 6, axis=(0, 1)) ** (1 / 6)
    ref = np.clip(x * (np.linalg.norm(e) / np.sqrt(3)) / e + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(out.astype(np.uint8), ref)
    assert np.abs(out[..., 0] - out[..., 2]).max() <= 3  # the cast is gone: R and B agree again
    assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() > 40  # it was there before


def test_shades_of_gray_in_the_base_step_and_the_cache_key():
    from attnmel.data.transforms import shades_of_gray

    img, mask = lesion_image(40)
    plain = BaseSpec(resize=32, center_crop=None)
    sog = BaseSpec(resize=32, center_crop=None, color_constancy="shades_of_gray")
    a, ma, _ = base_preprocess(img, (40, 40), plain, mask=mask)
    b, mb, _ = base_preprocess(img, (40, 40), sog, mask=mask)
    assert np.array_equal(b, shades_of_gray(a)) and np.array_equal(ma, mb)  # the image only, after the resize
    assert "color_constancy" not in plain.as_dict()  # caches built before the option keep their key
    assert sog.as_dict()["color_constancy"] == "shades_of_gray"
    assert BaseSpec.from_cfg({"color_constancy": "shades_of_gray"}).color_constancy == "shades_of_gray"
    with pytest.raises(AttnMelError, match="color_constancy"):
        BaseSpec(color_constancy="grey_world")


def test_augment_keeps_the_mask_on_the_lesion_under_resized_crop_and_rotation():
    from attnmel.data.transforms import Augment

    img = np.zeros((64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:40, 20:34] = 1
    img[mask == 1] = 255  # white lesion on black: the image's bright pixels are the lesion
    t = TrainTransform(32, **IDENTITY, augment=Augment(crop_scale=(0.3, 1.0), rotation=30.0))
    boxes, angles = set(), []
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        out = t(img, {"mask": mask}, generator=g)
        bright = (out["image"].mean(0, keepdim=True) > 0.5).float()
        agree = (bright == out["mask"]).float().mean().item()
        assert agree > 0.93, (seed, agree)  # bilinear vs nearest differ only along the edge
        p = t.params(64, 64, torch.Generator().manual_seed(seed))
        boxes.add(p["box"])
        angles.append(p["angle"])
        _, _, h, w = p["box"]
        # at least 0.3 of the area, less what clipping an aspect of up to 4/3 to the image can remove
        assert h <= 64 and w <= 64 and h * w >= 0.3 * 64 * 64 * 0.75 - 64
    assert len(boxes) > 30 and max(angles) > 10 and min(angles) < -10 and max(abs(a) for a in angles) <= 30


def test_colour_jitter_changes_the_image_never_the_mask_and_defaults_draw_as_before():
    from attnmel.data.transforms import Augment

    img, mask = lesion_image(48)
    plain = TrainTransform(32, **IDENTITY)
    jit = TrainTransform(32, **IDENTITY, augment=Augment(color_jitter=0.4))
    a = plain(img, {"mask": mask}, generator=torch.Generator().manual_seed(5))
    b = jit(img, {"mask": mask}, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a["mask"], b["mask"]) and not torch.allclose(a["image"], b["image"])
    pj = jit.params(48, 48, torch.Generator().manual_seed(5))
    assert all(0.6 <= f <= 1.4 for f in pj["jitter"])
    # Without the options the draws are the paper transform's, key for key.
    assert plain.params(48, 48, torch.Generator().manual_seed(5)) == {
        k: v for k, v in pj.items() if k in ("top", "left", "k", "hflip", "vflip")}
    with pytest.raises(AttnMelError, match="crop_scale"):
        Augment(crop_scale=(0.8, 0.2))
