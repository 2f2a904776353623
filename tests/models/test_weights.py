"""Backbone weights: local torchvision-layout files, bad files, ImageNet offline."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from attnmel.errors import AttnMelError
from attnmel.models import build_model
from attnmel.models import weights as weights_mod


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full torchvision vgg16_bn state dict (random init, classifier head included)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "vgg16_bn_random.pth"
    torch.save(torchvision.models.vgg16_bn(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vgg_state(vgg_file: Path) -> dict[str, torch.Tensor]:
    return torch.load(vgg_file, weights_only=True)


@pytest.mark.parametrize("name", ["attnmel", "mel_cnn", "vgg16_gap"])
def test_local_torchvision_file_loads_the_backbone(name: str, vgg_file: Path, vgg_state: dict) -> None:
    model = build_model({"name": name, "pretrained": str(vgg_file)}, 2)
    own = model.state_dict()
    backbone = [k for k in vgg_state if k.startswith("features.")]
    assert len(backbone) == 6 * 13 + 13  # conv w/b + bn w/b/mean/var/count, 13 blocks
    for k in backbone:
        assert torch.equal(own[k], vgg_state[k]), k
    assert model.classifier.weight.shape[0] == 2  # the ImageNet head was ignored


@pytest.mark.slow  # seconds each: make test stays under 2 minutes; make test-slow (CI) runs it
def test_vgg16_also_takes_fc6_fc7(vgg_file: Path, vgg_state: dict) -> None:
    model = build_model({"name": "vgg16", "pretrained": str(vgg_file)}, 2)
    own = model.state_dict()
    for k in ("features.40.weight", "classifier.0.weight", "classifier.3.bias"):
        assert torch.equal(own[k], vgg_state[k]), k
    assert own["classifier.6.weight"].shape == (2, 4096)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(AttnMelError, match="nope.pth.*not found"):
        build_model({"name": "attnmel", "pretrained": str(path)}, 2)


@pytest.mark.parametrize("content", [b"this is not a checkpoint", b"PK\x03\x04truncated zip"])
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(AttnMelError, match="broken.pth: cannot read") as e:
        build_model({"name": "attnmel", "pretrained": str(path), "width": 0.125}, 2)
    assert "\n" not in str(e.value)


def test_truncated_real_file(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), good)
    bad = tmp_path / "cut.pth"
    bad.write_bytes(good.read_bytes()[: 200_000])
    with pytest.raises(AttnMelError, match="cut.pth"):
        build_model({"name": "resnet50", "pretrained": str(bad)}, 2)


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(AttnMelError, match="numbers.pth: not a state dict"):
        build_model({"name": "attnmel", "pretrained": str(path), "width": 0.125}, 2)


def test_wrong_architecture(tmp_path: Path, vgg_file: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(AttnMelError, match="resnet18.pth: keys do not match the vgg16_bn backbone"):
        build_model({"name": "attnmel", "pretrained": str(path)}, 2)
    with pytest.raises(AttnMelError, match="resnet18.pth: keys do not match the resnet50 backbone.*missing"):
        build_model({"name": "resnet50", "pretrained": str(path)}, 2)
    with pytest.raises(AttnMelError, match="vgg16_bn_random.pth: .*width=0.25"):
        build_model({"name": "attnmel", "pretrained": str(vgg_file), "width": 0.25}, 2)


def test_resnet50_file_and_ddp_wrapper(tmp_path: Path) -> None:
    torch.manual_seed(2)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50_ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = build_model({"name": "resnet50", "pretrained": str(path)}, 3)
    assert torch.equal(model.state_dict()["layer4.2.conv3.weight"], sd["layer4.2.conv3.weight"])
    assert model.fc.weight.shape == (3, 2048)


def test_densenet_old_style_keys_are_renamed(tmp_path: Path) -> None:
    torch.manual_seed(3)
    sd = torchvision.models.densenet121(weights=None).state_dict()
    # torchvision's published DenseNet files say 'norm.1' where the module now says 'norm1'.
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in sd.items()}
    assert old.keys() != sd.keys()
    path = tmp_path / "densenet121_old.pth"
    torch.save(old, path)
    model = build_model({"name": "densenet121", "pretrained": str(path)}, 2)
    own = model.state_dict()
    for k in ("features.denseblock1.denselayer1.norm1.weight", "features.denseblock4.denselayer16.conv2.weight"):
        assert torch.equal(own[k], sd[k])


def test_imagenet_offline_says_how_to_get_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url: str, dst: Path) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_mod, "_download", offline)
    with pytest.raises(AttnMelError) as e:
        build_model({"name": "attnmel", "pretrained": "imagenet"}, 2)
    msg = str(e.value)
    assert "\n" not in msg
    assert "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16_bn-6c64b313.pth") in msg
    assert "model.pretrained=" in msg and "no network" in msg


def test_imagenet_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vgg_file: Path,
                                     vgg_state: dict) -> None:
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "vgg16_bn-6c64b313.pth").symlink_to(vgg_file)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(url: str, dst: Path) -> None:
        raise AssertionError("must not download a cached file")

    monkeypatch.setattr(weights_mod, "_download", no_download)
    model = build_model({"name": "attnmel", "pretrained": "imagenet"}, 2)
    assert torch.equal(model.state_dict()["features.0.weight"], vgg_state["features.0.weight"])
    with pytest.raises(AttnMelError, match="width"):
        build_model({"name": "attnmel", "pretrained": "imagenet", "width": 0.5}, 2)


def test_pretrained_none_and_bad_values() -> None:
    assert weights_mod.parse_pretrained("none") is None and weights_mod.parse_pretrained(None) is None
    assert weights_mod.parse_pretrained("ImageNet") == "imagenet"
    with pytest.raises(AttnMelError, match="pretrained"):
        weights_mod.parse_pretrained(3)


def test_broken_cached_imagenet_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "resnet50-11ad3fa6.pth").write_bytes(b"half a download")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(AttnMelError, match="resnet50-11ad3fa6.pth: cannot read.*delete it"):
        build_model({"name": "resnet50", "pretrained": "imagenet"}, 2)
