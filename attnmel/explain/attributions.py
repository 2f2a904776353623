"""Saliency maps of any classifier that follows the ClassifierOutput contract (see docs/DESIGN.md): the one
implementation that the report, ``attnmel predict`` and the bench use.

- :func:`forward_with_gradcam`: ONE forward pass gives the logits, the model's attention maps and captum's
  ``LayerGradCam`` on ``model.gradcam_layer`` of the target class, with the parameters frozen so that autograd
  records only the layers after ``gradcam_layer``.
- :func:`cam_maps`: VGG-16-GAP's class activation maps of given classes.
- :func:`integrated_gradients_maps`: captum ``IntegratedGradients`` with the training path's speed-ups (bf16
  autocast where the hardware has bf16, channels-last, frozen parameters, interpolation steps batched) and
  BatchNorm folded into the convolutions.
- :func:`explain_batch`: several of these at once, every class-specific method explaining the same target.

Maps are (B, h, w) float tensors on the CPU, ready for :func:`attnmel.explain.maps.attention_quality`. The model
runs in eval mode (BatchNorm running statistics, no dropout); its mode, ``requires_grad`` flags and memory format
are restored afterwards.
"""

from __future__ import annotations

import copy
import itertools
import numbers
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from attnmel.errors import AttnMelError

# What the class-specific maps (Grad-CAM, CAM, IG) explain unless told otherwise, in the report and in predict:
# each image's predicted class (the paper's choice for CAM).
DEFAULT_TARGET = "predicted"
# Accurate before fast: the fastest setting whose median completeness error stays within the IG paper's 5 % on the
# trained demo model (24 test images, docs/BENCHMARKS.md): 16 steps with bf16 autocast on a bf16 CPU (3.1 %,
# 0.70 s/image at 64 px; 8 steps: 8.4 %), 16 steps in fp32 elsewhere (1.6 %, 1.39 s; 8 steps: 4.9 %, too close).
DEFAULT_IG_STEPS = 16
# Interpolated images per forward/backward: enough to keep the cores busy, small enough that a 224-px VGG's
# activations stay well under a GiB.
DEFAULT_IG_INTERNAL_BATCH = 16
METHODS = ("attention", "gradcam", "cam", "ig")
IG_PRECISIONS = ("auto", "bf16", "fp32")


# -- targets ---------------------------------------------------------------------------------------------
def check_target(target: str | int) -> str | int:
    """``target`` if it is ``"predicted"``, ``"melanoma"`` or a class index, else a one-line error."""
    if target in ("predicted", "melanoma"):
        return target
    if isinstance(target, numbers.Integral) and not isinstance(target, bool) and int(target) >= 0:
        return int(target)
    raise AttnMelError(f"unknown explanation target {target!r}; use 'predicted', 'melanoma' or a class index")


def resolve_targets(target: str | int, logits: torch.Tensor, melanoma_index: int = 1) -> torch.Tensor:
    """Class index per image (B,): the argmax of ``logits`` (``"predicted"``), ``melanoma_index``
    (``"melanoma"``) or a fixed class."""
    target = check_target(target)
    if target == "predicted":
        return logits.argmax(dim=1)
    c = melanoma_index if target == "melanoma" else int(target)
    if not 0 <= c < logits.shape[1]:
        raise AttnMelError(f"explanation target class {c} is out of range for {logits.shape[1]} classes")
    return torch.full((logits.shape[0],), c, dtype=torch.long, device=logits.device)


def describe_target(target: str | int, class_names: Sequence[str], melanoma_index: int = 1) -> str:
    """Words for what the class-specific maps explain, for captions and the page (``the predicted class``)."""
    target = check_target(target)
    if target == "predicted":
        return "the predicted class"
    c = melanoma_index if target == "melanoma" else int(target)
    return f"the class '{class_names[c]}'" if c < len(class_names) else f"class {c}"


