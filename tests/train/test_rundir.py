"""The run folder has one owner (attnmel.train.rundir): its paths, "the same run", and nobody else spelling it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import attnmel
from attnmel import config as config_mod
from attnmel.errors import AttnMelError
from attnmel.train import rundir
from attnmel.train.rundir import RunDir

# Every file name of the run folder's layout, as the README documents it.
RUN_FOLDER_NAMES = ("best.ckpt", "last.ckpt", "config.yaml", "metrics.json", "predictions.csv", "predictions_",
                    "svm.npz", "model.onnx", "model.json", "job.json", "hpc_ckpt_", "error.txt", ".attnmel.lock",
                    "calibration.json")


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal except docstrings (prose may name the files; code must ask RunDir)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_module_but_rundir_spells_a_run_folder_file_name():
    package = Path(attnmel.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path == Path(rundir.__file__):
            continue
        for line, text in _string_constants(ast.parse(path.read_text(encoding="utf-8"))):
            if text.startswith("reports/bench/"):  # the benchmark's own outputs (bench/model.json), no run folder
                continue
            offenders += [f"{path.relative_to(package)}:{line}: {name!r}" for name in RUN_FOLDER_NAMES
                          if name in text]
    assert not offenders, "spelled outside attnmel/train/rundir.py:\n" + "\n".join(offenders)


def test_the_grep_finds_a_spelled_name():
    # The check above can fail: the same scan flags a literal in code, and leaves a docstring alone.
    tree = ast.parse('"""Writes metrics.json."""\nPATH = run_dir / "metrics.json"\n')
    assert [t for _, t in _string_constants(tree)] == ["metrics.json"]


def test_run_dir_paths_are_the_documented_layout(tmp_path):
    f = RunDir(tmp_path / "r")
    r = tmp_path / "r"
    assert f.config_file == r / "config.yaml" and f.metrics_file == r / "metrics.json"
    assert f.best == r / "checkpoints" / "best.ckpt" and f.last == r / "checkpoints" / "last.ckpt"
    assert f.predictions() == r / "predictions.csv" and f.predictions("val") == r / "predictions_val.csv"
    assert f.report_page == r / "report" / "index.html" and f.svm_file == r / "svm.npz"
    assert f.calibration_file == r / "calibration.json"
    assert f.export_dir == r / "export" and f.job_file == r / "slurm" / "job.json"
    assert f.masks_dir("isic2017") == r / "masks" / "isic2017" and f.error_file == r / "error.txt"
    assert RunDir.of_config({"out_dir": str(tmp_path), "name": "r"}) == f


def test_resume_checkpoint_is_the_newest_of_last_and_requeue_checkpoints(tmp_path):
    import os

    f = RunDir(tmp_path)
    assert f.resume_checkpoint() is None and not f.has_checkpoints()
    f.checkpoints_dir.mkdir()
    f.last.write_bytes(b"x")
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    os.utime(f.last, (1, 1))
    assert f.resume_checkpoint() == hpc
    os.utime(hpc, (0, 0))
    assert f.resume_checkpoint() == f.last


def _saved(tmp_path: Path, **data) -> tuple[RunDir, dict]:
    cfg = config_mod.defaults()
    cfg["data"].update(data)
    f = RunDir(tmp_path)
    f.path.mkdir(parents=True, exist_ok=True)
    f.config_file.write_text(config_mod.dump(cfg), encoding="utf-8")
    return f, cfg


def test_the_same_run_is_the_resume_rule(tmp_path):
    f, cfg = _saved(tmp_path, root="/data/a")
    # A key resume may change (data.root, trainer.max_epochs) leaves it the same run, for sweeps too ...
    moved = config_mod.merge(cfg, {"data": {"root": "/data/b"}, "trainer": {"max_epochs": 9}})
    f.check_same_run(moved)
    # ... and a key resume refuses (data.resize, which sweeps used to let through) makes it another run.
    assert "data.resize" not in config_mod.RESUME_MAY_CHANGE
    with pytest.raises(AttnMelError, match="data.resize"):
        f.check_same_run(config_mod.merge(cfg, {"data": {"resize": cfg["data"]["resize"] + 32}}))
    with pytest.raises(AttnMelError, match="model.name"):
        f.check_same_run(config_mod.merge(cfg, {"model": {"name": "vgg16"}}))
    RunDir(tmp_path / "empty").check_same_run(cfg)  # no run yet: nothing to compare


def test_segmentation_run_is_read_from_its_config(tmp_path):
    f, cfg = _saved(tmp_path / "cls")
    assert f.is_run() and not f.is_segmentation_run()
    seg = RunDir(tmp_path / "seg")
    seg.path.mkdir()
    seg.config_file.write_text(config_mod.dump({**cfg, "task": "segmentation"}), encoding="utf-8")
    assert seg.is_segmentation_run()
    assert not RunDir(tmp_path / "none").is_run()


def test_data_masks_naming_a_classifier_run_is_refused(tmp_path):
    from attnmel.train.masks import resolve_mask_source

    f, cfg = _saved(tmp_path / "cls")
    with pytest.raises(AttnMelError, match="not a segmentation run"):
        resolve_mask_source({**cfg, "data": {**cfg["data"], "masks": str(f.path)}})
    plain = {**cfg, "data": {**cfg["data"], "masks": str(tmp_path / "folder_of_masks")}}
    assert resolve_mask_source(plain) is plain  # a folder of masks goes through untouched


def test_process_rank_reads_the_launchers_variables(monkeypatch):
    from attnmel.ranks import is_rank_zero, process_rank

    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert process_rank() == 0 and is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert process_rank() == 9 and not is_rank_zero()
    monkeypatch.setenv("RANK", "3")
    assert process_rank() == 3
