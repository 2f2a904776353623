"""Shared fixtures: a small generated synthetic set, and builders of tiny fake trees in the official layouts.

Builders are returned by fixtures (``make_isic2017_tree`` etc.): call them with a folder (default: a fresh
one under ``tmp_path``) and get the root back. Images are tiny (8-20 px) and each image has its own size,
so a mask paired with the wrong image shows up as a size mismatch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker per core) each worker keeps to one intra-op thread: two workers
    with two threads each on 2 cores only contend."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_split_store(tmp_path_factory):
    """Drawn splits of readers called without a cache_dir go to a temporary folder, not to ./.cache of the
    checkout the tests run from (module fixtures share this one)."""
    old = os.environ.get("ATTNMEL_CACHE_DIR")
    os.environ["ATTNMEL_CACHE_DIR"] = str(tmp_path_factory.mktemp("attnmel-cache"))
    yield
    if old is None:
        os.environ.pop("ATTNMEL_CACHE_DIR", None)
    else:
        os.environ["ATTNMEL_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _split_store(_session_split_store, tmp_path_factory, monkeypatch):
    """One split store per test: the store is keyed by the labels' content, and the tree builders make the same
    labels every time, so a split drawn (or edited) by one test would otherwise be another's."""
    monkeypatch.setenv("ATTNMEL_CACHE_DIR", str(tmp_path_factory.mktemp("attnmel-cache")))


SPLIT_2017 = {"train": "Training", "val": "Validation", "test": "Test_v2"}


