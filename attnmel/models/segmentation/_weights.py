"""Weight loading for the segmenters' ResNet-50 encoders.

Reuses :mod:`attnmel.models.weights` (the classifiers' loader) for the rules of docs/DESIGN.md
("Weights"): ``none``; ``imagenet`` (torchvision's checkpoint from the hub cache or downloaded, with
one error saying where to get the file when offline); or a path to a state dict in torchvision's key
layout, read with ``weights_only=True``. What is segmenter-specific is :func:`load_into`: the
classifiers' ``load_backbone`` is tied to their ``Classifier`` base, the segmenters are plain modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from attnmel.errors import file_error
from attnmel.models.weights import imagenet_checkpoint, parse_pretrained, read_state_dict

StateDict = dict[str, Tensor]


def load_state_dict_file(path: str | Path) -> StateDict:
    """Read a state dict file (``weights_only=True``; ``state_dict``/``module.`` wrappers undone)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise file_error(path, "weights file not found (model.pretrained)")
    return read_state_dict(path)


def imagenet_resnet50_state_dict() -> StateDict:
    """torchvision's ImageNet ResNet-50 weights (hub cache, else download, else a one-line error)."""
    return read_state_dict(imagenet_checkpoint("resnet50"))


def resnet50_state_dict(pretrained: Any) -> StateDict | None:
    """The ResNet-50 state dict that ``model.pretrained`` names (None for ``none``)."""
    spec = parse_pretrained(pretrained)
    if spec is None:
        return None
    if spec == "imagenet":
        return imagenet_resnet50_state_dict()
    return load_state_dict_file(spec)


def load_into(module: nn.Module, state: StateDict, source: str | Path, ignore: tuple[str, ...] = ()) -> None:
    """Strictly load ``state`` into ``module``, ignoring keys that start with any of ``ignore``.

    Raises a one-line error naming ``source`` when keys or shapes do not match, so a file in the
    wrong layout is reported instead of silently leaving random weights.
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore)}
    # FrozenBatchNorm2d has no num_batches_tracked; a BatchNorm2d file may, and that is harmless.
    state = {k: v for k, v in state.items() if k in own or not k.endswith("num_batches_tracked")}
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise file_error(source, "does not match the model's torchvision key layout: " + ", ".join(parts))
    module.load_state_dict(state, strict=False)
