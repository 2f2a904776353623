"""Learning-rate schedules (``optim.schedule``): the step schedule and cosine with warm-up, against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from attnmel.errors import AttnMelError
from attnmel.train.optim import configure_optimisers


def _lrs(optim_cfg: dict, epochs: int) -> list[float]:
    model = torch.nn.Linear(2, 1)
    out = configure_optimisers(model, optim_cfg, max_epochs=epochs)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_with_warmup_matches_the_formula():
    lrs = _lrs({"name": "sgd", "lr": 0.1, "schedule": "cosine", "warmup_epochs": 2}, 10)
    # warm-up: 1/3, 2/3 of the peak; then 0.5 (1 + cos(pi t / 8)) for t = 0..7
    expect = [0.1 / 3, 0.2 / 3] + [0.05 * (1 + math.cos(math.pi * t / 8)) for t in range(8)]
    assert lrs == pytest.approx(expect, rel=1e-9)
    assert min(lrs) > 0  # no epoch trains at lr 0


def test_step_schedule_is_still_the_default():
    lrs = _lrs({"name": "sgd", "lr": 1.0, "step_size": 3, "gamma": 0.5}, 7)
    assert lrs == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])


def test_unknown_schedule_is_one_line():
    with pytest.raises(AttnMelError, match="optim.schedule"):
        _lrs({"name": "sgd", "lr": 0.1, "schedule": "poly"}, 2)
