"""The synthetic lesion generator: deterministic, exact masks, the ISIC 2017 layout, the spurious option."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from attnmel.data.images import load_dermo_mask, load_image, load_mask_u8
from attnmel.data.readers import read_split
from attnmel.data.synthetic import generate
from attnmel.errors import AttnMelError


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _truth(root):
    with open(root / "attnmel_synthetic_truth.csv", newline="") as f:
        return {r["image_id"]: r for r in csv.DictReader(f)}


def _green(img: np.ndarray) -> np.ndarray:
    """Sticker pixels: nothing else in the images is this green."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return (g > r + 60) & (g > b + 60)


def test_deterministic_same_bytes(tmp_path):
    a = generate(tmp_path / "a", n=12, size=32, seed=5, spurious=True, progress=False)
    b = generate(tmp_path / "b", n=12, size=32, seed=5, spurious=True, progress=False)
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() and len(fa) > 12 * 4
    assert all(fa[k] == fb[k] for k in fa)
    c = generate(tmp_path / "c", n=12, size=32, seed=6, spurious=True, progress=False)
    assert _files(c) != fa


def test_layout_read_by_the_isic2017_reader(synthetic_root):
    splits = {s: read_split("synthetic", synthetic_root, s, validate=True) for s in ("train", "val", "test")}
    sizes = {s: len(idx.samples) for s, idx in splits.items()}
    assert sizes == {"train": 29, "val": 10, "test": 9}  # 60/20/20 of 48
    for idx in splits.values():
        assert idx.has_masks and idx.has_dermo and not idx.skipped
        assert 0.3 <= np.mean(idx.labels()) <= 0.4
    # the same folder, read as isic2017, gives the same index
    as2017 = read_split("isic2017", synthetic_root, "val")
    assert [s.image_id for s in as2017.samples] == [s.image_id for s in splits["val"].samples]
    data = synthetic_root / "ISIC-2017_Training_Data"
    assert (data / "ISIC-2017_Training_Data_metadata.csv").is_file()
    assert any(p.name.endswith("_superpixels.png") for p in data.iterdir())
    meta = json.loads((synthetic_root / "attnmel_synthetic.json").read_text())
    assert meta["complete"] is True and meta["size"] == 64


def test_masks_binary_exact_and_darker(synthetic_root):
    idx = read_split("synthetic", synthetic_root, "train")
    contrast = []
    for s in idx.samples:
        m = load_mask_u8(s.mask)
        assert set(np.unique(m).tolist()) <= {0, 255}
        lesion = m > 0
        img = load_image(s.image).astype(float).mean(-1)
        assert img.shape == lesion.shape == (64, 64)
        assert img[lesion].mean() < img[~lesion].mean()
        # the step in brightness across the mask border is sharpest exactly there: the mask shifted by
        # one pixel in any direction (or a soft edge leaking outside it) gives a weaker step
        step = _border_step(lesion, img)
        assert all(step > _border_step(np.roll(lesion, d, axis), img) for d in (-1, 1) for axis in (0, 1))
        contrast.append(step)
    assert min(contrast) > 20


def _border_step(lesion: np.ndarray, img: np.ndarray) -> float:
    """Mean brightness of the 1-px ring just outside the mask minus the ring just inside it."""
    inner = lesion & ~_erode(lesion, 1)
    outer = _dilate(lesion, 1) & ~lesion
    return float(img[outer].mean() - img[inner].mean())


def _erode(m: np.ndarray, k: int) -> np.ndarray:
    out = m.copy()
    for _ in range(k):
        p = np.pad(out, 1)
        out = out & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return out


def _dilate(m: np.ndarray, k: int) -> np.ndarray:
    out = m.copy()
    for _ in range(k):  # not ~erode(~m): its zero padding would add the frame's edge to the ring
        p = np.pad(out, 1)
        out = out | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return out


def test_dermo_features_lie_in_the_lesion(synthetic_root):
    idx = read_split("synthetic", synthetic_root, "train")
    nonempty = 0
    for s in idx.samples:
        d = load_dermo_mask(*s.dermo, expected_hw=(64, 64))
        lesion = load_mask_u8(s.mask) > 0
        if d.any():
            nonempty += 1
            assert (d & lesion).sum() >= 0.6 * d.sum()  # superpixels mostly covered by a lesion feature
            assert d.sum() < lesion.sum() * 1.5
    assert nonempty >= 0.8 * len(idx.samples)


def test_spurious_sticker_tracks_the_label_in_train_only(synthetic_factory):
    root = synthetic_factory(n=100, size=32, seed=1, spurious=True)
    truth = _truth(root)
    rates = {}
    for split in ("train", "test"):
        idx = read_split("synthetic", root, split)
        has = {0: [], 1: []}
        for s in idx.samples:
            g = _green(load_image(s.image))
            lesion = load_mask_u8(s.mask) > 0
            assert not (g & lesion).any()  # the artefact is always outside the lesion
            sticker = bool(g.sum() >= 9)
            assert sticker == (truth[s.image_id]["artefact"] == "1")
            has[s.label].append(sticker)
        rates[split] = (np.mean(has[0]), np.mean(has[1]))
    ben, mel = rates["train"]
    assert mel >= 0.85 and ben <= 0.15
    ben, mel = rates["test"]
    assert abs(mel - 0.5) <= 0.15 and abs(ben - 0.5) <= 0.15


def test_no_sticker_without_spurious(synthetic_root):
    for s in read_split("synthetic", synthetic_root, "train").samples:
        assert _green(load_image(s.image)).sum() < 3


def test_regenerate_in_place_and_refuse_foreign_folders(tmp_path):
    out = generate(tmp_path / "syn", n=20, size=32, seed=0, progress=False)
    generate(out, n=10, size=32, seed=0, progress=False)  # smaller: old files must not linger
    assert len(read_split("synthetic", out, "train").samples) == 6
    assert not read_split("synthetic", out, "train").skipped
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(AttnMelError, match="not empty"):
        generate(foreign, n=10, size=32, seed=0, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(AttnMelError):
        generate(tmp_path / "tiny", n=3, size=32, seed=0, progress=False)


def test_images_are_jpeg_rgb(synthetic_root):
    p = next((synthetic_root / "ISIC-2017_Validation_Data").glob("ISIC_*[0-9].jpg"))
    with Image.open(p) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
