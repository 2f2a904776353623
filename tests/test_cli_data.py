"""`attnmel data synth | check | stats` through the command line."""



from attnmel.cli import main


def test_synth_then_check_reports_every_split(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--n", "30", "--size", "64", "--seed", "3"]) == 0
    assert (out / "ISIC-2017_Training_Part3_GroundTruth.csv").is_file()
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "synthetic", "--root", str(out)]) == 0
    text = capsys.readouterr().out
    for split in ("train", "val", "test"):
        assert split in text
    assert "melanoma" in text


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


def test_stats_prints_mean_and_std(synthetic_root, capsys):
    assert main(["data", "stats", "--dataset", "synthetic", "--root", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    assert "mean: [" in out and "std:  [" in out
