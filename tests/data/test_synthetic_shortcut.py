"""The shortcut benchmark of the synthetic generator (issue 9): artefact kinds with exact masks, rates per
split and condition, the extra test splits, and one-line errors for impossible options."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from attnmel.cli import main
from attnmel.data.readers import read_split
from attnmel.data.synthetic import ARTEFACTS, Shortcut, draw, generate, options_from_config, plan
from attnmel.errors import AttnMelError


@pytest.mark.parametrize("kind", ARTEFACTS)
def test_artefact_mask_is_exactly_the_pixels_it_changed(kind):
    plans = plan(30, 4, True, Shortcut(artefact=kind, melanoma_rate=1.0, benign_rate=1.0))
    for p in plans[:6]:
        with_it, lesion, _, mask = draw(p, 48, 4, kind, 0.3, clutter=False)
        without, lesion0, _, none = draw(replace(p, artefact=False), 48, 4, kind, 0.3, clutter=False)
        changed = (with_it != without).any(axis=-1)
        assert p.artefact and mask.any() and not none.any()
        assert np.array_equal(changed, mask)  # every changed pixel is in the mask, every mask pixel changed
        assert np.array_equal(lesion, lesion0) and not (mask & lesion).any()  # never on the lesion


def test_clutter_is_in_the_mask_too():
    p = next(q for q in plan(60, 1, False) if q.split == "train")
    found = False
    for q in [replace(p, lesion=i) for i in range(12)]:
        img, _, _, mask = draw(q, 48, 1, "sticker", 0.0, clutter=True)
        clean, _, _, _ = draw(q, 48, 1, "sticker", 0.0, clutter=False)
        assert np.array_equal((img != clean).any(-1), mask)
        found |= bool(mask.any())
    assert found  # 20 % rulers, 30 % lens corners: some of 12 images have one


def _read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_rates_per_split_and_condition_in_the_written_masks(tmp_path):
    sc = Shortcut(artefact="ruler", melanoma_rate=0.8, benign_rate=0.25, val="shortcut", test="balanced",
                  extra_tests=("reversed", "absent"))
    root = generate(tmp_path / "syn", n=50, size=32, seed=2, spurious=True, progress=False, shortcut=sc,
                    clutter=False)
    want = {"train": (0.25, 0.8), "val": (0.25, 0.8), "test": (0.5, 0.5), "test_reversed": (0.8, 0.0),
            "test_absent": (0.0, 0.0)}
    tags = {"train": "Training", "val": "Validation", "test": "Test_v2", "test_reversed": "Test_Reversed",
            "test_absent": "Test_Absent"}
    lesions = {}
    for split, (r_ben, r_mel) in want.items():
        idx = read_split("synthetic", root, split)
        carried = {0: 0, 1: 0}
        for s in idx.samples:
            m = _read_png(root / f"ISIC-2017_{tags[split]}_Artefact_GroundTruth" / f"{s.image_id}_artefact.png")
            assert m.shape == (32, 32) and set(np.unique(m).tolist()) <= {0, 255}
            assert not ((m > 0) & (_read_png(s.mask) > 0)).any()
            carried[s.label] += int(m.any())
        n_mel = sum(idx.labels())
        n_ben = len(idx.samples) - n_mel
        assert carried == {0: int(np.floor(n_ben * r_ben + 0.5)), 1: int(np.floor(n_mel * r_mel + 0.5))}, split
        if split.startswith("test"):
            lesions[split] = [(_read_png(s.mask).tobytes(), s.label) for s in idx.samples]
    # the extra test splits show exactly the test split's lesions, in the same order
    assert lesions["test_reversed"] == lesions["test"] == lesions["test_absent"]
    with open(root / "attnmel_synthetic_truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["split"] == "test_reversed" for r in rows) == len(lesions["test"])
    with pytest.raises(AttnMelError, match="unknown split"):
        read_split("isic2017", root, "test_reversed")  # the extra splits are the synthetic set's only


def test_lesions_do_not_depend_on_the_artefact_settings(tmp_path):
    a = generate(tmp_path / "a", n=20, size=32, seed=3, spurious=True, progress=False,
                 shortcut=Shortcut(melanoma_rate=1.0, benign_rate=0.0))
    b = generate(tmp_path / "b", n=20, size=32, seed=3, spurious=True, progress=False,
                 shortcut=Shortcut(artefact="ink", train="absent"))
    masks = sorted((a / "ISIC-2017_Training_Part1_GroundTruth").iterdir())
    assert masks and all(m.read_bytes() == (b / m.parent.name / m.name).read_bytes() for m in masks)


@pytest.mark.parametrize("opts, needle", [
    ({"melanoma_rate": 1.5}, "melanoma_rate must be a share in [0, 1]"),
    ({"benign_rate": -0.1}, "benign_rate must be a share in [0, 1]"),
    ({"artefact": "tattoo"}, "unknown artefact kind 'tattoo'"),
    ({"test": "upside_down"}, "unknown condition 'upside_down'"),
    ({"extra_tests": ["reversed", "reversed"]}, "lists a condition twice"),
    ({"difficulty": 2}, "difficulty must be in [0, 1]"),
    ({"colour": "red"}, "unknown key(s) colour"),
])
def test_impossible_options_give_one_line_errors(tmp_path, opts, needle):
    with pytest.raises(AttnMelError) as e:
        generate(tmp_path / "x", n=10, size=32, progress=False, **options_from_config(opts))
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


def test_cli_synth_options_and_bad_value(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--n", "20", "--size", "32", "--spurious",
                 "--artefact", "bubbles", "--melanoma-rate", "1", "--benign-rate", "0", "--val", "shortcut",
                 "--extra-tests", "reversed", "--difficulty", "0.5"]) == 0
    idx = read_split("synthetic", out, "test_reversed")
    assert all(s.label == 0 for s in idx.samples
               if _read_png(out / "ISIC-2017_Test_Reversed_Artefact_GroundTruth" / f"{s.image_id}_artefact.png").any())
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(tmp_path / "bad"), "--benign-rate", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnmel: error: data.synthetic.benign_rate") and "\n" not in err
