"""Image, mask and dermoscopic-feature loading: conversions with warnings, one-line errors naming the file."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from attnmel.data.images import image_size, load_dermo_mask, load_image, load_mask, load_mask_u8, verify_image
from attnmel.errors import AttnMelError

RNG = np.random.default_rng(0)
RGB = (RNG.random((12, 16, 3)) * 255).astype(np.uint8)


def _one_line_error(excinfo, name: str) -> str:
    msg = str(excinfo.value)
    assert name in msg and "\n" not in msg
    return msg


@pytest.fixture
def jpeg(tmp_path):
    p = tmp_path / "ISIC_0000001.jpg"
    Image.fromarray(RGB).save(p, quality=95)
    return p


@pytest.mark.parametrize("mode,what", [("L", "grayscale"), ("RGBA", "alpha"), ("P", "palette")])
def test_modes_converted_to_rgb_with_a_warning(tmp_path, caplog, mode, what):
    p = tmp_path / f"x_{mode}.png"
    Image.fromarray(RGB).convert(mode).save(p)
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        arr = load_image(p)
    assert arr.shape == (12, 16, 3) and arr.dtype == np.uint8
    assert what in caplog.text and p.name in caplog.text


def test_16bit_image_scaled_not_clipped(tmp_path, caplog):
    p = tmp_path / "deep.png"
    values = np.linspace(0, 65535, 12 * 16).reshape(12, 16).astype(np.uint16)
    Image.fromarray(values).save(p)
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        arr = load_image(p)
    assert "16-bit" in caplog.text
    # scaled: the full 16-bit range maps onto 0..255 (PIL's own convert would clip everything to 255)
    assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == 255 and 100 < arr[6, 8, 0] < 155


def test_truncated_and_garbage_files(tmp_path):
    big = tmp_path / "big.jpg"
    Image.fromarray((RNG.random((48, 64, 3)) * 255).astype(np.uint8)).save(big, quality=95)
    data = big.read_bytes()
    cut = tmp_path / "ISIC_cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert image_size(cut) == (64, 48)  # the header survives: a cheap reader cannot tell
    with pytest.raises(AttnMelError) as e:
        load_image(cut)
    assert "truncated" in _one_line_error(e, "ISIC_cut.jpg")
    with pytest.raises(AttnMelError) as e:
        verify_image(cut)
    _one_line_error(e, "ISIC_cut.jpg")

    junk = tmp_path / "ISIC_junk.jpg"
    junk.write_bytes(b"not a jpeg at all" * 10)
    with pytest.raises(AttnMelError) as e:
        load_image(junk)
    _one_line_error(e, "ISIC_junk.jpg")
    with pytest.raises(AttnMelError) as e:
        load_image(tmp_path / "ISIC_missing.jpg")
    assert "not found" in _one_line_error(e, "ISIC_missing.jpg")


def test_verify_image_returns_header_size(jpeg):
    assert verify_image(jpeg) == (16, 12)


def test_mask_threshold_and_size(tmp_path):
    p = tmp_path / "m_segmentation.png"
    values = np.array([[0, 128, 129, 255]], dtype=np.uint8)
    Image.fromarray(values).save(p)
    assert load_mask(p).tolist() == [[False, False, True, True]]
    assert load_mask_u8(p).tolist() == [[0, 128, 129, 255]]
    with pytest.raises(AttnMelError) as e:
        load_mask(p, expected_hw=(4, 1))
    assert "mask is 4x1 but its image is 1x4" in _one_line_error(e, "m_segmentation.png")


def test_mask_01_values_warn_instead_of_emptying(tmp_path, caplog):
    p = tmp_path / "m01.png"
    Image.fromarray(np.array([[0, 1, 1]], dtype=np.uint8)).save(p)
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        assert load_mask(p).tolist() == [[False, True, True]]
    assert "0/1" in caplog.text


def test_16bit_and_rgb_masks(tmp_path):
    p16 = tmp_path / "m16.png"
    Image.fromarray(np.array([[0, 65535, 30000]], dtype=np.uint16)).save(p16)
    assert load_mask(p16).tolist() == [[False, True, False]]
    prgb = tmp_path / "mrgb.png"
    Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)).save(prgb)
    assert load_mask(prgb).tolist() == [[False, True]]


def _superpixels(tmp_path, index: np.ndarray):
    p = tmp_path / "ISIC_1_superpixels.png"
    rgb = np.stack([index % 256, index // 256 % 256, index // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(p)
    return p


def _features(tmp_path, feats: dict):
    p = tmp_path / "ISIC_1_features.json"
    p.write_text(json.dumps(feats))
    return p


def test_dermo_flags_and_rgb_index(tmp_path):
    index = np.array([[0, 1, 256], [257, 65536, 2]])  # uses all three channels
    n = 65537
    flags = [0] * n
    flags[256] = flags[65536] = 1
    streaks = [0] * n
    streaks[2] = 1
    got = load_dermo_mask(_features(tmp_path, {"pigment_network": flags, "streaks": streaks}),
                          _superpixels(tmp_path, index))
    assert got.tolist() == [[False, False, True], [False, True, True]]


def test_dermo_flag_list_longer_than_the_map_is_not_read_as_indices(tmp_path):
    # 4 superpixels in the map, 5 flags: flag 3 set. Read as indices {0, 1} this selected the wrong ones.
    index = np.array([[0, 1], [2, 3]])
    got = load_dermo_mask(_features(tmp_path, {"pigment_network": [0, 0, 0, 1, 0]}), _superpixels(tmp_path, index))
    assert got.tolist() == [[False, False], [False, True]]


def test_dermo_index_lists(tmp_path):
    index = np.array([[0, 1], [2, 3]])
    got = load_dermo_mask(_features(tmp_path, {"streaks": [3, 1]}), _superpixels(tmp_path, index))
    assert got.tolist() == [[False, True], [False, True]]


@pytest.mark.parametrize("feats,problem", [
    ({"pigment_network": ["a"]}, "numbers"),
    ({"streaks": [7]}, "superpixel 7"),
    ({"pigment_network": [0, 1]}, None),  # indices 0 and 1: valid
    ({"colour": [1]}, "none of the features"),
    ({"pigment_network": [0, 0, 1]}, "3 flags"),
])
def test_dermo_errors(tmp_path, feats, problem):
    index = np.array([[0, 1], [2, 3]])
    fj, sp = _features(tmp_path, feats), _superpixels(tmp_path, index)
    if problem is None:
        assert load_dermo_mask(fj, sp).sum() == 2
        return
    with pytest.raises(AttnMelError) as e:
        load_dermo_mask(fj, sp)
    assert problem in _one_line_error(e, "ISIC_1_features.json")


def test_dermo_size_mismatch_names_the_map(tmp_path):
    fj = _features(tmp_path, {"streaks": [1]})
    sp = _superpixels(tmp_path, np.array([[0, 1], [2, 3]]))
    with pytest.raises(AttnMelError) as e:
        load_dermo_mask(fj, sp, expected_hw=(3, 2))
    _one_line_error(e, "ISIC_1_superpixels.png")


def test_alpha_masks(tmp_path):
    painted = np.zeros((1, 3, 4), np.uint8)
    painted[0, :, 3] = [0, 255, 255]  # black paint on transparent: the lesion is in the alpha
    p = tmp_path / "alpha.png"
    Image.fromarray(painted).save(p)
    assert load_mask(p).tolist() == [[False, True, True]]
    opaque_empty = np.zeros((1, 3, 4), np.uint8)
    opaque_empty[..., 3] = 255
    Image.fromarray(opaque_empty).save(p)
    assert not load_mask(p).any()
