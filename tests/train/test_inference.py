"""The one inference path after training: loaded once, on the run's device, the same probabilities everywhere."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnmel.errors import AttnMelError
from attnmel.train import inference
from attnmel.train.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")

EXTRA = ("test_reversed", "test_absent")


def _untrained_run(tmp: Path, name: str, *overrides: str) -> Path:
    """A shortcut-benchmark run folder (synthetic set with two extra test splits) with untrained weights."""
    from attnmel.bench.report import make_untrained_run

    return make_untrained_run(tmp / "runs" / name, tmp / "syn", image_size=64, width=0.125, cache_dir=tmp / "cache",
                              overrides=["data.resize=64", "data.batch_size=16", "data.synthetic.n=80",
                                         "data.synthetic.size=64", "data.synthetic.spurious=true",
                                         "data.synthetic.extra_tests=[reversed, absent]", "trainer.accelerator=cpu",
                                         "trainer.precision=32-true", *overrides])


@pytest.fixture(scope="module")
def svm_run(tmp_path_factory) -> Path:
    return _untrained_run(tmp_path_factory.mktemp("inference"), "svm", "model.svm=true")


def _predictions(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {r["image_id"]: np.array([float(r[c]) for c in ("other", "melanoma")]) for r in rows}


def test_evaluate_of_a_shortcut_run_loads_the_checkpoint_once(svm_run, monkeypatch):
    from attnmel.cli import main
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.train import rundir

    loads, modules = [], []
    read = rundir.read_checkpoint
    monkeypatch.setattr(rundir, "read_checkpoint", lambda p: loads.append(p) or read(p))
    init = AttnMelDataModule.__init__
    monkeypatch.setattr(AttnMelDataModule, "__init__", lambda self, *a, **k: modules.append(1) or init(self, *a, **k))
    assert main(["evaluate", str(svm_run)]) == 0
    assert len(loads) == 1 and len(modules) == 1  # was 5 loads and 5 DataModules (one per split)
    m = RunDir(svm_run).metrics()
    for split in ("val", *EXTRA):
        assert m[f"classification_{split}"]["n_images"] == len(_predictions(RunDir(svm_run).predictions(split)))
    assert m["split"] == "test" and m["classification"]["n_images"] == len(_predictions(RunDir(svm_run).predictions()))


def test_an_svm_run_has_the_same_probabilities_in_evaluate_report_and_predict(svm_run):
    from attnmel.report.build import report_numbers
    from attnmel.train.predict import predict_images
    from attnmel.train.run import evaluate
    from attnmel.train.svm import FeatureSVM

    metrics = evaluate(svm_run, "test")
    saved = _predictions(RunDir(svm_run).predictions())
    nums = report_numbers(svm_run, "test")
    report = dict(zip(nums.collected.ids, nums.scores.probs))
    assert set(report) == set(saved)
    for i, p in saved.items():
        assert np.allclose(report[i], p, atol=1e-5), i
    # The fusion is really applied: half the network's softmax plus half the SVM's, computed here by hand from the
    # plain (unprepared) model on the CPU.
    run = inference.open_run(svm_run, "cpu")
    svm = FeatureSVM.load(RunDir(svm_run).svm_file)
    ds = run.data().dataset("test", train=False)
    x = torch.stack([ds[k]["image"] for k in range(len(ds))])
    with torch.inference_mode():
        out = run.model(x)
    soft = torch.softmax(out.logits, 1).numpy()
    fused = 0.5 * (soft + svm.predict_proba(out.features.numpy()))
    # predictions.csv holds the fused probabilities after the run's temperature when it was kept:
    # softmax(log(p) / T) = p ** (1 / T), renormalised.
    cal = json.loads(RunDir(svm_run).calibration_file.read_text())
    shown = fused ** (1.0 / cal["temperature"]) if cal["kept"] else fused
    shown = shown / shown.sum(axis=1, keepdims=True)
    ids = [str(s.image_id) for s in ds.index.samples]
    assert np.allclose(np.stack([saved[i] for i in ids]), shown, atol=1e-4)
    assert not np.allclose(fused, soft, atol=1e-3)  # the SVM moves the numbers: the check above can fail
    auc_by_hand = metrics["auc"]
    from sklearn.metrics import roc_auc_score

    labels = np.array([s.label for s in ds.index.samples])
    assert auc_by_hand == pytest.approx(roc_auc_score(labels, fused[:, 1]), abs=1e-6)
    # predict on the test images' files: the same probabilities as metrics.json's predictions.
    files = [s.image for s in ds.index.samples[:5]]
    rows = predict_images(svm_run, files, print_table=False)
    for r, s in zip(rows, ds.index.samples[:5]):
        assert np.allclose([r["other"], r["melanoma"]], saved[str(s.image_id)], atol=1e-4), s.image_id


def test_evaluate_runs_on_the_configured_cpu(svm_run, monkeypatch):
    from attnmel.train import run as run_mod

    seen = []
    score = run_mod.score_loader

    def spy(trun, loader, *a, **k):
        seen.append((trun.device, next(trun.model.parameters()).device, trun.precision))
        return score(trun, loader, *a, **k)

    monkeypatch.setattr(run_mod, "score_loader", spy)
    run_mod.evaluate(svm_run, "val")  # trainer.accelerator=cpu, trainer.precision=32-true in the run's config
    assert seen == [(torch.device("cpu"), torch.device("cpu"), "32-true")]


@pytest.mark.parametrize("command", ["evaluate", "report", "predict", "segment"])
def test_the_device_option_reaches_the_scoring_function(svm_run, monkeypatch, tmp_path, command):
    """``--device`` goes to the device resolution, and the device it gives is where the model scores."""
    from attnmel.cli import main
    from attnmel.train import run as run_mod

    asked, scored = [], []
    monkeypatch.setattr(inference, "resolve_device", lambda name: asked.append(name) or torch.device("cpu"))
    score = inference.score_loader

    def spy(trun, loader, *a, **k):
        scored.append(trun.device)
        return score(trun, loader, *a, **k)

    monkeypatch.setattr(inference, "score_loader", spy)
    monkeypatch.setattr(run_mod, "score_loader", spy)
    image = str(next((svm_run.parent.parent / "syn").rglob("ISIC_*.png")))
    argv = {"evaluate": ["evaluate", str(svm_run), "--split", "val"],
            "report": ["report", str(svm_run), "--limit", "4"],
            "predict": ["predict", str(svm_run), image],
            "segment": ["segment", str(svm_run), image, "--out", str(tmp_path / "m")]}[command]
    code = main([*argv, "--device", "cuda"])
    assert asked == ["cuda"]
    if command == "segment":  # a classifier run: refused after it was opened on the asked device
        assert code == 2
    else:
        assert code == 0 and scored and all(d == torch.device("cpu") for d in scored)


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference.resolve_device("auto") == torch.device("cpu")
    assert inference.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(AttnMelError, match="no CUDA GPU") as e:
        inference.resolve_device("gpu")
    assert "\n" not in str(e.value)
    with pytest.raises(AttnMelError, match="unknown device"):
        inference.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert inference.resolve_device("auto") == torch.device("cuda")
    assert inference.resolve_device("gpu") == torch.device("cuda")
