"""Integrated Gradients' default setting is accurate before fast: on a trained model its median completeness
error (|sum of attributions - (f(x) - f(0))| / |f(x) - f(0)|, the IG paper's check) is within 5 %, whichever
precision ``auto`` resolves to on this CPU (``make test-precision`` runs it both ways)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnmel import config as config_mod
from attnmel.explain.attributions import IGSettings, explain_batch, integrated_gradients_maps

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="module")
def trained_model(synthetic_root, tmp_path_factory):
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.train.run import train
    from attnmel.train.rundir import load_run

    out = tmp_path_factory.mktemp("ig_runs")
    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml", [
        f"data.root={synthetic_root}", f"out_dir={out}", "name=ig", "data.image_size=64", "data.resize=64",
        "data.batch_size=8", "data.num_workers=0", f"data.cache_dir={out / 'cache'}", "trainer.max_epochs=3",
        "trainer.progress_bar=false", "model.width=0.25", "optim.lr=0.002"])
    run = load_run(train(cfg, evaluate_after=False))
    ds = AttnMelDataModule(run.cfg, progress=False).dataset("test")
    return run.model.eval(), torch.stack([ds[i]["image"] for i in range(8)])


@pytest.mark.precision
def test_the_default_ig_setting_meets_the_completeness_bound(trained_model):
    model, x = trained_model
    ex = explain_batch(model, x, methods=("ig",), ig=IGSettings())
    err = ex.ig_completeness
    assert err is not None and err.shape == (8,)
    # The gap the error is relative to, computed independently on the model as trained (BatchNorm not folded).
    with torch.no_grad():
        fx, f0 = model(x).logits, model(torch.zeros_like(x[:1])).logits[0]
    rows = torch.arange(8)
    gap = (fx[rows, ex.targets] - f0[ex.targets]).abs()
    assert torch.equal(ex.targets, fx.argmax(1)) and torch.all(gap > 0)
    s = IGSettings()
    _, delta = integrated_gradients_maps(model, x, ex.targets, s.n_steps, precision=s.precision, return_delta=True)
    torch.testing.assert_close(err, delta.abs() / gap, rtol=2e-3, atol=1e-5)
    assert float(err.median()) <= 0.05, err
    # One step misses the bound on the same images: the bound is not met by any setting whatever.
    few = explain_batch(model, x, methods=("ig",), ig=IGSettings(n_steps=1, precision="fp32")).ig_completeness
    assert float(few.median()) > 0.05
