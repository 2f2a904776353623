"""`attnmel data synth | check | stats` through the command line: the numbers they print, computed here by hand."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from PIL import Image

from attnmel.cli import main

GROUND_TRUTH = {"train": "Training", "val": "Validation", "test": "Test_v2"}


def test_synth_then_check_reports_every_split(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--n", "30", "--size", "64", "--seed", "3"]) == 0
    assert (out / "ISIC-2017_Training_Part3_GroundTruth.csv").is_file()
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "synthetic", "--root", str(out)]) == 0
    text = capsys.readouterr().out
    row = r"│ (train|val|test)\s*│ (other|melanoma)\s*│\s*(\d+) │"
    printed = {(m[1], m[2]): int(m[3]) for m in re.finditer(row, text)}
    # By hand: the images per split and class in the ground-truth CSVs the generator wrote.
    want = {}
    for split, tag in GROUND_TRUTH.items():
        with open(out / f"ISIC-2017_{tag}_Part3_GroundTruth.csv", newline="") as f:
            mel = [float(r["melanoma"]) == 1.0 for r in csv.DictReader(f)]
        want[(split, "melanoma")], want[(split, "other")] = sum(mel), len(mel) - sum(mel)
    assert printed == want and sum(want.values()) == 30


def test_check_finds_a_corrupt_image(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--n", "20", "--size", "64"]) == 0
    victim = sorted((out / "ISIC-2017_Training_Data").glob("ISIC_*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "synthetic", "--root", str(out)]) == 1
    captured = capsys.readouterr()
    assert victim.name in captured.out + captured.err


def test_check_of_a_missing_root_is_one_line(tmp_path, capsys):
    assert main(["data", "check", "--dataset", "isic2017", "--root", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnmel: error:") and "\n" not in err and "nothing" in err


def test_stats_prints_mean_and_std(synthetic_root, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the preprocessing cache goes under the current folder
    assert main(["data", "stats", "--dataset", "synthetic", "--root", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    mean = [float(v) for v in re.search(r"mean: \[([^]]*)\]", out)[1].split(",")]
    std = [float(v) for v in re.search(r"std:  \[([^]]*)\]", out)[1].split(",")]
    # By hand: the training images with the default base step (the centred 0.8 square, bilinear to 256 px).
    with open(synthetic_root / "ISIC-2017_Training_Part3_GroundTruth.csv", newline="") as f:
        ids = [r["image_id"] for r in csv.DictReader(f)]
    px = []
    for i in ids:
        im = Image.open(synthetic_root / "ISIC-2017_Training_Data" / f"{i}.jpg").convert("RGB")
        w, h = im.size
        side = 0.8 * min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        px.append(np.asarray(im.resize((256, 256), Image.Resampling.BILINEAR, box=box), dtype=np.float64) / 255)
    px = np.stack(px).reshape(-1, 3)
    assert mean == pytest.approx(px.mean(axis=0).tolist(), abs=2e-4)
    assert std == pytest.approx(px.std(axis=0).tolist(), abs=2e-4)
