"""Saliency maps of any classifier that follows the ClassifierOutput contract (see docs/DESIGN.md).

- :func:`attention_maps`: the model's own attention maps (``ClassifierOutput.maps``), no gradients.
- :func:`gradcam_maps`: captum ``LayerGradCam`` on ``model.gradcam_layer`` (layer resolution).
- :func:`integrated_gradients_maps`: captum ``IntegratedGradients`` (input resolution).
All take a batch (B, 3, H, W) and return (B, h, w) float tensors on the CPU, ready for
:func:`attnmel.explain.maps.attention_quality`. The model runs in eval mode (BatchNorm running
statistics, no dropout) and its previous mode is restored afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from captum.attr import IntegratedGradients, LayerGradCam
from torch import nn

from attnmel.errors import AttnMelError
from attnmel.explain.baselines import _device_of, _resolve_target, cam_maps

DEFAULT_IG_STEPS = 32
DEFAULT_IG_INTERNAL_BATCH = 32


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _forward_logits(model: nn.Module):
    # captum wants a function returning the (B, K) scores; our models return a ClassifierOutput.
    return lambda x: model(x).logits


def _targets(model: nn.Module, x: torch.Tensor, target: str | int, melanoma_index: int) -> torch.Tensor:
    logits = None
    if target == "predicted":
        with torch.no_grad():
            logits = model(x).logits
    return _resolve_target(target, logits, melanoma_index, x.shape[0], x.device)


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's attention maps by layer name, each (B, h, w); empty for non-attention models."""
    with _eval_mode(model):
        out = model(images.to(_device_of(model)))
    return {name: m.detach().float().squeeze(1).cpu() for name, m in out.maps.items()}


def gradcam_maps(model: nn.Module, images: torch.Tensor, target: str | int = "melanoma",
                 melanoma_index: int = 1, relu: bool = True) -> torch.Tensor:
    """Grad-CAM (B, h, w) at ``model.gradcam_layer``'s resolution, for the ``target`` class.

    ``target``: ``"melanoma"`` (class ``melanoma_index``), ``"predicted"`` or a class index. ``relu``
    keeps only evidence for the class (the Grad-CAM paper's choice).
    """
    layer = getattr(model, "gradcam_layer", None)
    if not isinstance(layer, nn.Module):
        raise AttnMelError(f"{type(model).__name__} has no gradcam_layer module; Grad-CAM needs one")
    with _eval_mode(model):
        x = images.to(_device_of(model))
        tgt = _targets(model, x, target, melanoma_index)
        gc = LayerGradCam(_forward_logits(model), layer)
        attr = gc.attribute(x, target=tgt, relu_attributions=relu)
    return attr.detach().float().sum(dim=1).cpu()


def integrated_gradients_maps(model: nn.Module, images: torch.Tensor, target: str | int = "melanoma",
                              melanoma_index: int = 1, n_steps: int = DEFAULT_IG_STEPS,
                              internal_batch_size: int | None = DEFAULT_IG_INTERNAL_BATCH,
                              baseline: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Integrated Gradients (B, H, W): |attribution| summed over the colour channels.

    The default baseline 0 is, on normalised input, the dataset's mean colour (a "no lesion"
    image). ``internal_batch_size`` bounds how many interpolated images go through the model at once
    (memory); ``None`` runs all ``B x n_steps`` together.
    """
    if n_steps < 1:
        raise AttnMelError(f"integrated gradients needs n_steps >= 1; got {n_steps}")
    with _eval_mode(model):
        x = images.to(_device_of(model))
        tgt = _targets(model, x, target, melanoma_index)
        ig = IntegratedGradients(_forward_logits(model))
        attr = ig.attribute(x, baselines=baseline, target=tgt, n_steps=n_steps,
                            internal_batch_size=internal_batch_size)
    return attr.detach().float().abs().sum(dim=1).cpu()


def explain_batch(model: nn.Module, images: torch.Tensor,
                  methods: Sequence[str] = ("attention", "gradcam"), target: str | int = "melanoma",
                  melanoma_index: int = 1, ig_steps: int = DEFAULT_IG_STEPS,
                  ig_internal_batch: int | None = DEFAULT_IG_INTERNAL_BATCH) -> dict[str, torch.Tensor]:
    """Several methods at once: ``{"attention:<layer>", "gradcam", "ig", "cam": (B, h, w)}``.

    ``methods`` is any of ``attention``, ``gradcam``, ``ig``, ``cam`` (CAM needs ``vgg16_gap``); every
    gradient/CAM method explains the same ``target``.
    """
    known = {"attention", "gradcam", "ig", "cam"}
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise AttnMelError(f"unknown explanation method(s) {unknown}; known: {sorted(known)}")
    out: dict[str, torch.Tensor] = {}
    if "attention" in methods:
        out.update({f"attention:{k}": v for k, v in attention_maps(model, images).items()})
    if "gradcam" in methods:
        out["gradcam"] = gradcam_maps(model, images, target, melanoma_index)
    if "ig" in methods:
        out["ig"] = integrated_gradients_maps(model, images, target, melanoma_index, ig_steps, ig_internal_batch)
    if "cam" in methods:
        out["cam"] = cam_maps(model, images, target, melanoma_index)
    return out
