"""The Integrated Gradients bench (``make bench``, report part) at a tiny size: it runs, its fast path computes
what the former settings computed, and its arithmetic count matches a hand count of VGG-16's convolutions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from attnmel.bench.report import ig_ceiling, ig_speed

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


@pytest.mark.precision
def test_ig_speed_bench_runs_and_fp32_paths_agree(monkeypatch):
    """fp32 against fp32: with bf16 off, "now" (BatchNorm folded, channels-last, 16 per pass) computes what
    "before" computed, to float rounding. The bf16 path is tested against fp32 below, with a tolerance for bf16."""
    monkeypatch.setenv("ATTNMEL_BF16", "off")
    r = ig_speed(n_images=1, size=32, width=0.125, n_steps=2, corr_steps=2)
    assert r["n_images"] == 1 and r["before_s_per_image"] > 0 and r["now_s_per_image"] > 0
    assert r["speedup"] > 0 and r["now_uses_bf16"] is False
    # BatchNorm folding and channels-last change the arithmetic order only.
    assert r["max_relative_difference_now_vs_before"] < 1e-4
    assert r["fp32_ceiling"]["now_s_per_image"] == r["now_s_per_image"]


@pytest.mark.precision
def test_bf16_ig_ranks_pixels_like_fp32():
    """bf16 against fp32 (bf16 runs on every CPU, emulated where there are no bf16 units: kept tiny).

    bf16 keeps 8 significant bits, so through VGG's 13 convolutions single pixels of an untrained net's IG map move
    by ~20 % of the map's maximum (0.19-0.23 measured over 6 seeds, 32 and 64 px); the order of the pixels holds:
    Spearman 0.94-0.98 over the same seeds. 0.85 leaves room for other CPUs' kernels, while the maps of two
    different images (what a wrong input or target would give) correlate far less."""
    from scipy.stats import spearmanr

    from attnmel.explain.attributions import integrated_gradients_maps
    from attnmel.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "attnmel", "pretrained": "none", "width": 0.125}, 2).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.ones(2, dtype=torch.long)
    fp32 = integrated_gradients_maps(model, x, t, n_steps=4, precision="fp32")
    bf16 = integrated_gradients_maps(model, x, t, n_steps=4, precision="bf16")
    assert not torch.equal(fp32, bf16)  # bf16 really ran
    rho = [spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(fp32, bf16)]
    other = spearmanr(fp32[0].flatten(), bf16[1].flatten()).statistic
    assert min(rho) > 0.85 and other < min(rho) - 0.2, (rho, other)


def test_ig_ceiling_counts_vgg16_convolutions_twice_per_step():
    """Forward + input gradient of a 3x3 convolution: 2 x (2 Cin Cout 9 H W) flops; VGG-16's 13 of them are
    nearly all of AttnMel-CNN's arithmetic (the attention gates and the classifier add a few percent)."""
    size, steps = 32, 4
    macs, c_in, hw = 0, 3, size
    for v in VGG16:
        if v == "M":
            hw //= 2
        else:
            macs += c_in * v * 9 * hw * hw
            c_in = v
    hand_gflop = 2 * 2 * macs * steps / 1e9
    r = ig_ceiling(now_s_per_image=1.0, n_steps=steps, size=size, width=1.0)
    assert hand_gflop <= r["gflop_per_image"] <= 1.1 * hand_gflop
    assert r["matmul_gflops"] > 0
    assert r["floor_s_per_image"] == pytest.approx(r["gflop_per_image"] / r["matmul_gflops"], abs=1e-3)


class _Cubic(torch.nn.Module):
    """logits = [0, sum x^3]: along the path a x the integrand 3 a^2 x^3 is quadratic in a, so one Gauss-Legendre
    point (a = 1/2) gives 3/4 of the exact attribution x^3 and two points give it exactly."""

    def forward(self, x: torch.Tensor):
        s = (x ** 3).flatten(1).sum(dim=1)
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(s), s], dim=1))


def test_ig_convergence_matches_gauss_legendre_by_hand():
    from attnmel.bench.report import ig_convergence

    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.1  # sum x^3 > 0: class 1
    r = ig_convergence(_Cubic(), x, steps=(1, 2), reference_steps=8)["by_steps"]
    assert r["1"]["completeness_error_median"] == pytest.approx(0.25, abs=1e-3)
    assert r["1"]["share_within_5_percent"] == 0.0
    assert r["2"]["completeness_error_median"] == pytest.approx(0.0, abs=1e-4)
    for n in ("1", "2"):  # |3/4 x^3| ranks pixels as |x^3| does
        assert r[n]["spearman"] == pytest.approx(1.0) and r[n]["jaccard_binarised"] == pytest.approx(1.0)


@pytest.mark.parametrize("env", [{"ATTNMEL_BENCH_IG_IMAGES": "two"}, {"ATTNMEL_BENCH_REPORT_LIMIT": "-3"},
                                 {"ATTNMEL_BENCH_IG_CONVERGENCE_RUN": "no/such/run"}])
def test_report_bench_refuses_a_bad_setting_before_any_work(env, tmp_path, monkeypatch):
    from attnmel.bench import report
    from attnmel.errors import AttnMelError

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(report, "_dataset", lambda root: pytest.fail("the bench started work"))
    name, value = next(iter(env.items()))
    with pytest.raises(AttnMelError, match=f"{name}|{value}") as err:
        report.run(tmp_path / "report.json")
    assert "\n" not in str(err.value) and not (tmp_path / "report.json").exists()
