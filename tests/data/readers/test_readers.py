"""Dataset readers on tiny fake trees in the official layouts (built by tests/conftest.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from attnmel.data.images import image_size, load_dermo_mask, load_mask
from attnmel.data.readers import DATASETS, read_split
from attnmel.errors import AttnMelError


def _err(excinfo, name: str) -> str:
    """The message is one line and names the file."""
    msg = str(excinfo.value)
    assert name in msg, msg
    assert "\n" not in msg
    return msg


def _index_of(image_id: str) -> int:
    return int(image_id.split("_")[1])


def _assert_masks_paired(index) -> None:
    """Each fake mask holds ``i + 1`` lesion pixels for image ``ISIC_<i>`` and has its image's size."""
    for s in index.samples:
        assert s.mask is not None and s.mask.name.lower() == f"{s.image_id}_segmentation.png".lower()
        w, h = image_size(s.image)
        assert load_mask(s.mask, expected_hw=(h, w)).sum() == _index_of(s.image_id) + 1


# -- registry ----------------------------------------------------------------------------------

def test_registry_names_and_unknown_dataset(tmp_path):
    assert set(DATASETS) == {"synthetic", "isic2017", "isic2016", "ham10000", "isic2018_task1", "isic2018_task2",
                             "isic2018_task3", "isic2019", "isic2020", "synthetic_attributes", "folder"}
    with pytest.raises(AttnMelError) as e:
        read_split("isic2021", tmp_path, "train")
    assert "isic2017" in str(e.value) and "ham10000" in str(e.value)
    with pytest.raises(AttnMelError, match="unknown split"):
        read_split("isic2017", tmp_path, "training")
    with pytest.raises(AttnMelError, match="val_fractoin"):
        read_split("isic2017", tmp_path, "train", val_fractoin=0.1)


