"""Config loading: defaults, YAML, overrides, validation, and the one-line errors."""

import copy
from pathlib import Path

import pytest

from attnmel import config as config_mod
from attnmel.errors import AttnMelError
from attnmel.io import atomic_path, write_json

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_every_shipped_experiment_config_loads():
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        cfg = config_mod.load_config(path)
        assert cfg["name"] == path.stem
        assert cfg["data"]["image_size"] % 32 == 0


def test_paper_recipe_in_isic2017_config():
    cfg = config_mod.load_config(EXPERIMENTS / "isic2017.yaml")
    assert cfg["optim"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0001,
                            "schedule": "step", "warmup_epochs": 0, "step_size": 10, "gamma": 0.1,
                            "ema": 0.0}  # the paper averages no weights
    assert cfg["data"]["epoch_repeats"] == 2 and cfg["data"]["oversample"] == 4
    assert cfg["loss"]["name"] == "focal" and cfg["loss"]["gamma"] == 2.0
    assert config_mod.load_config(EXPERIMENTS / "isic2016.yaml")["data"]["epoch_repeats"] == 5


def test_the_fp32_cpu_recipe_is_the_bf16_one_made_smaller():
    # Two copies of one recipe drift apart unless something holds them together.
    bf16 = config_mod.load_config(EXPERIMENTS / "isic2017_cpu.yaml")
    fp32 = config_mod.load_config(EXPERIMENTS / "isic2017_cpu_fp32.yaml")
    assert set(config_mod.changed_keys(bf16, fp32)) == {"name", "model.width", "data.resize", "data.image_size",
                                                        "trainer.max_epochs"}
    assert (fp32["model"]["width"], fp32["data"]["resize"], fp32["data"]["image_size"]) == (0.25, 112, 96)


def test_overrides_are_parsed_as_yaml_values(tmp_path):
    cfg = config_mod.load_config(None, ["optim.lr=0.5", "model.attention_layers=[pool4]", "name=x",
                                        "trainer.early_stopping_patience=null", "data.root=/a/b"])
    assert cfg["optim"]["lr"] == 0.5
    assert cfg["model"]["attention_layers"] == ["pool4"]
    assert cfg["trainer"]["early_stopping_patience"] is None
    assert cfg["data"]["root"] == "/a/b"
    assert cfg["name"] == "x"


def test_unknown_key_names_the_file_and_suggests(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  nmae: attnmel\n")
    with pytest.raises(AttnMelError) as e:
        config_mod.load_config(p)
    assert str(p) in str(e.value) and "model.nmae" in str(e.value) and "model.name" in str(e.value)
    with pytest.raises(AttnMelError, match="command line: unknown config key 'optim.lrr'"):
        config_mod.load_config(None, ["optim.lrr=1"])


def test_free_form_sections_accept_any_key():
    cfg = config_mod.load_config(None, ["loss.params.beta=3", "loss.weights.pool3=0.5"])
    assert cfg["loss"]["params"] == {"beta": 3}
    assert cfg["loss"]["weights"] == {"pool3": 0.5}


@pytest.mark.parametrize("text, problem", [
    ("a: [1, 2\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "must be a YAML mapping"),
])
def test_malformed_yaml(tmp_path, text, problem):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(AttnMelError, match=problem):
        config_mod.read_yaml(p)


def test_validation_of_sizes_and_classes():
    with pytest.raises(AttnMelError, match="multiple of 32"):
        config_mod.load_config(None, ["data.image_size=100"])
    with pytest.raises(AttnMelError, match="num_classes"):
        config_mod.load_config(None, ["data.num_classes=4"])
    with pytest.raises(AttnMelError, match="not of the form key=value"):
        config_mod.load_config(None, ["justakey"])
    with pytest.raises(AttnMelError, match="must be a mapping"):
        config_mod.load_config(None, ["data=3"])


def test_config_round_trips_through_dump():
    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml")
    import yaml

    assert yaml.safe_load(config_mod.dump(cfg)) == cfg


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"auc": 0.9})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{") and '"auc": 0.9' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    write_json(tmp_path / "m.json", {})
    mode = stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_cpu_recipe_for_real_isic2017_and_its_new_keys():
    cfg = config_mod.load_config(EXPERIMENTS / "isic2017_cpu.yaml")
    d = cfg["data"]
    assert cfg["model"]["pretrained"] == "none" and cfg["model"]["name"] == "attnmel"
    assert d["color_constancy"] == "shades_of_gray" and d["holdout"] == 0.15 and d["tta"] is True
    assert cfg["optim"]["schedule"] == "cosine"
    for bad, key in [("data.holdout=0", "data.holdout"), ("data.holdout=0.95", "data.holdout"),
                     ("data.crop_scale=[0.5]", "data.crop_scale"), ("data.crop_scale=[0.9,0.5]", "data.crop_scale"),
                     ("data.rotation=200", "data.rotation"), ("data.color_jitter=1.0", "data.color_jitter"),
                     ("data.color_constancy=grey_world", "data.color_constancy"), ("data.tta=1", "data.tta"),
                     ("loss.label_smoothing=-0.1", "loss.label_smoothing"), ("optim.schedule=poly", "optim.schedule"),
                     ("optim.warmup_epochs=-1", "optim.warmup_epochs")]:
        with pytest.raises(AttnMelError, match=key.replace(".", r"\.")) as e:
            config_mod.load_config(None, [bad])
        assert "\n" not in str(e.value)
    ok = config_mod.load_config(None, ["data.holdout=null", "data.crop_scale=[0.2,1]", "data.color_constancy=null"])
    assert ok["data"]["holdout"] is None and ok["data"]["crop_scale"] == [0.2, 1]


def test_a_key_missing_from_an_older_config_counts_as_its_default():
    """A run saved before a key existed (here optim.ema) is still the same run, so it resumes; a real change of
    that key, or of any other, is still found."""
    new = config_mod.load_config(None, [])
    old = copy.deepcopy(new)
    del old["optim"]["ema"]
    assert config_mod.frozen_changes(old, new) == []
    assert config_mod.frozen_changes(old, config_mod.load_config(None, ["optim.ema=0.99"])) == ["optim.ema"]
    assert config_mod.frozen_changes(old, config_mod.load_config(None, ["optim.lr=0.5"])) == ["optim.lr"]
