"""The DataModule: batch format, oversampling, seeding, mask requirements, predicted masks, crop_to_mask."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from attnmel.config import defaults
from attnmel.data.datamodule import AttnMelDataModule, make_loader, oversample_rows
from attnmel.data.samples import DatasetIndex, Sample
from attnmel.data.synthetic import MARKER
from attnmel.errors import AttnMelError, MissingMasksError

N_MEL = 3


def write_index(root: Path, split: str, n: int = 10, masks: bool = True, dermo: bool = False) -> DatasetIndex:
    """n tiny JPEGs (3 melanoma), lesions drawn in a bright colour, with PNG masks."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(split))
    samples = []
    for i in range(n):
        img = rng.integers(30, 110, (48, 64, 3), dtype=np.uint8)
        m = np.zeros((48, 64), np.uint8)
        m[10 + i % 5: 34, 20: 40 + i % 7] = 255
        img[m > 0] = (230, 60, 200)
        ip = root / f"{split}_{i:03d}.jpg"
        Image.fromarray(img).save(ip, quality=95)
        mp = None
        if masks:
            mp = root / f"{split}_{i:03d}_segmentation.png"
            Image.fromarray(m).save(mp)
        dm = None
        if dermo:
            sp = np.zeros((48, 64, 3), np.uint8)
            sp[:, 32:, 0] = 1  # two superpixels: left 0, right 1
            Image.fromarray(sp).save(root / f"{split}_{i:03d}_superpixels.png")
            (root / f"{split}_{i:03d}_features.json").write_text('{"pigment_network": [0, 1], "streaks": [0, 0]}')
            dm = (root / f"{split}_{i:03d}_features.json", root / f"{split}_{i:03d}_superpixels.png")
        samples.append(Sample(f"{split}_{i:03d}", ip, label=int(i < N_MEL), mask=mp, dermo=dm))
    return DatasetIndex("synthetic", split, samples, ["other", "melanoma"])


def make_cfg(tmp_path: Path, **data) -> dict:
    cfg = defaults()
    cfg["data"].update(root=str(tmp_path / "data"), resize=40, image_size=32, batch_size=4, eval_batch_size=5,
                       num_workers=0, cache_dir=str(tmp_path / "cache"), oversample=4, epoch_repeats=1)
    cfg["data"].update(data)
    cfg["loss"]["regulariser"] = "none"
    return cfg


def make_dm(tmp_path: Path, gt_masks: bool = True, dermo: bool = False, seed: int = 0, reg: str = "none",
            **data) -> AttnMelDataModule:
    cfg = make_cfg(tmp_path, **data)
    cfg["seed"] = seed
    cfg["loss"]["regulariser"] = reg
    idx = {s: write_index(tmp_path / "data", s, n=10 if s == "train" else 5, masks=gt_masks, dermo=dermo)
           for s in ("train", "val", "test")}
    return AttnMelDataModule(cfg, indexes=idx, progress=False)


def test_batch_format(tmp_path):
    dm = make_dm(tmp_path, dermo=True)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert set(b) == {"image", "label", "mask", "dermo", "image_id", "index"}
    assert b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["label"].shape == (4,) and b["label"].dtype == torch.long
    assert b["mask"].shape == (4, 1, 32, 32) and b["mask"].dtype == torch.float32
    assert set(b["mask"].unique().tolist()) <= {0.0, 1.0} and b["mask"].sum() > 0
    assert b["dermo"].shape == (4, 1, 32, 32) and torch.all(b["dermo"] <= 1)
    assert isinstance(b["image_id"], list) and isinstance(b["image_id"][0], str)
    assert b["index"].dtype == torch.long
    idx = dm.index("train")
    for j, i in enumerate(b["index"].tolist()):
        assert idx.samples[i].image_id == b["image_id"][j] and idx.samples[i].label == b["label"][j]
    v = next(iter(dm.val_dataloader()))
    assert v["image"].shape == (5, 3, 32, 32) and v["index"].tolist() == [0, 1, 2, 3, 4]
    assert dm.class_names == ["other", "melanoma"] and dm.melanoma_index == 1
    # the train split goes through the cache; a second module reuses it
    assert any((tmp_path / "cache").iterdir())