def test_missing_empty_and_wrong_root(tmp_path, make_isic2016_tree):
    with pytest.raises(AttnMelError) as e:
        read_split("isic2017", tmp_path / "nowhere", "train")
    assert "not found" in _err(e, "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttnMelError) as e:
        read_split("isic2017", tmp_path / "empty", "train")
    assert "empty" in _err(e, "empty")
    root = make_isic2016_tree()
    with pytest.raises(AttnMelError) as e:
        read_split("isic2017", root, "train")
    msg = _err(e, "ISIC-2017_Training_Data")
    assert "ISBI2016_ISIC_Part3_Training_Data" in msg  # shows what the folder does hold


def test_num_classes_checked(isic2016_root):
    with pytest.raises(AttnMelError, match="num_classes 3"):
        read_split("isic2016", isic2016_root, "train", num_classes=3)


# -- ISIC 2017 ---------------------------------------------------------------------------------

def test_isic2017_labels_masks_dermo(isic2017_root):
    idx = read_split("isic2017", isic2017_root, "train")
    assert idx.class_names == ["other", "melanoma"] and idx.melanoma_index == 1
    assert [s.image_id for s in idx.samples] == [f"ISIC_{i:07d}" for i in range(6)]  # no superpixels/metadata
    assert idx.labels() == [0, 0, 1, 1, 0, 0]
    assert idx.has_masks and idx.has_dermo and idx.skipped == []
    _assert_masks_paired(idx)
    idx3 = read_split("isic2017", isic2017_root, "train", num_classes=3)
    assert idx3.class_names == ["nevus", "melanoma", "seborrheic_keratosis"]
    assert idx3.labels() == [0, 0, 1, 1, 2, 2]
    for split, n in (("val", 3), ("test", 3)):
        assert len(read_split("isic2017", isic2017_root, split).samples) == n


def test_isic2017_test_folder_named_test(make_isic2017_tree):
    root = make_isic2017_tree(counts={"test": (1, 1, 0)}, test_tag="Test")
    assert read_split("isic2017", root, "test").labels() == [0, 1]


def test_isic2017_masks_paired_by_id_not_position(isic2017_root):
    gt = isic2017_root / "ISIC-2017_Training_Part1_GroundTruth"
    # capital S for some (sorts before lower case), an extra mask for an id not in the split that sorts
    # first, and one mask missing: a positional pairing would shift every mask after the gap.
    for i in (1, 4):
        p = gt / f"ISIC_{i:07d}_segmentation.png"
        p.rename(gt / f"ISIC_{i:07d}_Segmentation.png")
    Image.fromarray(np.full((3, 3), 255, np.uint8)).save(gt / "ISIC_0000000a_segmentation.png")
    Image.fromarray(np.full((3, 3), 255, np.uint8)).save(gt / "ISIC_0999999_segmentation.png")
    (gt / "ISIC_0000002_segmentation.png").unlink()
    idx = read_split("isic2017", isic2017_root, "train")
    by_id = {s.image_id: s for s in idx.samples}
    assert by_id["ISIC_0000002"].mask is None
    assert not idx.has_masks
    for key, s in by_id.items():
        if key == "ISIC_0000002":
            continue
        w, h = image_size(s.image)
        assert load_mask(s.mask, expected_hw=(h, w)).sum() == _index_of(key) + 1


def test_isic2017_dermo_union_matches_an_independent_decoding(isic2017_root):
    s = read_split("isic2017", isic2017_root, "train").samples[3]
    fj, sp = s.dermo
    assert fj.name == f"{s.image_id}_features.json" and sp.name == f"{s.image_id}_superpixels.png"
    assert sp.parent.name == "ISIC-2017_Training_Data"
    rgb = np.asarray(Image.open(sp).convert("RGB")).astype(np.int64)
    index = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    feats = json.loads(fj.read_text())
    chosen = {i for flags in feats.values() for i, f in enumerate(flags) if f}
    expected = np.isin(index, sorted(chosen))
    assert expected.any() and not expected.all()
    assert (load_dermo_mask(fj, sp) == expected).all()


@pytest.mark.parametrize("header,row,problem", [
    ("image_id,melanoma", "ISIC_0000000,0.0", "missing column seborrheic_keratosis"),
    ("image_id,melanoma,seborrheic_keratosis", "ISIC_0000001,0.0,0.0", "duplicate id ISIC_0000001"),
    ("image_id,melanoma,seborrheic_keratosis", "ISIC_0000099,yes,0.0", "not 0 or 1"),
    ("image_id,melanoma,seborrheic_keratosis", "ISIC_0000099,1.0,1.0", "both melanoma"),
    ("image_id,melanoma,seborrheic_keratosis", "ISIC_0000099,2.0,0.0", "not 0 or 1"),
])
def test_isic2017_bad_csv(isic2017_root, header, row, problem):
    csv_path = isic2017_root / "ISIC-2017_Training_Part3_GroundTruth.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([header, *lines[1:], row]) + "\n")
    with pytest.raises(AttnMelError) as e:
        read_split("isic2017", isic2017_root, "train")
    assert problem in _err(e, csv_path.name)


def test_isic2017_missing_csv_and_empty_csv(isic2017_root):
    csv_path = isic2017_root / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    csv_path.write_text("")
    with pytest.raises(AttnMelError) as e:
        read_split("isic2017", isic2017_root, "val")
    _err(e, csv_path.name)
    csv_path.unlink()
    with pytest.raises(AttnMelError) as e:
        read_split("isic2017", isic2017_root, "val")
    assert "not found" in _err(e, csv_path.name)


def test_isic2017_label_without_image_and_image_without_label(isic2017_root, caplog):
    data = isic2017_root / "ISIC-2017_Training_Data"
    (data / "ISIC_0000002.jpg").unlink()
    shutil.copy(data / "ISIC_0000000.jpg", data / "ISIC_0000777.jpg")
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        idx = read_split("isic2017", isic2017_root, "train")
    assert [s.image_id for s in idx.samples] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000003",
                                                 "ISIC_0000004", "ISIC_0000005"]
    assert idx.labels() == [0, 0, 1, 0, 0]  # ISIC_0000003 keeps its own label: nothing shifted
    _assert_masks_paired(idx)
    reasons = dict(idx.skipped)
    assert reasons["ISIC_0000002"].startswith("label without image")
    assert reasons[str(data / "ISIC_0000777.jpg")].startswith("image without label")
    assert "ISIC_0000002" in caplog.text and "ISIC_0000777" in caplog.text