def write_image(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A small noisy RGB image, JPEG or PNG by extension; ``size`` is (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = (rng.random((h, w, 3)) * 200 + 30).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") \
        else Image.fromarray(arr).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int], lesion_px: int = 1) -> Path:
    """A 0/255 mask with ``lesion_px`` lesion pixels (first pixels in raster order): a fingerprint per id."""
    w, h = size
    arr = np.zeros(h * w, dtype=np.uint8)
    arr[:lesion_px] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.reshape(h, w)).save(path)
    return path


def size_of(i: int) -> tuple[int, int]:
    """Distinct (width, height) per image index."""
    return 12 + (i % 7), 8 + (i % 5)


def build_isic2017(root: Path, counts: dict[str, tuple[int, int, int]] | None = None, masks: bool = True,
                   dermo: bool = True, test_tag: str = "Test_v2", first_id: int = 0) -> Path:
    """ISIC 2017 tree; ``counts[split] = (nevus, melanoma, seborrheic_keratosis)``.

    Masks carry ``i + 1`` lesion pixels for image ``ISIC_<first_id + i>``. Dermo: a superpixel map whose
    indices straddle 255/256 (so the G channel matters) and flags for the first two superpixels of row 0.
    """
    counts = counts or {"train": (2, 2, 2), "val": (1, 1, 1), "test": (1, 1, 1)}
    tags = dict(SPLIT_2017, test=test_tag)
    i = first_id
    for split, (nev, mel, sk) in counts.items():
        tag = tags[split]
        data = root / f"ISIC-2017_{tag}_Data"
        data.mkdir(parents=True, exist_ok=True)
        rows = ["image_id,melanoma,seborrheic_keratosis"]
        for label in [0] * nev + [1] * mel + [2] * sk:
            image_id = f"ISIC_{i:07d}"
            size = size_of(i)
            write_image(data / f"{image_id}.jpg", size, seed=i)
            rows.append(f"{image_id},{float(label == 1)},{float(label == 2)}")
            if masks:
                write_mask(root / f"ISIC-2017_{tag}_Part1_GroundTruth" / f"{image_id}_segmentation.png", size, i + 1)
            if dermo:
                w, h = size
                yy, xx = np.mgrid[0:h, 0:w]
                sp = 250 + (yy // 4) * 4 + xx // 4
                rgb = np.stack([sp % 256, sp // 256 % 256, sp // 65536], -1).astype(np.uint8)
                Image.fromarray(rgb).save(data / f"{image_id}_superpixels.png")
                flags = [0] * (int(sp.max()) + 1)
                flags[250] = flags[251] = 1
                feats = {"pigment_network": flags, "negative_network": [0] * len(flags),
                         "streaks": [0] * len(flags), "milia_like_cyst": [0] * len(flags)}
                d = root / f"ISIC-2017_{tag}_Part2_GroundTruth"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{image_id}_features.json").write_text(json.dumps(feats))
            i += 1
        (data / f"ISIC-2017_{tag}_Data_metadata.csv").write_text("image_id,age_approximate,sex\n")
        (root / f"ISIC-2017_{tag}_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    return root


def build_isic2016(root: Path, train: tuple[int, int] = (14, 6), test: tuple[int, int] = (3, 2),
                   masks: bool = True) -> Path:
    """ISIC 2016 tree; ``train``/``test`` = (benign, malignant); masks with a capital-S ``_Segmentation``."""
    i = 0
    for part, (ben, mal) in (("Training", train), ("Test", test)):
        rows = []
        for label in [0] * ben + [1] * mal:
            image_id = f"ISIC_{i:07d}"
            write_image(root / f"ISBI2016_ISIC_Part3_{part}_Data" / f"{image_id}.jpg", size_of(i), seed=i)
            value = ("benign", "malignant")[label] if part == "Training" else f"{float(label)}"
            rows.append(f"{image_id},{value}")
            if masks:
                write_mask(root / f"ISBI2016_ISIC_Part1_{part}_GroundTruth" / f"{image_id}_Segmentation.png",
                           size_of(i), i + 1)
            i += 1
        (root / f"ISBI2016_ISIC_Part3_{part}_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    return root


HAM_DX = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")


def build_ham10000(root: Path, lesions_per_class: int = 5, sep: str = ",", name: str = "HAM10000_metadata.csv",
                   masks: bool = True) -> Path:
    """HAM10000 tree: each lesion has 1-3 images; images alternate between part_1 and part_2."""
    rows = [sep.join(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])]
    i = 0
    for c, dx in enumerate(HAM_DX):
        for j in range(lesions_per_class):
            lesion = f"HAM_{c * 100 + j:07d}"
            for _ in range(1 + (c + j) % 3):
                image_id = f"ISIC_{24306 + i:07d}"
                part = "HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2"
                write_image(root / part / f"{image_id}.jpg", (8, 8), seed=i)
                if masks:
                    write_mask(root / "HAM10000_segmentations_lesion_tschandl" / f"{image_id}_segmentation.png",
                               (8, 8), 1 + i % 60)
                rows.append(sep.join([lesion, image_id, dx, "histo", "50.0", "male", "back"]))
                i += 1
    (root / name).write_text("\n".join(rows) + "\n")
    return root


def build_isic2018(root: Path, counts: dict[str, int] | None = None) -> Path:
    """ISIC 2018 Task 1 tree with the ATTRIBUTION/LICENSE files the real input folders hold."""
    counts = counts or {"Training": 3, "Validation": 2, "Test": 2}
    i = 0
    for tag, n in counts.items():
        inp = root / f"ISIC2018_Task1-2_{tag}_Input"
        inp.mkdir(parents=True, exist_ok=True)
        (inp / "ATTRIBUTION.txt").write_text("x")
        (inp / "LICENSE.txt").write_text("x")
        for _ in range(n):
            image_id = f"ISIC_{i:07d}"
            write_image(inp / f"{image_id}.jpg", size_of(i), seed=i)
            write_mask(root / f"ISIC2018_Task1_{tag}_GroundTruth" / f"{image_id}_segmentation.png", size_of(i), i + 1)
            i += 1
    return root


def _builder(tmp_path: Path, build: Callable[..., Path], name: str) -> Callable[..., Path]:
    def make(root: Path | None = None, **kwargs) -> Path:
        root = Path(root) if root is not None else tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        return build(root, **kwargs)

    return make


@pytest.fixture
def make_isic2017_tree(tmp_path: Path) -> Callable[..., Path]:
    """``make(root=None, counts=..., masks=True, dermo=True, test_tag="Test_v2") -> root``."""
    return _builder(tmp_path, build_isic2017, "isic2017")


@pytest.fixture
def make_isic2016_tree(tmp_path: Path) -> Callable[..., Path]:
    """``make(root=None, train=(benign, malignant), test=(...), masks=True) -> root``."""
    return _builder(tmp_path, build_isic2016, "isic2016")


@pytest.fixture
def make_ham10000_tree(tmp_path: Path) -> Callable[..., Path]:
    """``make(root=None, lesions_per_class=5, sep=",", name="HAM10000_metadata.csv", masks=True) -> root``."""
    return _builder(tmp_path, build_ham10000, "ham10000")


@pytest.fixture
def make_isic2018_tree(tmp_path: Path) -> Callable[..., Path]:
    """``make(root=None, counts={"Training": 3, ...}) -> root``."""
    return _builder(tmp_path, build_isic2018, "isic2018")


@pytest.fixture
def isic2017_root(make_isic2017_tree) -> Path:
    return make_isic2017_tree()


@pytest.fixture
def isic2016_root(make_isic2016_tree) -> Path:
    return make_isic2016_tree()


@pytest.fixture
def ham10000_root(make_ham10000_tree) -> Path:
    return make_ham10000_tree()


@pytest.fixture
def isic2018_root(make_isic2018_tree) -> Path:
    return make_isic2018_tree()


@pytest.fixture(scope="session")
def synthetic_factory(tmp_path_factory) -> Callable[..., Path]:
    """``make(n=48, size=64, seed=0, spurious=False) -> root``, generated once per argument set per session.

    Treat the result as read-only: other tests share it.
    """
    from attnmel.data.synthetic import generate

    made: dict[tuple, Path] = {}

    def make(n: int = 48, size: int = 64, seed: int = 0, spurious: bool = False) -> Path:
        key = (n, size, seed, spurious)
        if key not in made:
            out = tmp_path_factory.mktemp(f"synthetic_{n}_{size}_{seed}_{int(spurious)}")
            made[key] = generate(out, n=n, size=size, seed=seed, spurious=spurious, progress=False)
        return made[key]

    return make


@pytest.fixture(scope="session")
def synthetic_root(synthetic_factory) -> Path:
    """48 synthetic 64-px lesions (ISIC 2017 layout, read with dataset ``synthetic``); read-only."""
    return synthetic_factory()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small models: at test sizes a second thread only spins on a shared
    CPU (measured ~10x slower per U-Net step with 2 threads on the busy 2-core CI box). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- the fault tests' run folders and tmpfs mounts (tests/_faults.py) -----------------------------------
@pytest.fixture(scope="module")
def trained_run(synthetic_root, tmp_path_factory) -> Path:
    """One trained epoch (read-only: tests copy it before changing anything); for the slow tests."""
    from attnmel.train.run import train
    from tests import _faults

    out = tmp_path_factory.mktemp("robust_runs")
    return train(_faults.tiny_cfg(synthetic_root, out, "one"), evaluate_after=False)


@pytest.fixture(scope="module")
def made_run(synthetic_root, tmp_path_factory) -> Path:
    """A run folder in the real format without training (untrained weights): fast, for the refusals and the
    read-only commands. Read-only: tests copy it before changing anything."""
    import torch

    from attnmel.train.module import ClassificationModule
    from tests import _faults

    out = tmp_path_factory.mktemp("robust_made")
    cfg = _faults.tiny_cfg(synthetic_root, out, "made")
    run = out / "made"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(_faults.config_mod.dump(cfg))
    module = ClassificationModule(cfg, ["other", "melanoma"], 1)
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 2}
    module.on_save_checkpoint(ckpt)
    for name in ("best.ckpt", "last.ckpt"):
        torch.save(ckpt, run / "checkpoints" / name)
    return run


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(name, size, *opts) -> path``: a small tmpfs under ``tmp_path`` (root only; skips otherwise)."""
    import subprocess

    from tests import _faults

    mounted: list[Path] = []

    def mount(name: str, size: str, *opts: str) -> Path:
        path = tmp_path / name
        _faults.mount_tmpfs(path, size, *opts)
        mounted.append(path)
        return path

    yield mount
    for p in reversed(mounted):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


# -- the real ISIC 2017 set at 256 px (../shared/data/isic2017-256): tests skip without it ------------------
@pytest.fixture(scope="session")
def isic2017_256() -> Path:
    """The real ISIC 2017 tree at 256 px (read-only: never write into it); skips when absent."""
    from tests._shared import shared_data

    root = shared_data("isic2017-256")
    if not root.is_dir():
        pytest.skip("no real ISIC 2017 set (../shared/data/isic2017-256)")
    return root


def copy_real_isic2017(src: Path, dst: Path, counts: dict[str, int], masks: dict[str, int] | None = None,
                       size: int | None = None) -> Path:
    """A small ISIC 2017 tree at ``dst`` from the first ``counts[split]`` images of each split of the real tree
    ``src`` (the official CSV's order, melanomas first so every split has both classes), with the first
    ``masks[split]`` of their lesion masks (default: all the split has); ``size``: images and masks resized to
    ``size`` x ``size`` (another geometry than the 256-px tree). Nothing is written into ``src``."""
    import csv

    tags = {"train": "Training", "val": "Validation", "test": "Test_v2"}
    for split, n in counts.items():
        tag = tags[split]
        with open(src / f"ISIC-2017_{tag}_Part3_GroundTruth.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        rows = sorted(rows, key=lambda r: -float(r["melanoma"]))[: n // 2] + \
            [r for r in rows if not float(r["melanoma"])][: n - n // 2]
        (dst / f"ISIC-2017_{tag}_Data").mkdir(parents=True, exist_ok=True)
        with open(dst / f"ISIC-2017_{tag}_Part3_GroundTruth.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["image_id", "melanoma", "seborrheic_keratosis"])
            w.writeheader()
            w.writerows({k: r[k] for k in w.fieldnames} for r in rows)
        n_masks = len(rows) if masks is None or split not in masks else masks[split]
        for i, r in enumerate(rows):
            image = Image.open(src / f"ISIC-2017_{tag}_Data" / f"{r['image_id']}.jpg")
            image = image.resize((size, size), Image.BILINEAR) if size else image
            image.save(dst / f"ISIC-2017_{tag}_Data" / f"{r['image_id']}.jpg", quality=95)
            mask_src = src / f"ISIC-2017_{tag}_Part1_GroundTruth" / f"{r['image_id']}_segmentation.png"
            if i < n_masks and mask_src.is_file():
                mask = Image.open(mask_src)
                mask = mask.resize((size, size), Image.NEAREST) if size else mask
                (dst / f"ISIC-2017_{tag}_Part1_GroundTruth").mkdir(exist_ok=True)
                mask.save(dst / f"ISIC-2017_{tag}_Part1_GroundTruth" / mask_src.name)
    return dst
