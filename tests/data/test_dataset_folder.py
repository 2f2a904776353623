"""A dataset folder is never written: a writable tree with a drawn split goes through ``data check``, ``train``,
``evaluate`` and ``report``, and not one file or folder in it is created, changed or removed. The drawn split is
stored in the cache folder, and the run folder keeps a copy of the split it trained on."""

from __future__ import annotations

import csv
import stat
from pathlib import Path

import pytest

from attnmel.cli import main as cli_main
from attnmel.train.rundir import RunDir
from tests.data._tree import tree_snapshot

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.mark.slow  # a train, an evaluate and a report: ~20 s idle, minutes on a loaded machine
def test_check_train_evaluate_report_leave_a_writable_dataset_folder_untouched(make_ham10000_tree, tmp_path,
                                                                               monkeypatch, capsys):
    root = make_ham10000_tree(tmp_path / "shared" / "ham10000")
    assert root.stat().st_mode & stat.S_IWUSR  # writable: the old readers wrote their split here
    monkeypatch.chdir(tmp_path)  # the default cache folder (.cache/attnmel) lands here, not in the checkout
    monkeypatch.delenv("ATTNMEL_CACHE_DIR")  # the tests' own store (conftest): here the user's default
    before = tree_snapshot(root)

    assert cli_main(["data", "check", "--dataset", "ham10000", "--root", str(root)]) in (0, 1)
    out = capsys.readouterr().out
    stored = next(iter((tmp_path / ".cache" / "attnmel" / "splits").rglob("attnmel_splits.csv")))
    assert f"train/val/test: split stored in {stored}" in out.replace("\n", "")

    cache = tmp_path / "cache"
    assert cli_main(["train", "--config", str(EXPERIMENTS / "synthetic.yaml"), "data.dataset=ham10000",
                     f"data.root={root}", f"data.cache_dir={cache}",
                     f"out_dir={tmp_path / 'runs'}", "name=ham", "data.resize=32", "data.image_size=32",
                     "data.center_crop=1.0", "data.batch_size=8", "data.num_workers=0", "model.pretrained=none",
                     "model.width=0.125", "trainer.max_epochs=1", "trainer.progress_bar=false"]) == 0
    run = tmp_path / "runs" / "ham"
    assert cli_main(["evaluate", str(run)]) == 0
    assert cli_main(["report", str(run), "--limit", "4"]) == 0
    assert (run / "report" / "index.html").is_file()

    assert tree_snapshot(root) == before  # nothing created, changed or removed in the dataset folder
    drawn = list((cache / "splits").rglob("attnmel_splits.csv"))
    assert len(drawn) == 1 and drawn[0].parent.name.startswith("ham10000-")
    # The run folder records the split it trained on: the same lesions in each split as the drawn file.
    copy = RunDir(run).split_file
    assert copy.read_text() == drawn[0].read_text() == stored.read_text()
    rows = list(csv.DictReader(copy.read_text().splitlines()))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