def test_isic2017_two_images_for_one_id(isic2017_root):
    data = isic2017_root / "ISIC-2017_Training_Data"
    Image.open(data / "ISIC_0000001.jpg").save(data / "ISIC_0000001.png")
    with pytest.raises(AttnMelError) as e:
        read_split("isic2017", isic2017_root, "train")
    _err(e, "ISIC_0000001")


def test_validate_skips_unreadable_images_and_rejects_bad_masks(isic2017_root, caplog):
    data = isic2017_root / "ISIC-2017_Training_Data"
    bad = data / "ISIC_0000003.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert len(read_split("isic2017", isic2017_root, "train").samples) == 6  # cheap: nothing decoded
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        idx = read_split("isic2017", isic2017_root, "train", validate=True)
    assert "ISIC_0000003" not in [s.image_id for s in idx.samples] and len(idx.samples) == 5
    assert any(k == str(bad) and r.startswith("unreadable") for k, r in idx.skipped)
    assert "ISIC_0000003.jpg" in caplog.text

    mask = isic2017_root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000004_segmentation.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(mask)
    with pytest.raises(AttnMelError) as e:
        read_split("isic2017", isic2017_root, "train", validate=True)
    assert "mask is 5x5" in _err(e, mask.name)
    mask.write_bytes(b"garbage")
    with pytest.raises(AttnMelError) as e:
        read_split("isic2017", isic2017_root, "train", validate=True)
    _err(e, mask.name)


def test_validate_accepts_non_binary_masks_with_a_warning(isic2017_root, caplog):
    mask = isic2017_root / "ISIC-2017_Validation_Part1_GroundTruth" / "ISIC_0000007_segmentation.png"
    w, h = Image.open(mask).size
    values = np.zeros((h, w), np.uint8)
    values[0, :3] = [100, 200, 129]
    Image.fromarray(values).save(mask)
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        idx = read_split("isic2017", isic2017_root, "val", validate=True)
    assert len(idx.samples) == 3 and "not strictly 0/255" in caplog.text
    assert load_mask(mask).sum() == 2


def test_nested_zip_folder(isic2017_root):
    outer = isic2017_root / "ISIC-2017_Validation_Data"
    tmp = isic2017_root / "tmp_move"
    outer.rename(tmp)
    outer.mkdir()
    tmp.rename(outer / "ISIC-2017_Validation_Data")
    assert len(read_split("isic2017", isic2017_root, "val").samples) == 3


# -- ISIC 2016 ---------------------------------------------------------------------------------

def _split_file(root, **opts):
    """Where the reader stores the drawn split of ``root`` (the cache folder: never under ``root``)."""
    f = read_split("isic2016", root, "train", **opts).split_file
    assert f is not None and f.is_file() and root.resolve() not in f.resolve().parents
    return f


def test_isic2016_val_split_stratified_written_and_deterministic(isic2016_root):
    before = sorted(p.name for p in isic2016_root.iterdir())
    train = read_split("isic2016", isic2016_root, "train")
    val = read_split("isic2016", isic2016_root, "val")
    test = read_split("isic2016", isic2016_root, "test")
    train_ids = {s.image_id for s in train.samples}
    val_ids = {s.image_id for s in val.samples}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 20
    assert sorted(val.labels()) == [0, 0, 0, 1]  # 20 % of 14 benign and of 6 malignant
    assert test.labels() == [0, 0, 0, 1, 1]  # 0.0/1.0 labels of the test CSV
    for idx in (train, val, test):
        _assert_masks_paired(idx)  # capital-S _Segmentation
    f = _split_file(isic2016_root)
    assert val.split_file == f and test.split_file is None  # the test split is the challenge's own
    assert sorted(p.name for p in isic2016_root.iterdir()) == before
    first = f.read_text()
    assert first.splitlines()[0] == "image_id,split" and len(first.splitlines()) == 21
    f.unlink()
    again = read_split("isic2016", isic2016_root, "val")
    assert {s.image_id for s in again.samples} == val_ids and f.read_text() == first


