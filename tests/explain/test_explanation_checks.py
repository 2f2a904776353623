"""Checks beyond overlap (issue 9): faithfulness curves, the randomisation sanity check, bootstrap intervals and
artefact shares, each against a toy model whose decision is known, a library or a hand computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from attnmel.explain.artefacts import artefact_scores
from attnmel.explain.faithfulness import perturbation_curves, pixel_ranks
from attnmel.explain.randomisation import cascading_randomisation, randomisation_stages, spearman_per_image
from attnmel.metrics.bootstrap import mean_ci

H = W = 16


class RegionModel(nn.Module):
    """Two classes; the class-1 logit is (the sum of channel 0 over the top-left 6 x 6 region - 20) / 2.

    Its decision depends on those 36 pixels only: they are the true evidence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 0.5 * (x[:, 0, :6, :6].sum(dim=(1, 2)) - 20.0)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _region_images(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.rand(n, 3, H, W, generator=g)
    x[:, 0, :6, :6] += 1.0  # the evidence for class 1
    return x


def test_deletion_and_insertion_of_the_true_evidence_beat_a_random_map():
    x = _region_images()
    model = RegionModel()
    truth = torch.zeros(len(x), H, W)
    truth[:, :6, :6] = 1.0
    rand = torch.rand(len(x), H, W, generator=torch.Generator().manual_seed(1))
    targets = torch.ones(len(x), dtype=torch.long)
    predict = lambda z: torch.softmax(model(z), dim=1)  # noqa: E731
    # Insertion into the mean colour (0) rather than the default blur, which would keep most of the region's sum.
    curves = perturbation_curves(predict, x, {"truth": truth, "random": rand}, targets, steps=8, batch_size=7,
                                 insertion_baseline=torch.zeros_like(x))
    t, r = curves["truth"], curves["random"]
    assert t.deletion.shape == (len(x), 9) and t.fractions.tolist() == pytest.approx(np.linspace(0, 1, 9).tolist())
    # Shared endpoints: the image itself, the fully deleted image, the blurred image.
    assert np.allclose(t.deletion[:, 0], r.deletion[:, 0]) and np.allclose(t.insertion[:, -1], t.deletion[:, 0])
    assert np.allclose(t.deletion[:, -1], r.deletion[:, -1]) and np.allclose(t.insertion[:, 0], r.insertion[:, 0])
    # 36 of 256 pixels: deleting the top 1/8 (32 px) of the true map removes most of the evidence at once.
    assert (t.deletion_auc < r.deletion_auc).all()
    assert (t.insertion_auc > r.insertion_auc).all()
    assert t.deletion_auc.mean() < 0.2 and r.deletion_auc.mean() > 0.5
    assert t.insertion_auc.mean() > 0.9 and r.insertion_auc.mean() < 0.7
    blurred = perturbation_curves(predict, x, {"truth": truth}, targets, steps=8)["truth"]  # the default baseline
    assert np.allclose(blurred.deletion, t.deletion) and not np.allclose(blurred.insertion[:, 0], t.insertion[:, 0])


def test_deletion_curve_matches_quantus_pixel_flipping():
    quantus = pytest.importorskip("quantus")
    # One channel: Quantus flips (channel, pixel) features, ours whole pixels; on a grey image they coincide.
    x = _region_images(4)[:, :1].contiguous()
    model = RegionModel().eval()
    a = torch.rand(len(x), H, W, generator=torch.Generator().manual_seed(2))  # no ties
    steps = 8
    ours = perturbation_curves(lambda z: torch.softmax(model(z), dim=1), x, {"a": a}, torch.ones(4, dtype=torch.long),
                               steps=steps)["a"]
    metric = quantus.PixelFlipping(features_in_step=H * W // steps, perturb_baseline=0.0, normalise=False,
                                   disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=np.ones(4, dtype=int),
                               a_batch=a[:, None].numpy(), device="cpu", softmax=True, channel_first=True))
    assert theirs.shape == (4, steps)
    assert np.allclose(ours.deletion[:, 1:], theirs, atol=1e-5)


