"""The generic folder dataset (data.dataset: folder) on trees the tests write."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnmel.data.readers import read_split
from attnmel.errors import AttnMelError


def make_folder(root, n=20, masks=True, split=False, diagnosis=False, size=64, ext="png"):
    """``n`` images (every third a melanoma), labels.csv, optionally masks (``<id>_segmentation.png``)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    header = ["image_id", "dx" if diagnosis else "melanoma"] + (["split"] if split else [])
    lines = [",".join(header)]
    for i in range(n):
        key = f"IMG_{i:03d}"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{key}.{ext}")
        mel = int(i % 3 == 0)
        label = ("MEL" if mel else "NV") if diagnosis else f"{mel}.0"
        row = [key, label] + ([("train", "val", "test")[i % 3 if i >= 3 else 0]] if split else [])
        lines.append(",".join(row))
        if masks:
            (root / "masks").mkdir(exist_ok=True)
            m = np.zeros((size, size), np.uint8)
            m[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
            Image.fromarray(m).save(root / "masks" / f"{key}_segmentation.png")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_folder_with_split_column_and_masks(tmp_path):
    root = make_folder(tmp_path / "d", split=True)
    before = _listing(root)
    test = read_split("folder", root, "test")
    assert [s.image_id for s in test.samples] == [f"IMG_{i:03d}" for i in range(20) if i >= 3 and i % 3 == 2]
    assert test.has_masks and test.samples[0].mask.name == f"{test.samples[0].image_id}_segmentation.png"
    assert [s.label for s in test.samples] == [int(int(s.image_id[4:]) % 3 == 0) for s in test.samples]
    everything = read_split("folder", root, "all")
    assert len(everything.samples) == 20
    assert _listing(root) == before


def test_folder_without_split_draws_one_outside_root(tmp_path):
    root = make_folder(tmp_path / "d", masks=False, ext="bmp")
    root.chmod(0o755)
    before = _listing(root)
    cache = tmp_path / "cache"
    parts = {s: read_split("folder", root, s, cache_dir=cache) for s in ("train", "val", "test")}
    ids = [{x.image_id for x in parts[s].samples} for s in parts]
    assert sum(map(len, ids)) == 20 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert not parts["train"].has_masks and not parts["train"].skipped  # val/test images are not "unlabelled"
    assert _listing(root) == before  # nothing written into ROOT, even though it is writable
    assert list(cache.rglob("attnmel_splits.csv"))
    again = read_split("folder", root, "val", cache_dir=cache)
    assert [s.image_id for s in again.samples] == [s.image_id for s in parts["val"].samples]


def test_folder_diagnosis_column(tmp_path):
    root = make_folder(tmp_path / "d", split=True, diagnosis=True)
    idx = read_split("folder", root, "all", label_column="dx", positive_class="mel")
    assert sum(s.label for s in idx.samples) == 7  # ids 0, 3, ..., 18
    with pytest.raises(AttnMelError, match="labels.csv.*missing column melanoma"):
        read_split("folder", root, "all")


def _one_line(e) -> str:
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    return msg


def test_folder_bad_input(tmp_path):
    root = make_folder(tmp_path / "d", split=True)
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_text(text + "IMG_001,0,train\n")
    with pytest.raises(AttnMelError) as e:
        read_split("folder", root, "all")
    assert "labels.csv" in _one_line(e) and "duplicate id IMG_001" in str(e.value)
    (root / "labels.csv").write_text(text.replace("IMG_004,0.0", "IMG_004,2"))
    with pytest.raises(AttnMelError) as e:
        read_split("folder", root, "all")
    assert "labels.csv" in _one_line(e) and "melanoma value '2' is not 0 or 1" in str(e.value)
    (root / "labels.csv").write_text(text)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "masks" / "OTHER_9.png")
    with pytest.raises(AttnMelError) as e:
        read_split("folder", root, "all")
    assert "OTHER_9.png" in _one_line(e) and "unknown image" in str(e.value)


def test_a_run_config_reads_a_folder_dataset(tmp_path):
    from attnmel import config as config_mod
    from attnmel.data.datamodule import AttnMelDataModule

    root = make_folder(tmp_path / "d", split=True, diagnosis=True)
    cfg = config_mod.defaults()
    cfg["data"].update(dataset="folder", root=str(root), image_size=32, resize=32, num_workers=0, cache=False,
                       label_column="dx", positive_class="MEL", oversample=1)
    dm = AttnMelDataModule(cfg)
    batch = next(iter(dm.eval_dataloader("test")))
    assert batch["image"].shape[-2:] == (32, 32) and "mask" in batch
    assert batch["label"].tolist() == [int(int(i[4:]) % 3 == 0) for i in batch["image_id"]]
    cfg["data"].update(split_file="s.csv")  # not an option of the folder dataset: refused by name
    with pytest.raises(AttnMelError, match="data.split_file does not apply to dataset folder"):
        AttnMelDataModule(cfg).index("train")
