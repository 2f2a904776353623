"""Training end to end on tiny synthetic data: the loss falls, resume repeats, checkpoints round-trip."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnmel import config as config_mod
from attnmel.cli import main as cli_main
from attnmel.errors import AttnMelError
from attnmel.train import run as run_mod
from attnmel.train import rundir

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def tiny_cfg(root: Path, out: Path, name: str, *extra: str) -> dict:
    return config_mod.load_config(EXPERIMENTS / "synthetic.yaml", [
        f"data.root={root}", f"out_dir={out}", f"name={name}", "data.image_size=64", "data.resize=64",
        "data.batch_size=8", "data.num_workers=0", f"data.cache_dir={out / 'cache'}", "trainer.max_epochs=2",
        "trainer.progress_bar=false", "model.width=0.25", *extra])


def _read_csv_metric(run_dir: Path, key: str) -> list[float]:
    rows = list(csv.DictReader((run_dir / "logs" / "csv" / "metrics.csv").read_text().splitlines()))
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = tiny_cfg(synthetic_root, out, "fit", "trainer.max_epochs=4", "optim.lr=0.002")
    return run_mod.train(cfg)


@pytest.mark.precision  # trains under precision: auto
def test_fit_lowers_the_loss_and_writes_the_run_folder(trained, synthetic_root):
    losses = _read_csv_metric(trained, "train_loss_epoch")
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    for f in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json", "predictions.csv"):
        assert (trained / f).is_file(), f
    m = json.loads((trained / "metrics.json").read_text())["classification"]
    header = next(csv.reader((trained / "predictions.csv").read_text().splitlines()))
    assert header == ["image_id", "other", "melanoma"]
    # The recorded AUC is sklearn's over predictions.csv and the labels as the reader gives them.
    from sklearn.metrics import roc_auc_score

    from attnmel.data.readers import read_split

    truth = {s.image_id: int(s.label == 1) for s in read_split("synthetic", synthetic_root, "test").samples}
    rows = _rows(trained / "predictions.csv")
    assert m["n_images"] == len(rows) == len(truth)
    assert m["auc"] == pytest.approx(roc_auc_score([truth[r["image_id"]] for r in rows],
                                                   [float(r["melanoma"]) for r in rows]), abs=1e-9)


def test_checkpoint_is_plain_data_and_round_trips(trained):
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["attnmel"]["config"]["model"]["name"] == "attnmel"
    run = rundir.load_run(trained)
    assert run.class_names == ["other", "melanoma"] and run.melanoma_index == 1
    # The same weights as the checkpoint's state dict, key for key.
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"]["model." + k])
    # A model built by hand from the checkpoint (not through load_run / score_loader, which wrote
    # predictions.csv) gives the probabilities in predictions.csv, at the run's precision (trainer.precision
    # auto: bf16 autocast on a CPU with bf16 units, where evaluate runs on a BatchNorm-folded copy, so the
    # tolerance is bf16's): softmax(logits / T) when the temperature fitted on val was kept (it lowered the test
    # ECE), softmax(logits) otherwise.
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.models import build_model
    from attnmel.train.inference import autocast_dtype, resolve_precision

    cfg = ckpt["attnmel"]["config"]
    model = build_model({**cfg["model"], "pretrained": "none"}, num_classes=2)
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
    model.eval()
    rows = {r["image_id"]: float(r["melanoma"]) for r in _rows(trained / "predictions.csv")}
    cal = json.loads((trained / "calibration.json").read_text())
    t = cal["temperature"] if cal["kept"] else 1.0
    seen = 0
    dtype = autocast_dtype(resolve_precision(cfg, torch.device("cpu")))
    atol = 1e-5 if dtype is None else 2e-2
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for batch in AttnMelDataModule(cfg, progress=False).eval_dataloader("test"):
            mel = torch.softmax(model(batch["image"]).logits.float() / t, dim=1)[:, 1].numpy()
            assert np.allclose([rows[i] for i in batch["image_id"]], mel, atol=atol)
            seen += len(mel)
    assert seen == len(rows)


def test_checkpoint_of_another_architecture_is_a_clear_error(trained, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    ckpt = torch.load(other / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["attnmel"]["config"]["model"]["name"] = "mel_cnn"
    torch.save(ckpt, other / "checkpoints" / "best.ckpt")
    with pytest.raises(AttnMelError, match="best.ckpt: weights do not fit model 'mel_cnn'"):
        rundir.load_run(other)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_or_missing_checkpoint(trained, tmp_path, content):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    (bad / "checkpoints" / "best.ckpt").write_bytes(content)
    with pytest.raises(AttnMelError, match="best.ckpt: not a readable AttnMel checkpoint"):
        rundir.load_run(bad)
    (bad / "checkpoints" / "best.ckpt").unlink()
    with pytest.raises(AttnMelError, match="best.ckpt: checkpoint not found"):
        rundir.load_run(bad)


@pytest.mark.precision  # resume must repeat the run under bf16 autocast as under fp32
def test_resume_repeats_an_uninterrupted_run(synthetic_root, tmp_path):
    # lr halves every epoch, so a scheduler step lost or repeated on resume shows in the weights.
    sched = ("optim.step_size=1", "optim.gamma=0.5")
    full = run_mod.train(tiny_cfg(synthetic_root, tmp_path, "full", *sched), evaluate_after=False)
    part_cfg = tiny_cfg(synthetic_root, tmp_path, "part", "trainer.max_epochs=1", *sched)
    part = run_mod.train(part_cfg, evaluate_after=False)
    resumed_cfg = dict(part_cfg, trainer={**part_cfg["trainer"], "max_epochs": 2})
    run_mod.train(resumed_cfg, resume=True, evaluate_after=False)
    ca = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    cb = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert ca["global_step"] == cb["global_step"] > 0 and ca["epoch"] == cb["epoch"] == 1
    assert ca["lr_schedulers"] == cb["lr_schedulers"]
    a, b = ca["state_dict"], cb["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_a_second_train_into_the_same_folder_is_refused(trained):
    cfg = config_mod.read_yaml(trained / "config.yaml")
    with pytest.raises(AttnMelError, match="already holds checkpoints"):
        run_mod.train(cfg)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    from attnmel.train import module as module_mod

    original = module_mod.ClassificationModule.training_step

    class NanLoss(torch.nn.Module):
        def forward(self, logits, y):
            return logits.sum() * float("nan")

    def poisoned(self, batch, batch_idx):
        if self.current_epoch == 1:
            self.criterion = NanLoss()
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_mod.ClassificationModule, "training_step", poisoned)
    cfg = tiny_cfg(synthetic_root, tmp_path, "nan", "trainer.max_epochs=3")
    with pytest.raises(AttnMelError, match="training loss became nan at epoch 1"):
        run_mod.train(cfg)
    last = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # the epoch before the NaN, intact
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert cli_main(["evaluate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope: run folder not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: attnmel\n  foo: 1\n")
    assert cli_main(["train", "--config", str(bad)]) == 2
    assert "unknown config key 'model.foo'" in capsys.readouterr().err


def test_unknown_model_and_regulariser_are_clear_errors(synthetic_root, tmp_path):
    with pytest.raises(AttnMelError, match="unknown model"):
        run_mod.train(tiny_cfg(synthetic_root, tmp_path, "m", "model.name=vgg17"))
    with pytest.raises(AttnMelError, match="regulariser"):
        run_mod.train(tiny_cfg(synthetic_root, tmp_path, "r", "loss.regulariser=lesionn"))


@pytest.mark.slow  # seconds each: make test stays under 2 minutes; make test-slow (CI) runs it
def test_predict_cli_gives_probabilities_and_overlays(trained, synthetic_root, tmp_path, capsys):
    images = sorted((synthetic_root / "ISIC-2017_Test_v2_Data").glob("ISIC_*.jpg"))[:2]
    assert cli_main(["predict", str(trained), *map(str, images), "--overlay", str(tmp_path / "ov")]) == 0
    out = capsys.readouterr().out
    assert images[0].name in out or images[0].stem in out
    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert len(pngs) == 2
    from PIL import Image

    assert Image.open(pngs[0]).format == "PNG"
    assert "Grad-CAM explain the predicted class" in out  # predict says what its maps explain, as the report
    # A large original is drawn at its own resolution, capped at --overlay-size: the eval region of a 1200x900
    # image is 0.8 x 900 x image_size / resize px square (the tiny config's geometry), capped at 300 px here.
    big = tmp_path / "big.jpg"
    Image.open(images[0]).resize((1200, 900)).save(big, quality=95)
    assert cli_main(["predict", str(trained), str(big), "--overlay", str(tmp_path / "big"),
                     "--overlay-size", "300"]) == 0
    w, h = Image.open(tmp_path / "big" / "big_attention.png").size
    assert h > 300 and w >= 3 * 300  # image + pool-3 + pool-4 + Grad-CAM columns, 300 px each
    notimg = tmp_path / "notes.jpg"
    notimg.write_text("hello")
    assert cli_main(["predict", str(trained), str(notimg)]) == 2
    assert "notes.jpg: not an image" in capsys.readouterr().err


def test_svm_option_averages_softmax_and_svm(trained, tmp_path):
    import shutil

    run = tmp_path / "svm"
    shutil.copytree(trained, run)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["attnmel"]["config"]["model"]["svm"] = True
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    metrics = run_mod.evaluate(run, "test")
    saved = json.loads((run / "metrics.json").read_text())
    assert (run / "svm.npz").is_file()
    assert saved["classification"]["auc"] == metrics["auc"]
    assert "classification_softmax_only" in saved
    # The fused probabilities differ from the softmax alone (the SVM moved them).
    soft = json.loads((trained / "metrics.json").read_text())["classification"]
    assert saved["classification_softmax_only"]["auc"] == pytest.approx(soft["auc"])
    fused = {r["image_id"]: float(r["melanoma"]) for r in _rows(run / "predictions.csv")}
    plain = {r["image_id"]: float(r["melanoma"]) for r in _rows(trained / "predictions.csv")}
    assert fused.keys() == plain.keys()
    assert not np.allclose([fused[k] for k in plain], list(plain.values()), atol=1e-4)


def test_cli_resume_of_a_moved_run_folder(synthetic_root, tmp_path, capsys):
    import shutil

    part = run_mod.train(tiny_cfg(synthetic_root, tmp_path / "a", "r", "trainer.max_epochs=1"), evaluate_after=False)
    moved = tmp_path / "b" / "moved"
    shutil.move(str(part), moved)
    assert cli_main(["train", "--resume", str(moved), "trainer.max_epochs=2"]) == 0
    ckpt = torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and (moved / "metrics.json").is_file()
    assert not (tmp_path / "a" / "r").exists()
    assert cli_main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_evaluate_after_the_dataset_folder_is_gone_refuses_and_keeps_the_results(trained, tmp_path, capsys):
    """A deleted synthetic set is not generated again (and scored as if it were the run's data): evaluate and
    report end in one line naming the folder, and the run's metrics and predictions stay as they were."""
    import shutil

    run = Path(shutil.copytree(trained, tmp_path / "run"))
    gone = tmp_path / "deleted-dataset"
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(_root_of(run), str(gone)))
    before = {f: (run / f).read_bytes() for f in ("metrics.json", "predictions.csv")}
    for argv in (["evaluate", str(run)], ["report", str(run), "--limit", "2"]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(gone) in err and "not found" in err, err
    assert not gone.exists()
    assert {f: (run / f).read_bytes() for f in before} == before


def _root_of(run: Path) -> str:
    return config_mod.read_yaml(run / "config.yaml")["data"]["root"]
def test_training_fits_a_temperature_and_reports_the_ece_of_predictions_csv(trained):
    """train -> evaluate fits T on val (calibration.json) and metrics.json's calibration section holds the ECE of
    the probabilities in predictions.csv (torchmetrics' binary ECE, 15 bins, as the oracle)."""
    from torchmetrics.classification import BinaryCalibrationError

    cal = json.loads((trained / "calibration.json").read_text())
    assert cal["fitted_on"] == "val" and cal["temperature"] > 0 and isinstance(cal["kept"], bool)
    assert cal["kept"] == (cal["ece"]["test"]["scaled"] < cal["ece"]["test"]["raw"])
    metrics = json.loads((trained / "metrics.json").read_text())
    section = metrics["calibration"]
    assert section["temperature_applied"] == (cal["temperature"] if cal["kept"] else None)
    from attnmel.data.datamodule import AttnMelDataModule

    run = rundir.load_run(trained)
    labels = {}
    for batch in AttnMelDataModule(run.cfg, progress=False).eval_dataloader("test"):
        labels.update({i: int(y) for i, y in zip(batch["image_id"], batch["label"])})
    rows = _rows(trained / "predictions.csv")
    p = torch.tensor([float(r["melanoma"]) for r in rows], dtype=torch.float64).clamp(max=1 - 1e-12)
    y = torch.tensor([int(labels[r["image_id"]] == run.melanoma_index) for r in rows])
    assert section["ece"] == pytest.approx(float(BinaryCalibrationError(n_bins=15)(p, y)), abs=1e-6)


def test_evaluate_on_a_tree_without_val_keeps_the_earlier_temperature(trained, synthetic_root, tmp_path, caplog):
    """A test-only copy of the dataset: no temperature can be fitted, so test is still scored, with the run's
    earlier calibration.json, and a one-line warning says so."""
    import shutil

    import yaml

    root = tmp_path / "test_only"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("*Validation*"))
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("report", "logs"))
    before = json.loads((run / "calibration.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["root"] = str(root)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with caplog.at_level("WARNING", logger="attnmel.train"):
        m = run_mod.evaluate(run, "test")
    assert m["n_images"] > 0
    assert json.loads((run / "calibration.json").read_text()) == before
    assert any("no temperature fitted" in r.getMessage() and "earlier temperature" in r.getMessage()
               for r in caplog.records)


def test_ema_checkpoint_holds_the_hand_computed_average(synthetic_root, tmp_path):
    """optim.ema=d: after three steps the checkpoint's state_dict is d^2 p1 + d(1-d) p2 + (1-d) p3 (the first update
    copies p1), the raw weights p3 are kept for a resume, and evaluation scores the average."""
    import pytorch_lightning as pl

    seen: list[torch.Tensor] = []

    class Capture(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(pl_module.model.classifier.weight.detach().float().clone())

    d = 0.5
    cfg = tiny_cfg(synthetic_root, tmp_path, "ema", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                   f"optim.ema={d}", "trainer.precision=32-true")
    run_dir = run_mod.train(cfg, callbacks=[Capture()], evaluate_after=False)
    ckpt = rundir.read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert len(seen) == 3
    expected = d * d * seen[0] + d * (1 - d) * seen[1] + (1 - d) * seen[2]
    key = "model.classifier.weight"
    torch.testing.assert_close(ckpt["state_dict"][key].float(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ckpt["current_model_state"][key].float(), seen[2])
    assert not torch.allclose(seen[2], expected)


def test_ema_is_checked():
    with pytest.raises(AttnMelError, match="optim.ema"):
        config_mod.load_config(EXPERIMENTS / "synthetic.yaml", ["optim.ema=1.5"])


def test_ema_run_resumes_from_its_raw_weights(synthetic_root, tmp_path):
    """A resume continues the raw weights (current_model_state), not the average, and keeps averaging."""
    cfg = tiny_cfg(synthetic_root, tmp_path, "ema_resume", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   "optim.ema=0.9", "trainer.precision=32-true")
    run_dir = run_mod.train(cfg, evaluate_after=False)
    first = rundir.read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    run_mod.train({**cfg, "trainer": {**cfg["trainer"], "max_epochs": 2}}, resume=True, evaluate_after=False)
    second = rundir.read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert second["epoch"] == 1
    key = "model.classifier.weight"
    # Two more EMA updates at 0.9 from the first average: the new average stays near it, the raw weights moved on.
    raw_step = (second["current_model_state"][key] - first["current_model_state"][key]).abs().max()
    avg_step = (second["state_dict"][key] - first["state_dict"][key]).abs().max()
    assert 0 < avg_step < raw_step