def test_oversampling_and_epoch_repeats(tmp_path):
    assert oversample_rows([1, 0, 0, 1], positive=1, factor=4) == [0, 0, 0, 0, 1, 2, 3, 3, 3, 3]
    dm = make_dm(tmp_path, epoch_repeats=2)
    ds = dm.dataset("train")
    counts = np.bincount(ds.rows, minlength=10)
    assert len(ds) == 2 * (N_MEL * 4 + 7)
    assert counts[:N_MEL].tolist() == [8] * N_MEL and counts[N_MEL:].tolist() == [2] * 7
    assert len(dm.dataset("val")) == 5  # no oversampling outside training
    off = make_dm(tmp_path / "off", oversample=1)
    assert len(off.dataset("train")) == 10
    # the training loader sees melanoma 4x as often
    labels = torch.cat([b["label"] for b in make_dm(tmp_path / "l", batch_size=19).train_dataloader()])
    assert labels.sum().item() == 12


def batches(dm: AttnMelDataModule, n: int = 3) -> list[dict]:
    out = []
    for b in dm.train_dataloader():
        out.append(b)
        if len(out) == n:
            break
    return out


def same(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x["index"], y["index"]) and torch.equal(x["image"], y["image"])
               and torch.equal(x["mask"], y["mask"]) for x, y in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_seeding_reproducible(tmp_path, workers):
    a = batches(make_dm(tmp_path, seed=1, num_workers=workers))
    torch.manual_seed(999)  # global RNG state must not matter
    random.seed(5)
    b = batches(make_dm(tmp_path, seed=1, num_workers=workers))
    c = batches(make_dm(tmp_path, seed=2, num_workers=workers))
    assert same(a, b)
    assert not same(a, c)
    # same order, different augmentation would also be a difference: images differ within a batch too
    assert any(not torch.equal(x["image"], y["image"]) for x, y in zip(a, c))


