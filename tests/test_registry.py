"""The one registry pattern: decorator keyed by name, tags, one-line errors listing the known names."""

from __future__ import annotations

import pytest
import torch

from attnmel.errors import AttnMelError
from attnmel.losses import LOSSES, REGULARISERS
from attnmel.models import MODELS
from attnmel.registry import Registry
from attnmel.train.optim import OPTIMISERS, configure_optimisers


def test_register_get_tags_and_errors() -> None:
    reg: Registry = Registry("widget", key="thing.name")

    @reg.register("a", task="x")
    def make_a() -> str:
        return "a"

    reg.register("b", task="y")(lambda: "b")
    assert reg.get("a") is make_a and reg["a"]() == "a" and "b" in reg and len(reg) == 2
    assert reg.names() == ("a", "b") and reg.names(task="y") == ("b",) and reg.tags("a") == {"task": "x"}
    with pytest.raises(AttnMelError, match=r"^unknown thing.name 'c'; known: a, b$"):
        reg.get("c")
    with pytest.raises(AttnMelError, match=r"^thing.name 'a' is not a y widget; known: b$"):
        reg.get("a", task="y")
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(make_a)
    reg.unregister("a")
    assert reg.names() == ("b",)


def test_every_named_kind_is_registered() -> None:
    assert MODELS.names(task="classification") == ("attnmel", "mel_cnn", "vgg16", "vgg16_gap", "resnet50",
                                                   "densenet121")
    assert MODELS.names(task="segmentation") == ("unet", "fcrn", "maskrcnn", "segnet")
    assert MODELS.tags("fcrn")["options"] == ("fuse_strides",)
    assert set(LOSSES.names(task="classification")) == {"focal", "ce"}
    assert set(LOSSES.names(task="segmentation")) == {"dice", "bce", "dice_bce"}
    assert set(REGULARISERS.names()) == {"none", "lesion", "dermo", "background", "kl", "outside", "entropy",
                                         "rrr"}
    assert set(OPTIMISERS.names()) == {"sgd", "adamw"}


def test_optimisers_from_config() -> None:
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # frozen parameters are left out
    conf = configure_optimisers(model, {"name": "SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                        "weight_decay": 0.0, "step_size": 2, "gamma": 0.5})
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert [p for g in opt.param_groups for p in g["params"]] == [model.weight]
    assert (sched.step_size, sched.gamma) == (2, 0.5)
    adamw = configure_optimisers(model, {"name": "adamw", "lr": 0.01, "weight_decay": 0.1})["optimizer"]
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.1
    with pytest.raises(AttnMelError, match="nesterov needs optim.momentum"):
        configure_optimisers(model, {"name": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": True})
    with pytest.raises(AttnMelError, match="unknown optim.name 'rmsprop'; known: sgd, adamw"):
        configure_optimisers(model, {"name": "rmsprop", "lr": 0.1})