# -- model state -----------------------------------------------------------------------------------------
def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block; its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without ``requires_grad`` for the block.

    Autograd then records only what lies after the first tensor that needs a gradient (Grad-CAM: the hooked
    layer's output; IG: the input), and no weight gradient is computed: about half the cost of a backward.
    """
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _gradcam_layer(model: nn.Module) -> nn.Module:
    layer = getattr(model, "gradcam_layer", None)
    if not isinstance(layer, nn.Module):
        raise AttnMelError(f"{type(model).__name__} has no gradcam_layer module; Grad-CAM needs one")
    return layer


# -- Grad-CAM (+ logits and attention maps) from one forward ---------------------------------------------------
@dataclass
class ForwardResult:
    """One batch through the model: logits (B, K), the explained class per image (B,), attention maps
    {layer: (B, h, w)}, Grad-CAM (B, h', w') and the seconds spent in the forward itself."""

    logits: torch.Tensor
    targets: torch.Tensor
    maps: dict[str, torch.Tensor]
    gradcam: torch.Tensor
    forward_s: float
    features: torch.Tensor | None = None


def forward_with_gradcam(model: nn.Module, images: torch.Tensor, target: str | int = DEFAULT_TARGET,
                         melanoma_index: int = 1) -> ForwardResult:
    """Logits, attention maps and Grad-CAM of ``target`` from ONE forward pass.

    Grad-CAM is captum's ``LayerGradCam`` on ``model.gradcam_layer``: the layer's activations A (B, C, h, w)
    weighted by the spatial mean of d logit_target / dA per channel, summed over channels, then ReLU (the Grad-CAM
    paper's choice: evidence for the class only). The forward function captum calls returns each image's target
    logit (for ``"predicted"`` its largest logit, whose gradient is the argmax class's), so no earlier pass is
    needed to know the class; the same forward's ``ClassifierOutput`` gives the logits and attention maps.
    With the parameters frozen the backbone runs without autograd, as plain inference would.
    """
    from captum.attr import LayerGradCam

    target = check_target(target)
    layer = _gradcam_layer(model)
    seen: list[tuple[Any, float]] = []

    def forward(z: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = model(z)
        seen.append((out, time.perf_counter() - t0))
        if target == "predicted":
            return out.logits.max(dim=1, keepdim=True).values
        return out.logits.gather(1, resolve_targets(target, out.logits.detach(), melanoma_index)[:, None])

    with eval_mode(model), frozen(model), torch.enable_grad():
        x = images.to(device_of(model))
        attr = LayerGradCam(forward, layer).attribute(x, target=0, relu_attributions=True)
    out, _ = seen[-1]
    logits = out.logits.detach().float()
    return ForwardResult(logits=logits.cpu(), targets=resolve_targets(target, logits, melanoma_index).cpu(),
                         maps={k: v.detach().float()[:, 0].cpu() for k, v in out.maps.items()},
                         gradcam=attr.detach().float().sum(dim=1).cpu(), forward_s=sum(t for _, t in seen),
                         features=out.features.detach().float().cpu() if out.features is not None else None)


# -- CAM -------------------------------------------------------------------------------------------------
def cam_maps(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class activation maps (B, h, w) of ``targets`` (B,) of a model with ``class_activation_map``
    (``vgg16_gap``: the classifier weights of the class applied to the last feature map)."""
    if not callable(getattr(model, "class_activation_map", None)):
        raise AttnMelError(f"{type(model).__name__} has no class_activation_map; CAM needs the vgg16_gap model")
    with eval_mode(model), torch.inference_mode():
        cams = model.class_activation_map(images.to(device_of(model)))
    return cams[torch.arange(cams.shape[0]), targets.to(cams.device)].float().cpu()


# -- Integrated Gradients ----------------------------------------------------------------------------------
def ig_autocast(precision: str, device: torch.device) -> bool:
    """Whether IG runs under bf16 autocast: ``bf16`` always, ``fp32`` never, ``auto`` where the device computes
    bf16 natively (:func:`attnmel.models.precision.has_fast_bf16`, the check behind ``trainer.precision: auto``)."""
    from attnmel.models.precision import has_fast_bf16

    if precision not in IG_PRECISIONS:
        raise AttnMelError(f"integrated gradients precision must be one of {', '.join(IG_PRECISIONS)}; "
                           f"got {precision!r}")
    return precision == "bf16" or (precision == "auto" and has_fast_bf16(device))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every ``Conv2d`` followed by a ``BatchNorm2d`` (inside an
    ``nn.Sequential``, as in the VGG backbones) fused into one convolution (torch's ``fuse_conv_bn_eval``).

    In eval mode BatchNorm is a fixed per-channel affine map, so the fused network computes the same function
    (to float rounding) while its forward and backward skip one full pass over every activation. Modules laid out
    otherwise (ResNet/DenseNet blocks) are copied unchanged.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for mod in folded.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        children = list(mod._modules.items())
        for (name_a, a), (name_b, b) in itertools.pairwise(children):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.track_running_stats:
                mod._modules[name_a] = fuse_conv_bn_eval(a, b)
                mod._modules[name_b] = nn.Identity()
    return folded


# model -> (its parameter/buffer versions, the prepared copy): the copy is rebuilt when the weights change.
_PREPARED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def _state_signature(model: nn.Module) -> tuple:
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


def prepared_model(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """The copy of ``model`` that the explanations run: BatchNorm folded (:func:`fold_batchnorm`), parameters
    frozen (input gradients only), channels-last if asked. Cached per model until its weights change; the model
    itself is never modified.

    At 224 px on a 2-core CPU this copy runs the report's forward with Grad-CAM 1.45x faster than the model as
    trained (0.245 against 0.36 s per image, docs/BENCHMARKS.md), with maps equal to 2e-5 relative.
    """
    key = (_state_signature(model), channels_last)
    hit = _PREPARED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    prepared = fold_batchnorm(model)
    for p in prepared.parameters():
        p.requires_grad_(False)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    _PREPARED[model] = (key, prepared)
    return prepared


def integrated_gradients_maps(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                              n_steps: int = DEFAULT_IG_STEPS,
                              internal_batch_size: int | None = DEFAULT_IG_INTERNAL_BATCH,
                              precision: str = "auto", channels_last: bool = True, fold_bn: bool = True,
                              baseline: torch.Tensor | float = 0.0,
                              return_delta: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients (B, H, W) of ``targets`` (B,): |attribution| summed over the colour channels;
    ``return_delta``: also captum's convergence delta (B,), sum of the signed attributions - (f(x) - f(baseline)),
    on the CPU.

    captum's ``IntegratedGradients`` (Gauss-Legendre, ``n_steps`` points), run the way training runs plus what
    only inference allows: parameters frozen (input gradients only), BatchNorm folded into the convolutions
    (``fold_bn``, see :func:`prepared_model`), bf16 autocast where the hardware has bf16 (``precision``, see
    :func:`ig_autocast`; the input and the attributions stay fp32), channels-last, and ``internal_batch_size``
    interpolated images (of all images of the batch) per forward/backward; ``None`` runs all B x n_steps at once.
    The default baseline 0 is, on normalised input, the dataset's mean colour (a "no lesion" image).
    """
    from captum.attr import IntegratedGradients

    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise AttnMelError(f"integrated gradients needs n_steps >= 1; got {n_steps!r}")
    dev = device_of(model)
    bf16 = ig_autocast(precision, dev)
    net = prepared_model(model, channels_last) if fold_bn else model

    def forward(z: torch.Tensor) -> torch.Tensor:
        if channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        # enabled=False also switches off a caller's autocast (a run's bf16): IG's own precision decides.
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            return net(z).logits.float()

    with eval_mode(model), frozen(model), torch.enable_grad():
        if not fold_bn and channels_last:
            model.to(memory_format=torch.channels_last)
        try:
            x = images.to(dev)
            out = IntegratedGradients(forward).attribute(x, baselines=baseline, target=targets.to(dev),
                                                         n_steps=n_steps, internal_batch_size=internal_batch_size,
                                                         return_convergence_delta=return_delta)
        finally:
            if not fold_bn and channels_last:
                model.to(memory_format=torch.contiguous_format)
    attr, delta = out if return_delta else (out, None)
    maps = attr.detach().float().abs().sum(dim=1).cpu()
    return (maps, delta.detach().float().cpu()) if return_delta else maps


# -- several at once ---------------------------------------------------------------------------------------
@dataclass
class IGSettings:
    """How :func:`explain_batch` runs Integrated Gradients (see :func:`integrated_gradients_maps`)."""

    n_steps: int = DEFAULT_IG_STEPS
    internal_batch_size: int | None = DEFAULT_IG_INTERNAL_BATCH
    precision: str = "auto"
    channels_last: bool = True
    fold_bn: bool = True


@dataclass
class Explained:
    """What :func:`explain_batch` gives: logits (B, K), explained class per image (B,), maps by method key
    (``attention:<layer>``, ``gradcam``, ``cam``, ``ig``; (B, h, w) CPU float) and seconds per part."""

    logits: torch.Tensor
    targets: torch.Tensor
    maps: dict[str, torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    # IG's completeness error per image (B,): |sum of attributions - (f(x) - f(0))| / |f(x) - f(0)|.
    ig_completeness: torch.Tensor | None = None
    features: torch.Tensor | None = None  # the penultimate features (B, D) of the same forward


def explain_batch(model: nn.Module, images: torch.Tensor, methods: Sequence[str] = ("attention", "gradcam", "cam"),
                  target: str | int = DEFAULT_TARGET, melanoma_index: int = 1,
                  ig: IGSettings | None = None, prepared: bool = True) -> Explained:
    """Predictions and the maps of ``methods`` for one batch, every class-specific map explaining ``target``.

    ``methods``: any of :data:`METHODS`; ``cam`` is silently skipped for a model without
    ``class_activation_map`` (only ``vgg16_gap`` has one), so one call serves every classifier. ``prepared``:
    the forward and CAM run on :func:`prepared_model` (BatchNorm folded, channels-last; the same function to
    float rounding) rather than on ``model`` as it is. Timings: ``inference`` (the forward), ``attributions``
    (Grad-CAM's backward, CAM, IG).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise AttnMelError(f"unknown explanation method(s) {unknown}; known: {', '.join(METHODS)}")
    t0 = time.perf_counter()
    net, x = model, images
    if prepared:
        net = prepared_model(model, channels_last=True)
        x = images.to(device_of(model)).contiguous(memory_format=torch.channels_last)
    fr = forward_with_gradcam(net, x, target, melanoma_index)
    spent = time.perf_counter() - t0
    # The forward itself is the inference; the rest of the call is Grad-CAM's (small) backward.
    timings = {"inference": fr.forward_s, "attributions": spent - fr.forward_s}
    maps: dict[str, torch.Tensor] = {}
    if "attention" in methods:
        maps.update({f"attention:{k}": v for k, v in fr.maps.items()})
    t0 = time.perf_counter()
    if "cam" in methods and callable(getattr(net, "class_activation_map", None)):
        maps["cam"] = cam_maps(net, x, fr.targets)
    if "gradcam" in methods:
        maps["gradcam"] = fr.gradcam
    completeness = None
    if "ig" in methods:
        s = ig or IGSettings()
        maps["ig"], delta = integrated_gradients_maps(model, images, fr.targets, s.n_steps, s.internal_batch_size,
                                                      s.precision, s.channels_last, s.fold_bn, return_delta=True)
        completeness = delta.abs() / _ig_gap(net, x, fr)
    timings["attributions"] += time.perf_counter() - t0
    return Explained(logits=fr.logits, targets=fr.targets, maps=maps, timings=timings, features=fr.features,
                     ig_completeness=completeness)


def _ig_gap(net: nn.Module, x: torch.Tensor, fr: ForwardResult) -> torch.Tensor:
    """|f(x) - f(0)| of each image's explained class (B,): the total that IG's attributions must add up to, from
    the forward's logits and one forward of the zero baseline (the same for every image)."""
    with eval_mode(net), torch.no_grad():
        f0 = net(torch.zeros_like(x[:1])).logits.float()[0].cpu()
    rows = torch.arange(len(fr.targets))
    return (fr.logits[rows, fr.targets] - f0[fr.targets]).abs().clamp_min(1e-6)
