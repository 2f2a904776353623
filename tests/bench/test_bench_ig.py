"""The Integrated Gradients bench (``make bench``, report part) at a tiny size: it runs, its fast path computes
what the former settings computed, and its arithmetic count matches a hand count of VGG-16's convolutions."""

from __future__ import annotations

import pytest

from attnmel.bench.report import ig_ceiling, ig_speed

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def test_ig_speed_bench_runs_and_both_paths_agree():
    r = ig_speed(n_images=1, size=32, width=0.125, n_steps=2, corr_steps=2)
    assert r["n_images"] == 1 and r["before_s_per_image"] > 0 and r["now_s_per_image"] > 0
    assert r["speedup"] > 0
    # BatchNorm folding and channels-last change the arithmetic order only.
    assert r["max_relative_difference_now_vs_before"] < 1e-4
    assert r["bf16_vs_fp32"]["spearman"] > 0.5
    assert r["fp32_ceiling"]["now_s_per_image"] == r["now_s_per_image"]


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
