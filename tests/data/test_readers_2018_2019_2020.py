"""Readers of ISIC 2018 Task 3, ISIC 2019 and ISIC 2020 on small fake trees in the official layouts, their
drawn splits (never a lesion or a patient in two splits), user-given split files and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnmel.data.readers import read_split
from attnmel.errors import AttnMelError

T3 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
C19 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNMEL_CACHE_DIR", str(tmp_path / "cache"))


def _image(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8 + i % 3, 10 + i % 4, 3), 40 + i % 200, np.uint8)).save(path)


def _onehot(classes: list[str], k: int) -> str:
    return ",".join("1.0" if j == k else "0.0" for j in range(len(classes)))


def build_task3(root: Path, counts=None, in_folder: bool = False, eol: str = "\r\n") -> Path:
    """Official Task 3 splits; image i has class i % 7. The training CSV sits in its zip folder when asked."""
    counts = counts or {"Training": 14, "Validation": 7, "Test": 7}
    i = 0
    for tag, n in counts.items():
        rows = ["image," + ",".join(T3)]
        for _ in range(n):
            _image(root / f"ISIC2018_Task3_{tag}_Input" / f"ISIC_{i:07d}.jpg", i)
            rows.append(f"ISIC_{i:07d},{_onehot(T3, i % 7)}")
            i += 1
        name = f"ISIC2018_Task3_{tag}_GroundTruth"
        path = root / name / f"{name}.csv" if in_folder and tag == "Training" else root / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((eol.join(rows) + eol).encode())
    return root


def test_task3_official_splits_7_and_2_classes(tmp_path):
    root = build_task3(tmp_path / "t3", in_folder=True)
    train = read_split("isic2018_task3", root, "train", num_classes=7)
    assert len(train.samples) == 14 and train.class_names == T3
    assert [s.label for s in train.samples] == [i % 7 for i in range(14)]
    val = read_split("isic2018_task3", root, "val", num_classes=2)
    assert [s.label for s in val.samples] == [int(i % 7 == 0) for i in range(14, 21)]
    assert len(read_split("isic2018_task3", root, "test").samples) == 7


def test_task3_row_that_is_not_one_hot_is_an_error_naming_the_file(tmp_path):
    root = build_task3(tmp_path / "t3", {"Training": 3})
    csv = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    lines = csv.read_text().splitlines()
    lines[2] = "ISIC_0000001,1.0,1.0,0.0,0.0,0.0,0.0,0.0"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(AttnMelError) as e:
        read_split("isic2018_task3", root, "train")
    msg = str(e.value)
    assert msg.startswith(str(csv)) and "line 3" in msg and "not one-hot" in msg and "MEL, NV" in msg
    lines[2] = "ISIC_0000001,0.0,0.0,0.0,0.0,0.0,0.0,0.0"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(AttnMelError, match="line 3.*no class set"):
        read_split("isic2018_task3", root, "train")
    lines[2] = "ISIC_0000001,0.5,0.5,0.0,0.0,0.0,0.0,0.0"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(AttnMelError, match="line 3: MEL value '0.5' is not 0 or 1"):
        read_split("isic2018_task3", root, "train")


def test_task3_training_reads_the_ham10000_image_folders(tmp_path):
    root = build_task3(tmp_path / "t3", {"Training": 4})
    (root / "ISIC2018_Task3_Training_Input").rename(root / "HAM10000_images_part_1")
    assert len(read_split("isic2018_task3", root, "train").samples) == 4


# -- ISIC 2019 ---------------------------------------------------------------------------------------------
def build_2019(root: Path, n_lesions: int = 24, unk_row: bool = False) -> Path:
    """Lesion j has 1-3 images of class j % 8; every fourth lesion's images carry no lesion_id (MSK-like)."""
    gt, meta = ["image," + ",".join(C19)], ["image,age_approx,anatom_site_general,lesion_id,sex"]
    i = 0
    for j in range(n_lesions):
        for _ in range(1 + j % 3):
            name = f"ISIC_{i:07d}" + ("_downsampled" if j % 5 == 4 else "")
            _image(root / "ISIC_2019_Training_Input" / f"{name}.jpg", i)
            gt.append(f"{name},{_onehot(C19, 8 if unk_row and i == 0 else j % 8)}")
            meta.append(f"{name},45.0,anterior torso,{'' if j % 4 == 3 else f'BCN_{j:07d}'},male")
            i += 1
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(gt) + "\n")
    (root / "ISIC_2019_Training_Metadata.csv").write_text("\n".join(meta) + "\n")
    return root


def test_isic2019_splits_never_share_a_lesion(tmp_path):
    root = build_2019(tmp_path / "i19")
    seen: dict[str, str] = {}
    total = 0
    for split in ("train", "val", "test"):
        index = read_split("isic2019", root, split, num_classes=8)
        total += len(index.samples)
        assert index.class_names == C19[:8]
        for s in index.samples:
            assert seen.setdefault(s.group, split) == split, s.group
    assert total == sum(1 + j % 3 for j in range(24))
    # The draw is kept (every run uses the same split), in the cache folder, not in the dataset folder.
    assert index.split_file.is_file() and not (root / "attnmel_splits.csv").exists()
    first = [s.image_id for s in read_split("isic2019", root, "val").samples]
    assert first == [s.image_id for s in read_split("isic2019", root, "val").samples]
    lines = (root / "ISIC_2019_Training_Metadata.csv").read_text().split("\n")[1:-1]
    meta = dict(line.split(",")[::3][:2] for line in lines)
    samples = [s for sp in ("train", "val", "test") for s in read_split("isic2019", root, sp).samples]
    no_lesion = [s for s in samples if not meta[s.image_id]]
    assert no_lesion and all(s.group == s.image_id for s in no_lesion)  # no lesion_id: a group of its own
    assert all(s.group == meta[s.image_id] for s in samples if meta[s.image_id])


