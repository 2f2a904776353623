"""``ATTNMEL_BF16``: the one switch that makes ``precision: auto`` (training and Integrated Gradients) resolve as on
a CPU without bf16 units (``off``) or with them (``on``), whatever this CPU has."""

from __future__ import annotations

import pytest
import torch

from attnmel.errors import AttnMelError
from attnmel.explain.attributions import ig_autocast
from attnmel.models.precision import cpu_has_bf16, has_fast_bf16
from attnmel.train.run import resolve_precision

pytestmark = pytest.mark.precision

CPU_AUTO = {"trainer": {"precision": "auto", "accelerator": "cpu"}}


@pytest.mark.parametrize(("mode", "bf16"), [("off", False), ("on", True), ("OFF", False)])
def test_switch_decides_auto_for_training_and_ig(mode, bf16, monkeypatch):
    monkeypatch.setenv("ATTNMEL_BF16", mode)
    assert has_fast_bf16("cpu") is bf16
    assert resolve_precision(CPU_AUTO) == ("bf16-mixed" if bf16 else "32-true")
    assert ig_autocast("auto", torch.device("cpu")) is bf16
    # An explicit precision is not the switch's business.
    assert ig_autocast("fp32", torch.device("cpu")) is False and ig_autocast("bf16", torch.device("cpu")) is True
    assert resolve_precision({"trainer": {"precision": "32-true", "accelerator": "cpu"}}) == "32-true"


@pytest.mark.parametrize("mode", [None, "auto", ""])
def test_unset_or_auto_asks_the_hardware(mode, monkeypatch):
    if mode is None:
        monkeypatch.delenv("ATTNMEL_BF16", raising=False)
    else:
        monkeypatch.setenv("ATTNMEL_BF16", mode)
    assert has_fast_bf16("cpu") is cpu_has_bf16()
    assert resolve_precision(CPU_AUTO) == ("bf16-mixed" if cpu_has_bf16() else "32-true")


def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("ATTNMEL_BF16", "yes")
    with pytest.raises(AttnMelError, match="ATTNMEL_BF16.*'yes'") as err:
        resolve_precision(CPU_AUTO)
    assert "\n" not in str(err.value)
