"""Issue 13: bad inputs and faults end in one line (or a warning), and earlier results survive.

Config values, OS errors, resume, Ctrl-C, two processes on one run folder, console markup, overrides
after options, and data that used to be accepted in silence. The full-disk and read-only cases mount a
small tmpfs and run only as root (skipped otherwise).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnmel import config as config_mod
from attnmel.cli import main as cli_main
from attnmel.errors import AttnMelError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def tiny_overrides(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"data.root={root}", f"out_dir={out}", f"name={name}", "data.image_size=64", "data.resize=64",
            "data.batch_size=8", "data.num_workers=0", f"data.cache_dir={out / 'cache'}", "trainer.max_epochs=1",
            "trainer.progress_bar=false", "model.width=0.125", "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1", *extra]


def tiny_cfg(root: Path, out: Path, name: str, *extra: str) -> dict:
    return config_mod.load_config(EXPERIMENTS / "synthetic.yaml", tiny_overrides(root, out, name, *extra))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnmel: error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def trained_run(synthetic_root, tmp_path_factory) -> Path:
    """One trained epoch (read-only: tests copy it before changing anything); for the slow tests."""
    from attnmel.train.run import train

    out = tmp_path_factory.mktemp("robust_runs")
    return train(tiny_cfg(synthetic_root, out, "one"), evaluate_after=False)


@pytest.fixture(scope="module")
def made_run(synthetic_root, tmp_path_factory) -> Path:
    """A run folder in the real format without training (untrained weights): fast, for the refusals and the
    read-only commands. Read-only: tests copy it before changing anything."""
    from attnmel.train.module import ClassificationModule

    out = tmp_path_factory.mktemp("robust_made")
    cfg = tiny_cfg(synthetic_root, out, "made")
    run = out / "made"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(config_mod.dump(cfg))
    module = ClassificationModule(cfg, ["other", "melanoma"], 1)
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 2}
    module.on_save_checkpoint(ckpt)
    for name in ("best.ckpt", "last.ckpt"):
        torch.save(ckpt, run / "checkpoints" / name)
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".attnmel.lock"))
    return dest


def csv_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "logs" / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted({int(float(r["epoch"])) for r in rows if r.get("epoch") and r.get("val_auc")})


# -- 1. config values --------------------------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("trainer.max_epochs=abc", "trainer.max_epochs"), ("data.oversample=abc", "data.oversample"),
    ("seed=abc", "seed"), ("data.batch_size=-4", "data.batch_size"), ("data.batch_size=0", "data.batch_size"),
    ("trainer.precision=99", "trainer.precision"), ("data.resize=abc", "data.resize"),
    ("data.num_workers=-1", "data.num_workers"), ("optim.lr=-1", "optim.lr"), ("data.root=", "data.root"),
    ("trainer.devices=0", "trainer.devices"), ("data.center_crop=2", "data.center_crop"),
])
def test_every_config_value_is_type_and_range_checked(override, key):
    with pytest.raises(AttnMelError) as e:
        config_mod.load_config(EXPERIMENTS / "synthetic.yaml", [override])
    msg = str(e.value)
    assert msg.startswith(f"config: {key} must be ") and "\n" not in msg


def test_every_key_of_defaults_yaml_has_a_check():
    # A key added to defaults.yaml without a type/range check would slip through validation unchecked.
    defaults = config_mod.defaults()
    free_form = {k for k in config_mod.leaf_keys(defaults) if config_mod.get(defaults, k) == {}}
    assert set(config_mod.CHECKS) == set(config_mod.leaf_keys(defaults)) - free_form
    config_mod.validate(config_mod.load_config(None))  # and the defaults pass their own checks


def test_a_number_yaml_reads_as_a_string_is_accepted():
    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml", ["optim.lr=1e-3"])
    assert cfg["optim"]["lr"] == pytest.approx(0.001)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_trainer_settings_lightning_refuses_name_the_key(tmp_path):
    from attnmel.train.run import build_trainer

    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml", ["trainer.accelerator=gpu"])
    with pytest.raises(AttnMelError) as e:
        build_trainer(cfg, tmp_path)
    assert str(e.value).startswith("config: trainer.accelerator='gpu'") and "\n" not in str(e.value)


# -- 2. operating-system errors ------------------------------------------------------------------
def test_out_dir_that_is_a_file_is_one_line(synthetic_root, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert cli_main(["train", "--config", str(EXPERIMENTS / "synthetic.yaml"),
                     *tiny_overrides(synthetic_root, blocker, "r")]) == 2
    err = one_line_error(capsys)
    assert str(blocker) in err


def test_overlay_pointing_at_a_file_is_one_line(made_run, synthetic_root, tmp_path, capsys):
    image = sorted((synthetic_root / "ISIC-2017_Test_v2_Data").glob("ISIC_*[0-9].jpg"))[0]
    blocker = tmp_path / "overlay.png"
    blocker.write_text("x")
    assert cli_main(["predict", str(made_run), str(image), "--overlay", str(blocker)]) == 2
    assert str(blocker) in one_line_error(capsys)


def test_os_error_message_names_the_path():
    from attnmel.cli import os_error_message

    assert os_error_message(OSError(28, "No space left on device", "/x/metrics.json")) == \
        "/x/metrics.json: No space left on device"


# -- 4. resume -----------------------------------------------------------------------------------
def test_resume_refuses_a_key_it_cannot_change(made_run, tmp_path, capsys):
    run = copy_run(made_run, tmp_path / "r")
    assert cli_main(["train", "--resume", str(run), "trainer.max_epochs=2", "optim.lr=0.5"]) == 2
    err = one_line_error(capsys)
    assert "optim.lr cannot change when resuming" in err and "trainer.max_epochs" in err
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # nothing trained


def test_resume_checks_values_too(made_run, tmp_path, capsys):
    run = copy_run(made_run, tmp_path / "r")
    assert cli_main(["train", "--resume", str(run), "trainer.max_epochs=abc"]) == 2
    assert "trainer.max_epochs must be an integer" in one_line_error(capsys)


def test_resume_after_config_yaml_was_edited_to_another_architecture(made_run, tmp_path, capsys):
    run = copy_run(made_run, tmp_path / "r")
    cfg = config_mod.read_yaml(run / "config.yaml")
    cfg["model"]["name"] = "vgg16"
    (run / "config.yaml").write_text(config_mod.dump(cfg))
    assert cli_main(["train", "--resume", str(run), "trainer.max_epochs=2"]) == 2
    err = one_line_error(capsys)
    assert "config.yaml: model.name cannot change when resuming" in err and "'attnmel'" in err


def test_config_with_resume_is_refused(made_run, tmp_path, capsys):
    run = copy_run(made_run, tmp_path / "r")
    assert cli_main(["train", "--config", str(EXPERIMENTS / "synthetic.yaml"), "--resume", str(run)]) == 2
    assert "--config and --resume do not combine" in one_line_error(capsys)


def test_resume_from_a_last_ckpt_that_is_not_plain_data(made_run, tmp_path, capsys):
    import argparse

    run = copy_run(made_run, tmp_path / "r")
    torch.save({"state_dict": {}, "attnmel": argparse.Namespace(x=1)}, run / "checkpoints" / "last.ckpt")
    assert cli_main(["train", "--resume", str(run), "trainer.max_epochs=2"]) == 2
    assert "last.ckpt: not a readable AttnMel checkpoint" in one_line_error(capsys)


@pytest.mark.slow
def test_resume_of_a_moved_run_keeps_its_best_score_and_appends_the_csv_log(trained_run, tmp_path):
    moved = copy_run(trained_run, tmp_path / "elsewhere" / "moved")
    last = moved / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    # Epoch 0 scored better than any AUC can (as if a later epoch were worse): best.ckpt must stay epoch 0.
    (key,) = [k for k in ckpt["callbacks"] if "val_auc" in k]
    ckpt["callbacks"][key]["best_model_score"] = torch.tensor(1.5)
    torch.save(ckpt, last)
    assert csv_epochs(moved) == [0]
    assert cli_main(["train", "--resume", str(moved), "trainer.max_epochs=2", "data.num_workers=0"]) == 0
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert torch.load(moved / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] == 0
    assert csv_epochs(moved) == [0, 1]  # the epoch before the resume is still in the log


# -- 5. Ctrl-C -----------------------------------------------------------------------------------
def _train_interrupted_at(epoch: int, root: Path, out: Path, monkeypatch) -> int:
    import signal

    from attnmel.train import module as module_mod

    original = module_mod.ClassificationModule.training_step

    def interrupted(self, batch, batch_idx):
        if self.current_epoch == epoch:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_mod.ClassificationModule, "training_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    try:
        return cli_main(["train", "--config", str(EXPERIMENTS / "synthetic.yaml"),
                         *tiny_overrides(root, out, "c", "trainer.max_epochs=3")])
    finally:
        signal.signal(signal.SIGINT, handler)


def test_ctrl_c_exits_130_with_a_message(synthetic_root, tmp_path, capsys, monkeypatch):
    assert _train_interrupted_at(0, synthetic_root, tmp_path, monkeypatch) == 130
    err = capsys.readouterr().err
    assert "attnmel: interrupted: " in err and "before the first epoch finished" in err


@pytest.mark.slow
def test_ctrl_c_after_an_epoch_leaves_a_resumable_checkpoint(synthetic_root, tmp_path, capsys, monkeypatch):
    from attnmel.train.rundir import read_checkpoint

    assert _train_interrupted_at(1, synthetic_root, tmp_path, monkeypatch) == 130
    assert f"--resume {tmp_path / 'c'}" in capsys.readouterr().err
    assert read_checkpoint(tmp_path / "c" / "checkpoints" / "last.ckpt")["epoch"] == 0
    monkeypatch.undo()
    assert cli_main(["train", "--resume", str(tmp_path / "c"), "trainer.max_epochs=2"]) == 0
    assert read_checkpoint(tmp_path / "c" / "checkpoints" / "last.ckpt")["epoch"] == 1


# -- 6. two processes, one run folder -------------------------------------------------------------
def test_a_second_process_on_the_same_run_folder_is_refused(synthetic_root, tmp_path, capsys):
    from attnmel.train.rundir import LOCK

    run = tmp_path / "busy"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(run / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli_main(["train", "--config", str(EXPERIMENTS / "synthetic.yaml"),
                         *tiny_overrides(synthetic_root, tmp_path, "busy")]) == 2
        assert "in use by another attnmel process" in one_line_error(capsys)
        assert not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()


# -- 8 and 9. console markup in paths; overrides after options --------------------------------------
def test_markup_in_a_dataset_root_is_printed_verbatim(make_isic2017_tree, tmp_path):
    import io

    from rich.console import Console

    from attnmel.data.check import run_check

    root = make_isic2017_tree(tmp_path / "x[/bold]y")
    buf = io.StringIO()
    assert run_check("isic2017", root, console=Console(file=buf, width=400)) == 0
    assert str(root) in "".join(buf.getvalue().split())  # printed as written (the title folds the path)


def test_sweep_takes_overrides_after_options_and_prints_markup_verbatim(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base: {{isic2017: {EXPERIMENTS / 'isic2017.yaml'}}}\nseeds: [0]\narms:\n  - name: a\n")
    out = tmp_path / "out[/bold]"
    missing = tmp_path / "no[/red]data"
    # The Makefile's `make sweep DATASET=isic2017 ROOT=...` command line: an override after the options.
    code = cli_main(["sweep", str(sweep), "--dataset", "isic2017", "--out", str(out), f"data.root={missing}"])
    err = capsys.readouterr().err
    assert code == 1  # the one run fails: its data root does not exist
    assert str(missing) in err.replace("\n", "") and "out[/bold]" in err.replace("\n", "")
    assert "data root not found" in (out / "s" / "a" / "seed0" / "error.txt").read_text() or \
        str(missing) in (out / "s" / "a" / "seed0" / "error.txt").read_text()


def test_unknown_arguments_are_still_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["sweep", "x.yaml", "--dataset", "isic2017", "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


# -- 10. bad data --------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png48(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    return path


def test_48_bit_png_warns(tmp_path, caplog):
    from attnmel.data.images import load_image

    arr = np.full((4, 5, 3), 40000, dtype=np.uint16)
    p = write_png48(tmp_path / "deep.png", arr)
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        img = load_image(p)
    assert img.shape == (4, 5, 3) and int(img[0, 0, 0]) == 40000 >> 8
    assert "48-bit RGB" in caplog.text and str(p) in caplog.text


@pytest.mark.parametrize("values", [(0, 100), (0, 76)])
def test_a_mask_with_no_value_above_128_warns(tmp_path, caplog, values):
    from attnmel.data.images import load_mask

    m = np.full((6, 6), values[0], np.uint8)
    m[2:4, 2:4] = values[1]
    Image.fromarray(m).save(tmp_path / "m.png")
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        assert not load_mask(tmp_path / "m.png").any()
    assert "none above 128" in caplog.text


def test_a_red_lesion_on_an_rgb_mask_warns(tmp_path, caplog):
    from attnmel.data.images import load_mask

    m = np.zeros((6, 6, 3), np.uint8)
    m[2:4, 2:4, 0] = 255  # gray value 76
    Image.fromarray(m).save(tmp_path / "m.png")
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        load_mask(tmp_path / "m.png")
    assert "up to 76, none above 128" in caplog.text


def _first(root: Path, folder: str, pattern: str) -> Path:
    return sorted((root / folder).glob(pattern))[0]


def test_data_check_errors_on_an_empty_lesion_mask_and_warns_on_low_and_tiny(make_isic2017_tree, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal: each problem is still one line, its path whole
    root = make_isic2017_tree()
    empty = _first(root, "ISIC-2017_Training_Part1_GroundTruth", "*.png")
    w, h = Image.open(empty).size
    Image.fromarray(np.zeros((h, w), np.uint8)).save(empty)
    low = sorted((root / "ISIC-2017_Validation_Part1_GroundTruth").glob("*.png"))[0]
    Image.fromarray(np.where(np.asarray(Image.open(low)) > 0, 100, 0).astype(np.uint8)).save(low)
    assert cli_main(["data", "check", "--dataset", "isic2017", "--root", str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any("lesion mask is empty" in line and str(empty) in line for line in lines)
    out = " ".join(lines)
    assert "no value above 128" in out and low.name in out
    assert "under 32 px on the short side" in out  # the fixture's images are 8-20 px


def test_training_refuses_an_empty_lesion_mask(tmp_path):
    from attnmel.data.cache import SourceFiles, load_preprocessed
    from attnmel.data.transforms import BaseSpec

    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "a_segmentation.png")
    src = SourceFiles("a", tmp_path / "a.jpg", tmp_path / "a_segmentation.png")
    with pytest.raises(AttnMelError, match="a_segmentation.png: lesion mask is empty"):
        load_preprocessed(src, BaseSpec(resize=32))


def test_training_warns_about_an_image_far_below_the_training_size(tmp_path, caplog):
    from attnmel.data import cache as cache_mod
    from attnmel.data.transforms import BaseSpec

    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(tmp_path / "dot.png")
    with caplog.at_level(logging.WARNING, logger="attnmel.data"):
        img, _, _ = cache_mod.load_preprocessed(cache_mod.SourceFiles("dot", tmp_path / "dot.png"), BaseSpec(resize=64))
    assert img.shape == (64, 64, 3) and "dot.png: image is 1x1 px, far below data.resize=64" in caplog.text


def test_features_json_without_its_superpixel_map_is_reported(make_isic2017_tree, capsys):
    root = make_isic2017_tree()
    sp = _first(root, "ISIC-2017_Training_Data", "*_superpixels.png")
    sp.unlink()
    assert cli_main(["data", "check", "--dataset", "isic2017", "--root", str(root)]) == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert sp.name in out and "file not found" in out


def test_wrong_size_mask_is_not_also_reported_as_missing(make_isic2017_tree, capsys):
    from attnmel.data.check import check_dataset

    root = make_isic2017_tree()
    mask = _first(root, "ISIC-2017_Training_Part1_GroundTruth", "*.png")
    Image.fromarray(np.full((3, 3), 255, np.uint8)).save(mask)
    problems = check_dataset("isic2017", root).problems()
    assert any("mask is 3x3 but its image is" in p for p in problems)
    assert not any("without mask" in p for p in problems), problems


def test_data_synth_over_an_existing_set_needs_force(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["data", "synth", "--out", str(out), "--n", "10", "--size", "32"]
    assert cli_main(args) == 0
    mine = out / "my_notes.txt"
    mine.write_text("keep me")
    capsys.readouterr()
    assert cli_main(args) == 2
    assert "--force" in one_line_error(capsys) and mine.read_text() == "keep me"
    assert cli_main([*args, "--force"]) == 0


# -- minor ---------------------------------------------------------------------------------------
def test_predict_on_a_folder_predicts_its_images(made_run, synthetic_root, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = sorted((synthetic_root / "ISIC-2017_Test_v2_Data").glob("ISIC_*[0-9].jpg"))[:2]
    for p in images:
        shutil.copy(p, folder / p.name)
    sp = next((synthetic_root / "ISIC-2017_Test_v2_Data").glob("*_superpixels.png"))
    shutil.copy(sp, folder / sp.name)  # not an image to classify
    assert cli_main(["predict", str(made_run), str(folder)]) == 0
    out = capsys.readouterr().out
    assert all(p.name in out or p.stem in out for p in images) and "superpixels" not in out


def test_read_commands_apply_allowed_config_yaml_edits_and_warn_about_others(made_run, synthetic_root, tmp_path,
                                                                             caplog):
    from attnmel.train.rundir import load_run

    run = copy_run(made_run, tmp_path / "r")
    # The checkpoint's data root no longer exists (the data moved); config.yaml says where it is now.
    best = run / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, weights_only=True)
    ckpt["attnmel"]["config"]["data"]["root"] = str(tmp_path / "moved_away")
    torch.save(ckpt, best)
    cfg = config_mod.read_yaml(run / "config.yaml")
    cfg["data"]["root"] = str(synthetic_root)
    cfg["optim"]["lr"] = 0.5
    (run / "config.yaml").write_text(config_mod.dump(cfg))
    with caplog.at_level(logging.WARNING, logger="attnmel.train"):
        loaded = load_run(run)
    assert loaded.cfg["data"]["root"] == str(synthetic_root)
    assert loaded.cfg["optim"]["lr"] == ckpt["attnmel"]["config"]["optim"]["lr"] != 0.5
    assert "optim.lr was edited" in caplog.text


# -- 3. full disk (tmpfs, root only) -------------------------------------------------------------
def _mount_tmpfs(path: Path, size: str, *opts: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *opts]), "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Path] = []

    def mount(name: str, size: str, *opts: str) -> Path:
        path = tmp_path / name
        _mount_tmpfs(path, size, *opts)
        mounted.append(path)
        return path

    yield mount
    for p in reversed(mounted):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


@pytest.mark.slow
def test_cache_on_a_full_disk_is_one_line_naming_the_folder(tmpfs, tmp_path):
    small = tmpfs("small", "256k")
    data = tmp_path / "data"
    data.mkdir()
    code = (
        "import sys; from pathlib import Path; import numpy as np; from PIL import Image\n"
        "from attnmel.data.cache import SourceFiles, ensure_cache\n"
        "from attnmel.data.transforms import BaseSpec\n"
        "from attnmel.errors import AttnMelError\n"
        "d = Path(sys.argv[1]); srcs = []\n"
        "for i in range(40):\n"
        "    p = d / f'i{i}.png'; Image.fromarray(np.full((64, 64, 3), i, np.uint8)).save(p)\n"
        "    srcs.append(SourceFiles(f'i{i}', p))\n"
        "try:\n"
        "    ensure_cache('synthetic', 'train', srcs, BaseSpec(resize=64), sys.argv[2], progress=False)\n"
        "except AttnMelError as e:\n"
        "    print(e); sys.exit(2)\n")
    r = subprocess.run([sys.executable, "-c", code, str(data), str(small / "cache")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])  # not -7 (SIGBUS)
    assert f"{small / 'cache'}: no space for the preprocessing cache" in r.stdout


def test_read_only_cache_dir_is_one_line(tmpfs, tmp_path):
    from attnmel.data.cache import SourceFiles, ensure_cache
    from attnmel.data.transforms import BaseSpec

    ro = tmpfs("ro", "1m", "ro")
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(AttnMelError, match="data.cache_dir is not writable"):
        ensure_cache("synthetic", "train", [SourceFiles("a", tmp_path / "a.png")], BaseSpec(resize=8), ro,
                     progress=False)


@pytest.mark.slow
def test_evaluate_on_a_read_only_run_folder_is_one_line(made_run, tmpfs, tmp_path, capsys):
    ro = tmpfs("ro_run", "16m")
    run = copy_run(made_run, ro / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    assert cli_main(["evaluate", str(run)]) == 2
    err = one_line_error(capsys)
    assert str(run) in err and "Read-only file system" in err


def _load_all_checkpoints(folder: Path) -> dict[str, dict]:
    """Every checkpoint in ``folder`` loads whole (a truncated one raises); no temporary file is left."""
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary file left behind"
    return {p.name: torch.load(p, map_location="cpu", weights_only=True) for p in folder.glob("*.ckpt")}


def _disk_bytes(folder: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_checkpoints_survive_a_full_disk(trained_run, synthetic_root, tmpfs, tmp_path, capsys):
    size = (trained_run / "checkpoints" / "last.ckpt").stat().st_size
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    # A fresh run on a disk with room for one checkpoint and a half: the second write fails cleanly.
    disk = tmpfs("disk", f"{int(size * 1.5) // 1024 + 64}k")
    code = cli_main(["train", "--config", str(EXPERIMENTS / "synthetic.yaml"),
                     *tiny_overrides(synthetic_root, disk, "r", cache)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no space left on device" in err.lower()
    _load_all_checkpoints(disk / "r" / "checkpoints")  # no truncated checkpoint
    # A run whose disk fills up later: the failed save keeps the previous last.ckpt, which still resumes.
    full = tmpfs("full", f"{(_disk_bytes(trained_run) + size // 2) // 1024}k")
    run = copy_run(trained_run, full / "run")
    assert cli_main(["train", "--resume", str(run), "trainer.max_epochs=2", cache]) == 2
    assert "no space left on device" in capsys.readouterr().err.lower()
    assert _load_all_checkpoints(run / "checkpoints")["last.ckpt"]["epoch"] == 0


def _fill(folder: Path) -> None:
    """Use up a filesystem's free space."""
    with open(folder / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


@pytest.mark.slow
def test_evaluate_on_a_full_disk_is_one_line_and_keeps_metrics(made_run, tmpfs, tmp_path, capsys):
    disk = tmpfs("full", "16m")
    run = copy_run(made_run, disk / "run")
    (run / "metrics.json").write_text('{"earlier": 1}')
    _fill(disk)
    assert cli_main(["evaluate", str(run)]) == 2
    err = one_line_error(capsys)
    assert str(run) in err and "No space left on device" in err
    assert json.loads((run / "metrics.json").read_text()) == {"earlier": 1}


def test_train_into_a_read_only_out_dir_is_one_line(synthetic_root, tmpfs, capsys):
    ro = tmpfs("ro_out", "1m", "ro")
    assert cli_main(["train", "--config", str(EXPERIMENTS / "synthetic.yaml"),
                     *tiny_overrides(synthetic_root, ro, "r")]) == 2
    err = one_line_error(capsys)
    assert str(ro / "r") in err and "Read-only file system" in err
