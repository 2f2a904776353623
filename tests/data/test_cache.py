"""The preprocessing cache: reuse, staleness, atomic builds, equality with the uncached path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import attnmel.data.cache as cache_mod
from attnmel.data.cache import (
    DecodeSource,
    SourceFiles,
    ensure_cache,
    load_preprocessed,
    resolve_sources,
)
from attnmel.data.samples import Sample
from attnmel.data.transforms import BaseSpec
from attnmel.errors import AttnMelError

SPEC = BaseSpec(resize=24)


def write_set(root: Path, n: int = 4, size: tuple[int, int] = (64, 48), masks: bool = True) -> list[Sample]:
    """n small JPEGs with PNG lesion masks; lesion pixels are bright."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    W, H = size
    out = []
    for i in range(n):
        img = rng.integers(20, 120, (H, W, 3), dtype=np.uint8)
        m = np.zeros((H, W), np.uint8)
        m[H // 4 + i: H // 2 + i, W // 3: W // 3 + W // 6 + i] = 255
        img[m > 0] = 230
        ip = root / f"ISIC_{i:07d}.jpg"
        Image.fromarray(img).save(ip, quality=95)
        mp = None
        if masks:
            mp = root / f"ISIC_{i:07d}_segmentation.png"
            Image.fromarray(m).save(mp)
        out.append(Sample(f"ISIC_{i:07d}", ip, label=i % 2, mask=mp))
    return out


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def build(samples, cache_dir, spec=SPEC, split="train"):
    return ensure_cache("synthetic", split, resolve_sources(samples, spec=spec), spec, cache_dir, progress=False,
                        workers=2)


def valid_caches(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_cache_reused_and_equal_to_uncached(tmp_path):
    samples = write_set(tmp_path / "data")
    c1 = build(samples, tmp_path / "cache")
    assert c1.built and len(c1) == 4 and c1.ids == [s.image_id for s in samples]
    mtime = (c1.path / "images.npy").stat().st_mtime_ns
    c2 = build(samples, tmp_path / "cache")
    assert not c2.built and c2.path == c1.path
    assert (c2.path / "images.npy").stat().st_mtime_ns == mtime
    imgs = c2.arrays()["images"]
    assert isinstance(imgs, np.memmap) and imgs.shape == (4, 24, 24, 3) and imgs.dtype == np.uint8
    direct = DecodeSource(resolve_sources(samples), SPEC)
    for i, src in enumerate(resolve_sources(samples)):
        img, m, d = c2.get(i)
        ref_img, ref_m, ref_d = load_preprocessed(src, SPEC)
        assert np.array_equal(img, ref_img) and np.array_equal(m, ref_m) and d is None and ref_d is None
        assert np.array_equal(direct.get(i)[0], ref_img)
        assert set(np.unique(m).tolist()) <= {0, 1} and m.sum() > 0


def test_touched_or_modified_source_rebuilds(tmp_path):
    samples = write_set(tmp_path / "data")
    c1 = build(samples, tmp_path / "cache")
    bump_mtime(samples[2].image)  # same bytes, new mtime: rebuilt (contents may have changed)
    c2 = build(samples, tmp_path / "cache")
    assert c2.built and c2.path != c1.path
    assert valid_caches(tmp_path / "cache") == [c2.path]  # the superseded cache is gone
    # a changed mask file: rebuilt, and the new content is what is served
    # (an empty lesion mask is an error in the data now, so the new mask covers the whole image instead)
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(samples[1].mask)
    bump_mtime(samples[1].mask)
    c3 = build(samples, tmp_path / "cache")
    assert c3.built and c3.get(1)[1].min() > 0 and c2.get(1)[1].min() == 0
    assert not build(samples, tmp_path / "cache").built


def test_a_changed_source_is_named_when_the_cache_is_rebuilt(tmp_path, caplog):
    """Every open stats every source: the first changed file is named in one warning, the rebuilt cache serves
    the file as it is now, and a truncated JPEG is a one-line error naming it (never the old pixels)."""
    import logging

    samples = write_set(tmp_path / "data")
    old = build(samples, tmp_path / "cache").get(2)[0]
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(samples[2].image, quality=95)
    bump_mtime(samples[2].image)
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        c = build(samples, tmp_path / "cache")
    assert c.built and not np.array_equal(c.get(2)[0], old)
    assert np.array_equal(c.get(2)[0], load_preprocessed(resolve_sources(samples)[2], SPEC)[0])
    lines = [r.getMessage() for r in caplog.records if "changed since the cache was built" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(str(samples[2].image.resolve())), lines
    data = samples[3].image.read_bytes()
    samples[3].image.write_bytes(data[: len(data) // 2])
    with pytest.raises(AttnMelError, match="truncated") as err:
        build(samples, tmp_path / "cache")
    assert str(samples[3].image) in str(err.value) and "\n" not in str(err.value)
    samples[3].image.unlink()
    with pytest.raises(AttnMelError, match="not found") as err:
        build(samples, tmp_path / "cache")
    assert str(samples[3].image) in str(err.value)


def test_different_size_or_split_is_a_different_cache(tmp_path):
    samples = write_set(tmp_path / "data", n=2)
    a = build(samples, tmp_path / "cache", spec=BaseSpec(resize=24))
    b = build(samples, tmp_path / "cache", spec=BaseSpec(resize=32))
    c = build(samples, tmp_path / "cache", spec=BaseSpec(resize=24), split="val")
    assert a.built and b.built and c.built and len({a.path, b.path, c.path}) == 3
    assert b.get(0)[0].shape == (32, 32, 3)
    assert not build(samples, tmp_path / "cache", spec=BaseSpec(resize=24)).built  # a survives b and c


def test_crash_mid_build_leaves_nothing_trusted(tmp_path, monkeypatch):
    samples = write_set(tmp_path / "data", n=6)
    real = cache_mod.load_item  # what a build decodes each item with
    calls = {"n": 0}

    def crashing(src, spec):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(src, spec)

    monkeypatch.setattr(cache_mod, "load_item", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(samples, tmp_path / "cache")
    cache_dir = tmp_path / "cache"
    assert valid_caches(cache_dir) == []
    assert not list(cache_dir.glob(".tmp-*"))
    monkeypatch.setattr(cache_mod, "load_item", real)
    c = build(samples, cache_dir)
    assert c.built and len(c) == 6


def test_hard_crash_leftovers_are_not_trusted(tmp_path):
    samples = write_set(tmp_path / "data", n=2)
    c = build(samples, tmp_path / "cache")
    path = c.path
    del c
    # as if a process died while writing: the final folder without its meta.json (written last) ...
    (path / "meta.json").unlink()
    # ... and a temp folder of a dead process
    ghost = tmp_path / "cache" / f".tmp-{path.name}-pid999999999-deadbeef"
    ghost.mkdir()
    (ghost / "images.npy").write_bytes(b"partial")
    c2 = build(samples, tmp_path / "cache")
    assert c2.built and c2.path == path and (path / "meta.json").is_file()
    assert not ghost.exists()
    # a truncated array is not trusted either
    with open(path / "images.npy", "r+b") as fh:
        fh.truncate(200)
    assert build(samples, tmp_path / "cache").built


def test_corrupt_image_is_a_one_line_error_naming_it(tmp_path):
    samples = write_set(tmp_path / "data", n=3)
    samples[1].image.write_bytes(samples[1].image.read_bytes()[:300])
    with pytest.raises(AttnMelError) as e:
        build(samples, tmp_path / "cache")
    assert str(samples[1].image) in str(e.value) and "\n" not in str(e.value)
    assert valid_caches(tmp_path / "cache") == []
    samples[0].image.unlink()
    with pytest.raises(AttnMelError, match="file not found"):
        build(samples, tmp_path / "cache")


def test_large_jpeg_is_decoded_in_draft_mode(tmp_path, monkeypatch):
    samples = write_set(tmp_path / "data", n=1, size=(800, 600))
    seen = []
    real = cache_mod.load_image

    def spy(path, draft_min_side=None):
        seen.append(draft_min_side)
        out = real(path, draft_min_side=draft_min_side)
        seen.append(out.shape)
        return out

    monkeypatch.setattr(cache_mod, "load_image", spy)
    img, m, _ = load_preprocessed(resolve_sources(samples)[0], BaseSpec(resize=64))
    assert seen[0] == 80 and seen[1] == (150, 200, 3)  # 64 / 0.8 -> a 1/4 decode (600 / 4 = 150 >= 80)
    bright = img.mean(-1) > 200
    assert bright.sum() > 0 and np.all(m[bright] == 1)  # the lesion stays under its full-size mask


def test_predicted_masks_fill_in_and_crop_to_mask_needs_them(tmp_path):
    samples = write_set(tmp_path / "data", n=2, masks=False)
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.fromarray(np.full((24, 32), 255, np.uint8)).save(pred / f"{samples[0].image_id}_segmentation.png")
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(pred / f"{samples[1].image_id}.png")
    srcs = resolve_sources(samples, pred)
    assert [s.mask_predicted for s in srcs] == [True, True]
    c = ensure_cache("synthetic", "test", srcs, SPEC, tmp_path / "cache", progress=False)
    assert c.get(0)[1].all() and c.get(1)[1].all()  # half-resolution predicted mask accepted
    Image.fromarray(np.full((10, 64), 255, np.uint8)).save(pred / f"{samples[1].image_id}.png")
    with pytest.raises(AttnMelError, match="aspect"):
        load_preprocessed(resolve_sources(samples, pred)[1], SPEC)
    with pytest.raises(AttnMelError, match="crop_to_mask"):
        resolve_sources(samples, None, BaseSpec(crop_to_mask="crop"))
    with pytest.raises(AttnMelError, match="not found"):
        resolve_sources(samples, tmp_path / "nowhere")


def test_empty_split_is_an_error(tmp_path):
    with pytest.raises(AttnMelError, match="no images"):
        ensure_cache("synthetic", "train", [], SPEC, tmp_path / "cache", progress=False)
    assert isinstance(SourceFiles("a", tmp_path / "a.jpg").files()[0], Path)


def test_compute_stats_cached_and_uncached(tmp_path):
    from attnmel.data.samples import DatasetIndex
    from attnmel.data.stats import compute_stats

    root = tmp_path / "flat"
    root.mkdir()
    samples = []
    for i, colour in enumerate([(100, 150, 200), (200, 50, 0)]):
        p = root / f"flat_{i}.png"  # PNG: exact colours
        Image.fromarray(np.full((30, 40, 3), colour, np.uint8)).save(p)
        samples.append(Sample(p.stem, p, label=i))
    index = DatasetIndex("flat", "train", samples, ["other", "melanoma"])
    cfg = {"dataset": "flat", "resize": 16, "center_crop": 0.8, "cache": True, "cache_dir": str(tmp_path / "c")}
    mean, std = compute_stats(index, cfg, progress=False)
    assert mean == pytest.approx((150 / 255, 100 / 255, 100 / 255), abs=1e-6)
    assert std == pytest.approx((50 / 255, 50 / 255, 100 / 255), abs=1e-6)
    assert valid_caches(tmp_path / "c")  # the cache training will reuse
    m2, s2 = compute_stats(index, {**cfg, "cache": False}, progress=False)
    assert m2 == pytest.approx(mean) and s2 == pytest.approx(std)