def test_isic2016_split_file_is_reused_as_edited(isic2016_root):
    val = read_split("isic2016", isic2016_root, "val")
    moved = val.samples[0].image_id
    f = _split_file(isic2016_root)
    f.write_text(f.read_text().replace(f"{moved},val", f"{moved},train"))
    assert moved not in {s.image_id for s in read_split("isic2016", isic2016_root, "val").samples}
    assert moved in {s.image_id for s in read_split("isic2016", isic2016_root, "train").samples}


@pytest.mark.parametrize("edit,problem", [
    (lambda t: t + "ISIC_0123456,val\n", "unknown image_id ISIC_0123456"),
    (lambda t: t + "ISIC_0000000,train\n", "duplicate image_id ISIC_0000000"),
    (lambda t: t.replace("ISIC_0000000,train", "ISIC_0000000,holdout")
     .replace("ISIC_0000000,val", "ISIC_0000000,holdout"), "holdout"),
    (lambda t: "\n".join(t.splitlines()[:-1]) + "\n", "not assigned a split"),
    (lambda t: t.replace("image_id,split", "id,split"), "missing column image_id"),
])
def test_isic2016_bad_split_file(isic2016_root, edit, problem):
    read_split("isic2016", isic2016_root, "train")
    f = _split_file(isic2016_root)
    f.write_text(edit(f.read_text()))
    with pytest.raises(AttnMelError) as e:
        read_split("isic2016", isic2016_root, "val")
    assert problem in _err(e, f.name)


def test_isic2016_other_fraction_gets_its_own_file(isic2016_root):
    read_split("isic2016", isic2016_root, "val")
    val = read_split("isic2016", isic2016_root, "val", val_fraction=0.5, seed=3)
    assert sorted(val.labels()) == [0] * 7 + [1] * 3
    assert val.split_file.name == "attnmel_val_split_val_fraction0.5_seed3.csv" and val.split_file.is_file()
    assert _split_file(isic2016_root).name == "attnmel_val_split.csv"
    with pytest.raises(AttnMelError, match="val_fraction"):
        read_split("isic2016", isic2016_root, "val", val_fraction=1.5)


def test_isic2016_split_is_stored_by_labels_content_never_in_the_root(isic2016_root, tmp_path):
    cache = tmp_path / "cache"
    before = {p: p.stat().st_mtime_ns for p in isic2016_root.rglob("*")}
    f = _split_file(isic2016_root, cache_dir=cache)
    assert cache in f.parents and {p: p.stat().st_mtime_ns for p in isic2016_root.rglob("*")} == before
    # A copy of the same data elsewhere shares the split; changed labels draw (and keep) another one.
    import shutil

    copy = shutil.copytree(isic2016_root, tmp_path / "elsewhere" / isic2016_root.name)
    assert _split_file(copy, cache_dir=cache) == f
    labels = copy / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
    labels.write_text(labels.read_text().replace("ISIC_0000003,benign", "ISIC_0000003,malignant"))
    g = _split_file(copy, cache_dir=cache)
    assert g != f and g.name == f.name and g.parent.parent == f.parent.parent


def test_isic2016_split_an_older_version_wrote_into_the_root_is_read(isic2016_root, tmp_path):
    val = {s.image_id for s in read_split("isic2016", isic2016_root, "val", cache_dir=tmp_path / "a").samples}
    legacy = isic2016_root / "attnmel_val_split.csv"
    moved = sorted(val)[0]
    legacy.write_text((tmp_path / "a").joinpath(next(p for p in (tmp_path / "a").rglob("*.csv"))).read_text()
                      .replace(f"{moved},val", f"{moved},train"))
    again = read_split("isic2016", isic2016_root, "val", cache_dir=tmp_path / "b")
    assert again.split_file == legacy and moved not in {s.image_id for s in again.samples}
    assert not (tmp_path / "b").exists()


def test_isic2016_bad_label(isic2016_root):
    csv_path = isic2016_root / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
    csv_path.write_text(csv_path.read_text().replace("ISIC_0000003,benign", "ISIC_0000003,maybe"))
    with pytest.raises(AttnMelError) as e:
        read_split("isic2016", isic2016_root, "train")
    assert "line 4" in _err(e, csv_path.name) and "maybe" in str(e.value)


