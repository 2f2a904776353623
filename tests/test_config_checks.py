"""Config values: every key is type- and range-checked in one line (issue 13, from tests/test_robustness.py)."""

from __future__ import annotations

import pytest
import torch

from attnmel import config as config_mod
from attnmel.errors import AttnMelError
from tests._faults import EXPERIMENTS


# -- 1. config values --------------------------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("trainer.max_epochs=abc", "trainer.max_epochs"), ("data.oversample=abc", "data.oversample"),
    ("seed=abc", "seed"), ("data.batch_size=-4", "data.batch_size"), ("data.batch_size=0", "data.batch_size"),
    ("trainer.precision=99", "trainer.precision"), ("data.resize=abc", "data.resize"),
    ("data.num_workers=-1", "data.num_workers"), ("optim.lr=-1", "optim.lr"), ("data.root=", "data.root"),
    ("trainer.devices=0", "trainer.devices"), ("data.center_crop=2", "data.center_crop"),
])
def test_every_config_value_is_type_and_range_checked(override, key):
    with pytest.raises(AttnMelError) as e:
        config_mod.load_config(EXPERIMENTS / "synthetic.yaml", [override])
    msg = str(e.value)
    assert msg.startswith(f"config: {key} must be ") and "\n" not in msg


def test_every_key_of_defaults_yaml_has_a_check():
    # A key added to defaults.yaml without a type/range check would slip through validation unchecked.
    defaults = config_mod.defaults()
    free_form = {k for k in config_mod.leaf_keys(defaults) if config_mod.get(defaults, k) == {}}
    assert set(config_mod.CHECKS) == set(config_mod.leaf_keys(defaults)) - free_form
    config_mod.validate(config_mod.load_config(None))  # and the defaults pass their own checks


def test_a_number_yaml_reads_as_a_string_is_accepted():
    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml", ["optim.lr=1e-3"])
    assert cfg["optim"]["lr"] == pytest.approx(0.001)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_trainer_settings_lightning_refuses_name_the_key(tmp_path):
    from attnmel.train.run import build_trainer

    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml", ["trainer.accelerator=gpu"])
    with pytest.raises(AttnMelError) as e:
        build_trainer(cfg, tmp_path)
    assert str(e.value).startswith("config: trainer.accelerator='gpu'") and "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("bf16, says_fp32", [("off", True), ("on", False)])
def test_auto_precision_says_when_the_cpu_trains_in_fp32(tmp_path, monkeypatch, caplog, bf16, says_fp32):
    # ATTNMEL_BF16 stands in for the two kinds of CPU, so the test holds on both.
    from attnmel.train.run import build_trainer

    monkeypatch.setenv("ATTNMEL_BF16", bf16)
    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml", ["trainer.precision=auto"])
    with caplog.at_level("INFO", logger="attnmel.train"):
        trainer = build_trainer(cfg, tmp_path)
    said = [r.getMessage() for r in caplog.records if "no bf16 units" in r.getMessage()]
    assert bool(said) is says_fp32
    assert ("bf16" in str(trainer.precision)) is not says_fp32
