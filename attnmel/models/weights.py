"""Backbone weights: ``model.pretrained`` = ``imagenet`` | ``none`` | a path to a state dict.

``imagenet`` uses torchvision's published checkpoint for the backbone's architecture. It is read from
the torch hub cache (``<torch hub dir>/checkpoints/<file>``) or downloaded there; when it is neither
cached nor downloadable the user gets one error saying where to get the file and where to put it.
A model never silently falls back to random weights.

A local file must be a state dict in torchvision's key layout (a full torchvision model's state dict is
fine: its ImageNet classifier head is ignored). It is read with ``torch.load(weights_only=True)``.
Only backbone keys are taken; the layers AttnMel adds on top keep their fresh init.
"""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch

from attnmel.errors import AttnMelError, file_error
from attnmel.io import atomic_path
from attnmel.models.base import Classifier

log = logging.getLogger(__name__)

# torchvision weights enum member per architecture (looked up lazily: importing them is cheap, but keeps
# this table the single place that says which checkpoint each backbone uses).
IMAGENET_WEIGHTS: dict[str, tuple[str, str]] = {
    "vgg16_bn": ("VGG16_BN_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V2"),
    "densenet121": ("DenseNet121_Weights", "IMAGENET1K_V1"),
}
DOWNLOAD_TIMEOUT_S = 30.0


def parse_pretrained(value: Any) -> str | Path | None:
    """Normalise ``model.pretrained``: ``"imagenet"``, ``None`` (from scratch) or a ``Path``."""
    if value is None or value is False:
        return None
    if not isinstance(value, (str, Path)):
        raise AttnMelError(f"model.pretrained must be imagenet, none or a file path, got {value!r}")
    text = str(value).strip()
    if text.lower() in ("none", "null", "false", "scratch", ""):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    return Path(text).expanduser()


def apply_pretrained(model: Classifier, pretrained: Any) -> Classifier:
    """Load the weights ``pretrained`` names into ``model``'s backbone (in place); return the model."""
    spec = parse_pretrained(pretrained)
    if spec is None:
        return model
    if spec == "imagenet":
        if model.width != 1.0:
            raise AttnMelError(f"model.width={model.width} has no ImageNet weights: use model.width=1.0 "
                               "or model.pretrained=none")
        path = imagenet_checkpoint(model.torchvision_arch)
        try:
            state = read_state_dict(path)
        except AttnMelError as e:
            raise AttnMelError(f"{e} (a broken cached ImageNet checkpoint: delete it to download it again)") from None
    else:
        path = Path(spec)
        if not path.is_file():
            raise file_error(path, "weights file not found (model.pretrained)")
        state = read_state_dict(path)
    load_backbone(model, state, path)
    log.info("loaded %s backbone weights from %s", model.torchvision_arch, path)
    return model


def imagenet_url(arch: str) -> str:
    """URL of torchvision's ImageNet checkpoint for ``arch``."""
    import torchvision.models as tvm

    enum_name, member = IMAGENET_WEIGHTS[arch]
    return getattr(getattr(tvm, enum_name), member).url


def hub_checkpoint_dir() -> Path:
    """Where torch hub (and so torchvision) caches checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_checkpoint(arch: str) -> Path:
    """Path of the cached ImageNet checkpoint for ``arch``, downloading it first if needed."""
    url = imagenet_url(arch)
    dst = hub_checkpoint_dir() / Path(url).name
    if dst.is_file():
        return dst
    try:
        _download(url, dst)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise AttnMelError(
            f"ImageNet weights for {arch} are not cached and cannot be downloaded ({reason}): download "
            f"{url} and put it at {dst}, or set model.pretrained=/path/to/{dst.name} "
            "(or model.pretrained=none to train from scratch)") from None
    return dst


def _download(url: str, dst: Path) -> None:
    """Download ``url`` to ``dst`` with a timeout (never hangs offline), checking torchvision's hash prefix."""
    m = re.search(r"-([a-f0-9]+)\.", Path(url).name)
    sha = hashlib.sha256()
    log.info("downloading %s to %s", url, dst)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, atomic_path(dst) as tmp:
        with open(tmp, "wb") as f:
            while chunk := resp.read(1 << 20):
                sha.update(chunk)
                f.write(chunk)
        if m and not sha.hexdigest().startswith(m.group(1)):
            raise file_error(url, "downloaded file does not match its published hash; try again")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``; unreadable or not-a-state-dict -> AttnMelError."""
    try:
        try:
            # mmap: only the backbone's pages are read (a full VGG-16 file is 550 MB, mostly fc6).
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file (pickle, zip, EOF, runtime)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise file_error(path, f"cannot read weights file ({first})") from None
    # Accept the usual wrappers around a state dict (a checkpoint with "state_dict", DDP "module.").
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise file_error(path, "not a state dict (expected a mapping of parameter names to tensors)")
    # DDP's "module." and an AttnMel run checkpoint's "model." (e.g. a segmenter's best.ckpt, whose encoder
    # is in torchvision's layout: the mask pre-training of experiments/isic2017_cpu_seg.yaml).
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_backbone(model: Classifier, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Copy the backbone tensors of ``state_dict`` into ``model``; mismatching keys -> AttnMelError."""
    state_dict = model.remap_torchvision_keys(dict(state_dict))
    own = model.state_dict()
    wanted = model.backbone_keys()
    # Old checkpoints predate BatchNorm's counter; it carries no learnt value.
    missing = [k for k in wanted if k not in state_dict and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
             for k in wanted if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or wrong:
        detail = (f"{len(missing)} missing key(s), e.g. {missing[0]}" if missing
                  else f"{len(wrong)} shape mismatch(es), e.g. {wrong[0]}")
        width = f" at model.width={model.width}" if model.width != 1.0 else ""
        raise file_error(path, f"keys do not match the {model.torchvision_arch} backbone{width} "
                               f"in torchvision's layout ({detail})")
    model.load_state_dict({k: state_dict[k] for k in wanted if k in state_dict}, strict=False)
