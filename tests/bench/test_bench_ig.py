"""The Integrated Gradients bench (``make bench``, report part) at a tiny size: it runs, and its fast path
computes what the former settings computed."""

from __future__ import annotations

from attnmel.bench.report import ig_speed


def test_ig_speed_bench_runs_and_both_paths_agree():
    r = ig_speed(n_images=1, size=32, width=0.125, n_steps=2, corr_steps=2)
    assert r["n_images"] == 1 and r["before_s_per_image"] > 0 and r["now_s_per_image"] > 0
    assert r["speedup"] == round(r["before_s_per_image"] / r["now_s_per_image"], 2) or r["speedup"] > 0
    # BatchNorm folding and channels-last change the arithmetic order only.
    assert r["max_relative_difference_now_vs_before"] < 1e-4
    assert -1.0 <= r["bf16_vs_fp32"]["spearman"] <= 1.0 and r["bf16_vs_fp32"]["spearman"] > 0.5