class _Probe(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        info = torch.utils.data.get_worker_info()
        return {"worker": info.id if info else -1, "torch": torch.initial_seed() % 2**62,
                "numpy": int(np.random.randint(0, 2**31 - 1)), "random": random.random()}


def test_workers_get_distinct_reproducible_seeds():
    def run(seed):
        rows = {}
        for b in make_loader(_Probe(), batch_size=2, shuffle=False, seed=seed, num_workers=2):
            for w, t, n, r in zip(b["worker"].tolist(), b["torch"].tolist(), b["numpy"].tolist(),
                                  b["random"].tolist()):
                rows.setdefault(w, (t, n, r))
        return rows

    a, b, c = run(0), run(0), run(1)
    assert sorted(a) == [0, 1]
    assert len({a[0][0], a[1][0]}) == 2 and len({a[0][1], a[1][1]}) == 2 and len({a[0][2], a[1][2]}) == 2
    assert a == b and a != c
    loader = make_loader(_Probe(), batch_size=2, shuffle=False, seed=0, num_workers=2)
    assert loader.persistent_workers and loader.generator is not None


def test_missing_masks_with_a_regulariser_is_a_clear_error(tmp_path):
    dm = make_dm(tmp_path, gt_masks=False, reg="lesion")
    with pytest.raises(AttnMelError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert "synthetic" in msg and "lesion" in msg and "masks" in msg and "\n" not in msg
    dm = make_dm(tmp_path / "d", gt_masks=True, dermo=False, reg="dermo")
    with pytest.raises(AttnMelError, match="dermo"):
        dm.setup("fit")
    # without a regulariser, no masks is fine: the batch has no mask key
    dm = make_dm(tmp_path / "n", gt_masks=False)
    assert "mask" not in next(iter(dm.train_dataloader()))
    assert not dm.dataset("train").with_mask
    with pytest.raises(MissingMasksError, match="lesion masks"):  # the type a sweep decides by
        make_dm(tmp_path / "r", gt_masks=False, reg="lesion").dataset("train")
    assert make_dm(tmp_path / "y", reg="lesion").dataset("train").with_mask  # has them: no error


def test_predicted_masks_folder_fills_in(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for split, n in (("train", 10), ("val", 5), ("test", 5)):
        for i in range(n):
            Image.fromarray(np.full((48, 64), 255, np.uint8)).save(pred / f"{split}_{i:03d}.png")
    dm = make_dm(tmp_path, gt_masks=False, reg="lesion", masks=str(pred))
    b = next(iter(dm.train_dataloader()))
    assert b["mask"].shape == (4, 1, 32, 32) and torch.all(b["mask"] == 1)


def test_crop_to_mask_modes(tmp_path):
    plain = make_dm(tmp_path / "p").dataset("val")
    crop = make_dm(tmp_path / "c", crop_to_mask="crop", crop_margin=0.0).dataset("val")
    masked = make_dm(tmp_path / "m", crop_to_mask="masked").dataset("val")
    for i in range(5):
        assert crop[i]["mask"].mean() > plain[i]["mask"].mean() + 0.2  # the lesion fills the crop
        item = masked[i]
        mean = torch.tensor(masked.transform.mean).view(3, 1, 1)
        std = torch.tensor(masked.transform.std).view(3, 1, 1)
        zero = (0 - mean) / std
        outside = item["mask"][0] == 0
        assert outside.any() and torch.allclose(item["image"][:, outside], zero.expand(3, 32, 32)[:, outside])
    with pytest.raises(AttnMelError, match="crop_to_mask"):
        make_dm(tmp_path / "x", gt_masks=False, crop_to_mask="crop").dataset("val")


def test_uncached_equals_cached(tmp_path):
    a = make_dm(tmp_path / "a", cache=True).dataset("val")
    b = make_dm(tmp_path / "b", cache=False).dataset("val")
    for i in range(5):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])


def test_predict_dataset_and_eval_loader(tmp_path):
    dm = make_dm(tmp_path)
    paths = [s.image for s in dm.index("test").samples[:3]]
    ds = dm.predict_dataset(paths)
    item = ds[0]
    assert set(item) == {"image", "image_id", "index"} and item["image"].shape == (3, 32, 32)
    assert item["image_id"] == paths[0].stem
    assert torch.equal(item["image"], dm.dataset("test")[0]["image"])  # same preprocessing as evaluation
    ev = list(dm.eval_dataloader("train"))
    assert sum(len(b["index"]) for b in ev) == 10  # no oversampling, every image once, in order
    assert torch.cat([b["index"] for b in ev]).tolist() == list(range(10))


def test_synthetic_generated_when_root_is_missing(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg["data"]["synthetic"] = {"n": 12, "size": 40, "spurious": True, "seed": 3}
    dm = AttnMelDataModule(cfg, progress=False)
    dm.prepare_data()
    record = json.loads((tmp_path / "data" / MARKER).read_text())
    assert record == {**record, "complete": True, "n": 12, "size": 40, "seed": 3, "spurious": True}
    samples = [s for split in ("train", "val", "test") for s in dm.index(split).samples]
    assert len(samples) == 12 and Image.open(samples[0].image).size == (40, 40)


def test_oversampling_per_class_mapping():
    from attnmel.data.datamodule import _oversample_factors, oversample_rows

    names = ["nevus", "melanoma", "seborrheic_keratosis"]
    labels = [0, 0, 0, 1, 2]
    factors = _oversample_factors({"melanoma": 3, "seborrheic_keratosis": 2}, names)
    assert factors == {1: 3, 2: 2}
    rows = oversample_rows(labels, 1, factors, repeats=2)
    assert sorted(rows) == sorted([0, 1, 2, 3, 3, 3, 4, 4] * 2)
    with pytest.raises(AttnMelError, match="unknown class"):
        _oversample_factors({"melanomaa": 3}, names)