# -- HAM10000 ----------------------------------------------------------------------------------

def _ham_splits(root, k=7):
    return {s: read_split("ham10000", root, s, num_classes=k) for s in ("train", "val", "test")}


def test_ham10000_splits_by_lesion(ham10000_root):
    splits = _ham_splits(ham10000_root)
    lesions = {name: {s.group for s in idx.samples} for name, idx in splits.items()}
    assert not (lesions["train"] & lesions["val"]) and not (lesions["train"] & lesions["test"])
    assert not (lesions["val"] & lesions["test"])
    ids = [s.image_id for idx in splits.values() for s in idx.samples]
    n_images = sum(1 + (c + j) % 3 for c in range(7) for j in range(5))
    assert len(ids) == len(set(ids)) == n_images
    for name, idx in splits.items():
        assert idx.class_names == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
        assert set(idx.labels()) == set(range(7)), name  # each class in each split: 1 of 5 lesions
        assert idx.has_masks
    meta = (ham10000_root / "HAM10000_metadata.csv").read_text().splitlines()[1:]
    dx = {row.split(",")[1]: row.split(",")[2] for row in meta}
    names = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]
    assert all(names[s.label] == dx[s.image_id] for idx in splits.values() for s in idx.samples)
    binary = read_split("ham10000", ham10000_root, "train")
    assert binary.class_names == ["other", "melanoma"]
    assert all((s.label == 1) == (dx[s.image_id] == "mel") for s in binary.samples)
    f = splits["train"].split_file
    assert f.read_text().startswith("lesion_id,split\n") and f.name == "attnmel_splits.csv"
    assert all(idx.split_file == f for idx in splits.values())
    assert not (ham10000_root / f.name).exists()  # never in the dataset folder


def test_ham10000_tab_and_comma_give_the_same_split(make_ham10000_tree, tmp_path):
    comma = make_ham10000_tree(tmp_path / "comma")
    tab = make_ham10000_tree(tmp_path / "tab", sep="\t", name="HAM10000_metadata")
    a, b = _ham_splits(comma), _ham_splits(tab)
    for name in a:
        assert [s.image_id for s in a[name].samples] == [s.image_id for s in b[name].samples]
        assert [s.group for s in a[name].samples] == [s.group for s in b[name].samples]


def test_ham10000_edited_split_cannot_separate_a_lesion(ham10000_root):
    f = _ham_splits(ham10000_root)["train"].split_file
    # the file assigns lesions, not images: one lesion, one split, whatever is edited
    text = f.read_text()
    line = next(ln for ln in text.splitlines()[1:] if ln.endswith(",test"))
    lesion = line.split(",")[0]
    f.write_text(text.replace(line, f"{lesion},train"))
    splits = _ham_splits(ham10000_root)
    assert lesion in {s.group for s in splits["train"].samples}
    assert lesion not in {s.group for idx in (splits["val"], splits["test"]) for s in idx.samples}


@pytest.mark.parametrize("edit,problem", [
    (lambda t: t.replace(",bkl,", ",xyz,", 1), "unknown dx 'xyz'"),
    (lambda t: t.replace("lesion_id,", "lesion,", 1), "missing column lesion_id"),
    (lambda t: t + t.splitlines()[1] + "\n", "duplicate id"),
])
def test_ham10000_bad_metadata(ham10000_root, edit, problem):
    meta = ham10000_root / "HAM10000_metadata.csv"
    meta.write_text(edit(meta.read_text()))
    with pytest.raises(AttnMelError) as e:
        read_split("ham10000", ham10000_root, "train")
    assert problem in _err(e, meta.name)


def test_ham10000_images_folder_and_missing_masks(make_ham10000_tree, tmp_path):
    root = make_ham10000_tree(masks=False)
    (root / "images").mkdir()
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        for p in (root / part).iterdir():
            p.rename(root / "images" / p.name)
        (root / part).rmdir()
    idx = read_split("ham10000", root, "val")
    assert idx.samples and all(s.mask is None for s in idx.samples)


# -- ISIC 2018 Task 1 --------------------------------------------------------------------------