def test_isic2019_unk_label_is_an_error(tmp_path):
    root = build_2019(tmp_path / "i19", unk_row=True)
    with pytest.raises(AttnMelError, match="ISIC_2019_Training_GroundTruth.csv: 1 image.*UNK"):
        read_split("isic2019", root, "train")


def test_user_split_file_with_a_lesion_in_two_splits_is_an_error(tmp_path):
    root = build_2019(tmp_path / "i19", n_lesions=6)
    # Lesion 1 (BCN_0000001) has images ISIC_0000001 and ISIC_0000002.
    ids = [line.split(",")[0] for line in (root / "ISIC_2019_Training_GroundTruth.csv").read_text().split()[1:]]
    rows = ["image,split"] + [f"{k},{'val' if k == 'ISIC_0000002' else 'train'}" for k in ids]
    split_file = tmp_path / "my_split.csv"
    split_file.write_text("\n".join(rows) + "\n")
    with pytest.raises(AttnMelError) as e:
        read_split("isic2019", root, "train", split_file=split_file)
    assert str(e.value).startswith(str(split_file)) and "BCN_0000001 is in two splits" in str(e.value)
    by_lesion = tmp_path / "by_lesion.csv"
    by_lesion.write_text("lesion_id,split\nBCN_0000000,val\nBCN_0000001,test\nBCN_0000002,train\n"
                         "ISIC_0000006,train\nBCN_0000004,train\nBCN_0000005,train\n")
    val = read_split("isic2019", root, "val", split_file=by_lesion)
    assert [s.image_id for s in val.samples] == ["ISIC_0000000"]
    assert [s.image_id for s in read_split("isic2019", root, "test", split_file=by_lesion).samples] == \
        ["ISIC_0000001", "ISIC_0000002"]


# -- ISIC 2020 ---------------------------------------------------------------------------------------------
def build_2020(root: Path, patients: int = 60, images_per: int = 4, positives: tuple[int, ...] = (3, 17, 30, 44, 51),
               folder: str = "train") -> Path:
    """``patients`` x ``images_per`` images; one melanoma for each patient in ``positives`` (~2 %)."""
    rows = ["image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target"]
    i = 0
    for p in range(patients):
        for k in range(images_per):
            name = f"ISIC_{i:07d}"
            _image(root / folder / f"{name}.jpg", i)
            mel = p in positives and k == 0
            rows.append(f"{name},IP_{p:07d},male,45.0,torso,{'melanoma' if mel else 'nevus'},"
                        f"{'malignant' if mel else 'benign'},{int(mel)}")
            i += 1
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def test_isic2020_splits_by_patient_with_positives_in_each(tmp_path):
    root = build_2020(tmp_path / "i20")
    patients: dict[str, str] = {}
    total, pos = 0, 0
    for split in ("train", "val", "test"):
        index = read_split("isic2020", root, split)
        labels = index.labels()
        total += len(labels)
        pos += sum(labels)
        assert sum(labels) >= 1, split  # stratified by patient: a rare class still reaches every split
        for s in index.samples:
            assert patients.setdefault(s.group, split) == split, s.group
    assert total == 240 and pos == 5 and pos / total == pytest.approx(0.0208, abs=1e-3)


def test_isic2020_reads_the_isic_archive_names(tmp_path):
    root = build_2020(tmp_path / "i20", patients=10, positives=(1, 5), folder="ISIC_2020_Training_JPEG/train")
    (root / "train.csv").rename(root / "ISIC_2020_Training_GroundTruth_v2.csv")
    n = sum(len(read_split("isic2020", root, s).samples) for s in ("train", "val", "test"))
    assert n == 40


def test_isic2020_target_that_is_not_0_or_1_is_an_error_naming_the_file(tmp_path):
    root = build_2020(tmp_path / "i20", patients=10, positives=(1,))
    csv = root / "train.csv"
    lines = csv.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",2"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(AttnMelError) as e:
        read_split("isic2020", root, "train")
    assert str(e.value) == f"{csv}: line 6: target value '2' is not 0 or 1"


def test_isic2020_user_split_with_a_patient_in_two_splits_is_an_error(tmp_path):
    root = build_2020(tmp_path / "i20", patients=5, positives=(1,))
    rows = ["image_name,split"] + [f"ISIC_{i:07d},{'test' if i == 6 else 'train'}" for i in range(20)]
    split_file = tmp_path / "folds.csv"
    split_file.write_text("\n".join(rows) + "\n")
    with pytest.raises(AttnMelError) as e:
        read_split("isic2020", root, "train", split_file=split_file)
    msg = str(e.value)
    assert msg.startswith(f"{split_file}: line ") and "patient_id IP_0000001 is in two splits" in msg
    assert "\n" not in msg


def test_data_check_on_the_new_readers(tmp_path):
    from attnmel.data.check import check_dataset

    for dataset, root in (("isic2018_task3", build_task3(tmp_path / "t3")), ("isic2019", build_2019(tmp_path / "i19")),
                          ("isic2020", build_2020(tmp_path / "i20"))):
        result = check_dataset(dataset, root)
        assert result.ok, (dataset, result.problems())
        assert sum(r["images"] for r in result.rows()) == len(list(root.rglob("*.jpg")))
        assert all(r["with_masks"] == 0 for r in result.rows())  # no lesion masks: data.masks serves
