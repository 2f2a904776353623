"""Data that used to be accepted in silence, and a preprocessing cache on a full or read-only disk (issue 13,
from tests/test_robustness.py). tmpfs cases run as root only."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnmel.cli import main as cli_main
from attnmel.errors import AttnMelError


# -- 10. bad data --------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png48(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    return path


def test_48_bit_png_warns(tmp_path, caplog):
    from attnmel.data.images import load_image

    arr = np.full((4, 5, 3), 40000, dtype=np.uint16)
    p = write_png48(tmp_path / "deep.png", arr)
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        img = load_image(p)
    assert img.shape == (4, 5, 3) and int(img[0, 0, 0]) == 40000 >> 8
    assert "48-bit RGB" in caplog.text and str(p) in caplog.text


@pytest.mark.parametrize("values", [(0, 100), (0, 76)])
def test_a_mask_with_no_value_above_128_warns(tmp_path, caplog, values):
    from attnmel.data.images import load_mask

    m = np.full((6, 6), values[0], np.uint8)
    m[2:4, 2:4] = values[1]
    Image.fromarray(m).save(tmp_path / "m.png")
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        assert not load_mask(tmp_path / "m.png").any()
    assert "none above 128" in caplog.text


def test_a_red_lesion_on_an_rgb_mask_warns(tmp_path, caplog):
    from attnmel.data.images import load_mask

    m = np.zeros((6, 6, 3), np.uint8)
    m[2:4, 2:4, 0] = 255  # gray value 76
    Image.fromarray(m).save(tmp_path / "m.png")
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        load_mask(tmp_path / "m.png")
    assert "up to 76, none above 128" in caplog.text


def _first(root: Path, folder: str, pattern: str) -> Path:
    return sorted((root / folder).glob(pattern))[0]


def test_data_check_errors_on_an_empty_lesion_mask_and_warns_on_low_and_tiny(make_isic2017_tree, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal: each problem is still one line, its path whole
    root = make_isic2017_tree()
    empty = _first(root, "ISIC-2017_Training_Part1_GroundTruth", "*.png")
    w, h = Image.open(empty).size
    Image.fromarray(np.zeros((h, w), np.uint8)).save(empty)
    low = sorted((root / "ISIC-2017_Validation_Part1_GroundTruth").glob("*.png"))[0]
    Image.fromarray(np.where(np.asarray(Image.open(low)) > 0, 100, 0).astype(np.uint8)).save(low)
    assert cli_main(["data", "check", "--dataset", "isic2017", "--root", str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any("lesion mask is empty" in line and str(empty) in line for line in lines)
    out = " ".join(lines)
    assert "no value above 128" in out and low.name in out
    assert "under 32 px on the short side" in out  # the fixture's images are 8-20 px


def test_training_refuses_an_empty_lesion_mask(tmp_path):
    from attnmel.data.cache import SourceFiles, load_preprocessed
    from attnmel.data.transforms import BaseSpec

    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "a_segmentation.png")
    src = SourceFiles("a", tmp_path / "a.jpg", tmp_path / "a_segmentation.png")
    with pytest.raises(AttnMelError, match="a_segmentation.png: lesion mask is empty"):
        load_preprocessed(src, BaseSpec(resize=32))


def test_training_warns_about_an_image_far_below_the_training_size(tmp_path, caplog):
    from attnmel.data import cache as cache_mod
    from attnmel.data.transforms import BaseSpec

    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(tmp_path / "dot.png")
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        img, _, _ = cache_mod.load_preprocessed(cache_mod.SourceFiles("dot", tmp_path / "dot.png"), BaseSpec(resize=64))
    assert img.shape == (64, 64, 3) and "dot.png: image is 1x1 px, far below data.resize=64" in caplog.text


def test_features_json_without_its_superpixel_map_is_reported(make_isic2017_tree, capsys):
    root = make_isic2017_tree()
    sp = _first(root, "ISIC-2017_Training_Data", "*_superpixels.png")
    sp.unlink()
    assert cli_main(["data", "check", "--dataset", "isic2017", "--root", str(root)]) == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert sp.name in out and "file not found" in out


def test_wrong_size_mask_is_not_also_reported_as_missing(make_isic2017_tree, capsys):
    from attnmel.data.check import check_dataset

    root = make_isic2017_tree()
    mask = _first(root, "ISIC-2017_Training_Part1_GroundTruth", "*.png")
    Image.fromarray(np.full((3, 3), 255, np.uint8)).save(mask)
    problems = check_dataset("isic2017", root).problems()
    assert any("mask is 3x3 but its image is" in p for p in problems)
    assert not any("without mask" in p for p in problems), problems



@pytest.mark.slow
def test_cache_on_a_full_disk_is_one_line_naming_the_folder(tmpfs, tmp_path):
    small = tmpfs("small", "256k")
    data = tmp_path / "data"
    data.mkdir()
    code = (
        "import sys; from pathlib import Path; import numpy as np; from PIL import Image\n"
        "from attnmel.data.cache import SourceFiles, ensure_cache\n"
        "from attnmel.data.transforms import BaseSpec\n"
        "from attnmel.errors import AttnMelError\n"
        "d = Path(sys.argv[1]); srcs = []\n"
        "for i in range(40):\n"
        "    p = d / f'i{i}.png'; Image.fromarray(np.full((64, 64, 3), i, np.uint8)).save(p)\n"
        "    srcs.append(SourceFiles(f'i{i}', p))\n"
        "try:\n"
        "    ensure_cache('synthetic', 'train', srcs, BaseSpec(resize=64), sys.argv[2], progress=False)\n"
        "except AttnMelError as e:\n"
        "    print(e); sys.exit(2)\n")
    r = subprocess.run([sys.executable, "-c", code, str(data), str(small / "cache")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])  # not -7 (SIGBUS)
    assert f"{small / 'cache'}: no space for the preprocessing cache" in r.stdout


def test_read_only_cache_dir_is_one_line(tmpfs, tmp_path):
    from attnmel.data.cache import SourceFiles, ensure_cache
    from attnmel.data.transforms import BaseSpec

    ro = tmpfs("ro", "1m", "ro")
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(AttnMelError, match="data.cache_dir is not writable"):
        ensure_cache("synthetic", "train", [SourceFiles("a", tmp_path / "a.png")], BaseSpec(resize=8), ro,
                     progress=False)
