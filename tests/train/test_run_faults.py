"""Run folders under faults: resume refusals, Ctrl-C, two processes, read-only and full disks, the
read commands' config rule, predict (issue 13, from tests/test_robustness.py). tmpfs cases run as root only."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnmel import config as config_mod
from attnmel.cli import main as cli_main
from tests._faults import EXPERIMENTS, copy_run, csv_epochs, one_line_error, tiny_overrides


def test_overlay_pointing_at_a_file_is_one_line(made_run, synthetic_root, tmp_path, capsys):
    image = sorted((synthetic_root / "ISIC-2017_Test_v2_Data").glob("ISIC_*[0-9].jpg"))[0]
    blocker = tmp_path / "overlay.png"
    blocker.write_text("x")
    assert cli_main(["predict", str(made_run), str(image), "--overlay", str(blocker)]) == 2
    assert str(blocker) in one_line_error(capsys)



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