def test_pixel_ranks_break_ties_by_a_fixed_permutation_not_raster_order():
    flat = torch.zeros(1, 8, 8)
    r1, r2 = pixel_ranks(flat, seed=0), pixel_ranks(flat, seed=0)
    assert torch.equal(r1, r2) and sorted(r1[0].tolist()) == list(range(64))
    assert r1[0].tolist() != list(range(64))
    peaked = torch.zeros(1, 8, 8)
    peaked[0, 5, 3] = 1.0
    assert pixel_ranks(peaked)[0, 5 * 8 + 3] == 0


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(8, 2)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def _saliency(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """|gradient| of the class-1 logit (a model-dependent map) and a fixed map (model-independent)."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        model(x)[:, 1].sum().backward()
    fixed = torch.arange(H * W, dtype=torch.float32).reshape(1, H, W).expand(len(x), -1, -1)
    return {"gradient": x.grad.abs().sum(dim=1), "fixed": fixed}


def test_randomisation_gives_one_for_an_unchanged_model_and_less_once_re_initialised():
    torch.manual_seed(0)
    model = TinyConvNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3, H, W, generator=torch.Generator().manual_seed(3))
    same = spearman_per_image(_saliency(model, x)["gradient"], _saliency(model, x)["gradient"])
    assert same == pytest.approx(np.ones(5))
    stages = randomisation_stages(model, max_stages=3)
    assert next(s.modules for s in stages) == ["classifier"]  # from the classifier down
    assert stages[-1].modules == ["features.0", "features.1"]  # the first conv with its BatchNorm
    res = cascading_randomisation(model, x, _saliency, max_stages=3, seed=0)
    assert res.rho["gradient"].shape == (3, 5)
    assert res.mean()["gradient"][-1] < 0.5 and res.passed()["gradient"]
    assert res.rho["fixed"] == pytest.approx(np.ones((3, 5))) and not res.passed()["fixed"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched


def test_spearman_per_image_matches_scipy_and_handles_constant_maps():
    a = np.array([[[1.0, 2.0], [2.0, 5.0]], [[3.0, 3.0], [3.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]])
    b = np.array([[[4.0, 1.0], [1.0, 9.0]], [[1.0, 2.0], [3.0, 4.0]], [[7.0, 7.0], [7.0, 7.0]]])
    rho = spearman_per_image(a, b)
    assert rho[0] == pytest.approx(spearmanr(a[0].ravel(), b[0].ravel()).statistic)
    assert rho[1] == 0.0 and rho[2] == 1.0  # constant vs varying: no agreement; both constant: unchanged


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    values = [0.0, 1.0, 2.0, 10.0]
    # By hand: all 4^4 = 256 equally likely resamples; the interval's ends are the 2.5 % and 97.5 % points of
    # their means' distribution (a step function: the empirical quantiles of many resamples land on a step).
    means = np.sort([np.mean(t) for t in itertools.product(values, repeat=4)])
    cdf = np.arange(1, 257) / 256
    lo, hi = means[np.searchsorted(cdf, 0.025)], means[np.searchsorted(cdf, 0.975)]
    # Worked out: P(mean <= 0.25) = (1 + 4) / 256 = 0.020 < 0.025 < P(mean <= 0.5) = (5 + 4 + 6) / 256 = 0.059
    # (0.5 = (0+0+0+2)/4 or (0+0+1+1)/4); P(mean >= 7.75) = (1 + 4 + 4) / 256 = 0.035 > 0.025 > P(mean >= 8).
    assert (lo, hi) == (0.5, 7.75)
    got = mean_ci(values, n_resamples=40000, seed=0)
    assert got["mean"] == 3.25 and got["n"] == 4
    assert got["ci_low"] == pytest.approx(lo) and got["ci_high"] == pytest.approx(hi)
    assert mean_ci([np.nan, 1.0, 1.0])["ci_low"] == 1.0 and mean_ci([])["mean"] is None


def test_artefact_share_and_peak_on_a_hand_made_case():
    m = np.array([[0.0, 1.0], [2.0, 3.0]])
    art = np.array([[False, False], [False, True]])
    # Min-max: [[0, 1/3], [2/3, 1]]; mass 2, of which 1 on the artefact pixel, which is also the peak.
    assert artefact_scores(m, art) == pytest.approx({"artefact_share": 0.5, "artefact_peak": 1.0})
    assert artefact_scores(m, ~art) == pytest.approx({"artefact_share": 0.5, "artefact_peak": 0.0})
    assert artefact_scores(m, np.zeros((2, 2), bool)) == {"artefact_share": 0.0, "artefact_peak": 0.0}