def test_isic2018_task1(isic2018_root, caplog):
    idx = read_split("isic2018_task1", isic2018_root, "train")
    assert [s.image_id for s in idx.samples] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert idx.labels() == [0, 0, 0] and idx.has_masks
    _assert_masks_paired(idx)
    (isic2018_root / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0000003_segmentation.png").unlink()
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        val = read_split("isic2018_task1", isic2018_root, "val")
    assert [s.image_id for s in val.samples] == ["ISIC_0000004"] and "ISIC_0000003" in caplog.text
    shutil.rmtree(isic2018_root / "ISIC2018_Task1_Test_GroundTruth")
    with pytest.raises(AttnMelError) as e:
        read_split("isic2018_task1", isic2018_root, "test")
    _err(e, "ISIC2018_Task1_Test_GroundTruth")


def test_segmentation_masks_from_isic2016_and_isic2017(isic2016_root, isic2017_root):
    for dataset, root in (("isic2016", isic2016_root), ("isic2017", isic2017_root)):
        for split in ("train", "val", "test"):
            assert read_split(dataset, root, split).has_masks


# -- synthetic -----------------------------------------------------------------------------------

def test_synthetic_reads_through_the_isic2017_reader(synthetic_root):
    idx = read_split("synthetic", synthetic_root, "train")
    assert idx.dataset == "synthetic" and idx.has_masks and idx.has_dermo


def test_synthetic_incomplete_or_missing(tmp_path):
    (tmp_path / "attnmel_synthetic.json").write_text('{"complete": false}')
    with pytest.raises(AttnMelError, match="incomplete"):
        read_split("synthetic", tmp_path, "train")
    with pytest.raises(AttnMelError, match="attnmel data synth"):
        read_split("synthetic", tmp_path / "none", "train")


@pytest.mark.skipif(os.name != "posix", reason="symlink-free POSIX paths")
def test_errors_are_attnmel_errors_not_tracebacks(tmp_path):
    (tmp_path / "ISIC-2017_Training_Data").write_text("a file, not a folder")
    with pytest.raises(AttnMelError):
        read_split("isic2017", tmp_path, "train")


@pytest.mark.parametrize("dataset, builder, csv_glob", [
    ("isic2017", "make_isic2017_tree", "ISIC-2017_*_Part3_GroundTruth.csv"),
    ("isic2016", "make_isic2016_tree", "ISBI2016_ISIC_Part3_*_GroundTruth.csv"),
])
def test_part1_only_download_reads_for_segmentation(request, dataset, builder, csv_glob):
    from attnmel.data.readers import read_split

    root = request.getfixturevalue(builder)()
    with_labels = read_split(dataset, root, "test")
    for csv in root.glob(csv_glob):
        csv.unlink()
    with pytest.raises(AttnMelError, match="Part3.*file not found"):
        read_split(dataset, root, "test")
    index = read_split(dataset, root, "test", labels_optional=True)
    assert [s.image_id for s in index.samples] == [s.image_id for s in with_labels.samples]
    assert [s.mask for s in index.samples] == [s.mask for s in with_labels.samples]
    assert set(index.labels()) == {0}


def test_an_option_that_does_not_apply_is_refused_by_name(tmp_path):
    # data.split_file exists for isic2019/isic2020 only: on HAM10000 it used to vanish silently.
    with pytest.raises(AttnMelError) as e:
        read_split("ham10000", tmp_path, "train", split_file=tmp_path / "s.csv")
    assert "data.split_file does not apply to dataset ham10000" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(AttnMelError, match="data.val_fraction does not apply to dataset isic2017"):
        read_split("isic2017", tmp_path, "train", val_fraction=0.3)


def test_the_config_passes_only_the_options_a_user_set():
    from attnmel.config import defaults
    from attnmel.data.readers import options_from_config

    d = defaults()["data"]
    assert options_from_config("isic2017", d, d) == {}  # val_fraction at its default: not passed
    assert options_from_config("isic2016", d, d) == {"val_fraction": 0.2}
    assert options_from_config("ham10000", {**d, "split_file": "s.csv"}, d) == {"val_fraction": 0.2,
                                                                                  "split_file": "s.csv"}
