"""The one table of saliency-method names: what the report, the reports index, the sweep summary and
``attnmel predict`` call each map.

Method keys are those of :func:`attnmel.explain.attributions.explain_batch` and of ``metrics.json``
(``attention:<layer>``, ``cam``, ``gradcam``, ``ig``, ``blob``, ``random``); the sweep summary strips the ``attention:``
prefix (``pool3``), and :func:`compact_label` accepts both.
"""

from __future__ import annotations

from typing import NamedTuple


class MethodName(NamedTuple):
    """How one method is shown: ``full`` (the attention-quality table), ``layer`` (where the map comes from),
    ``short`` (legends, gallery heads, overlay titles)."""

    full: str
    layer: str
    short: str


METHOD_NAMES: dict[str, MethodName] = {
    "cam": MethodName("CAM (VGG-16-GAP)", "pool-5", "CAM"),
    "gradcam": MethodName("Grad-CAM (captum LayerGradCam)", "gradcam_layer (last conv block)", "Grad-CAM"),
    "ig": MethodName("Integrated Gradients (captum)", "input", "Int. Gradients"),
    "blob": MethodName("Centred Gaussian blob (baseline)", "—", "blob"),
    "random": MethodName("Uniform random map (floor)", "—", "random"),
}
ATTENTION_PREFIX = "attention:"


def _layer(name: str) -> str:
    return name.replace("pool", "pool-")


def method_name(method: str) -> MethodName:
    """The names of ``method``; an attention layer is ``AttnMel attention`` at ``pool-3`` etc.; an unknown key is
    shown as itself."""
    if method.startswith(ATTENTION_PREFIX):
        layer = _layer(method.split(":", 1)[1])
        return MethodName("AttnMel attention", layer, f"attention {layer}")
    return METHOD_NAMES.get(method, MethodName(method, "", method))


def method_label(method: str) -> tuple[str, str]:
    """(method, layer) as the attention-quality table shows them."""
    n = method_name(method)
    return n.full, n.layer


def short_label(method: str) -> str:
    """Compact name for legends, gallery column heads and overlay titles."""
    return method_name(method).short


def compact_label(key: str) -> str:
    """The shortest name, for table headers beside other words (``Jaccard pool-3``, ``Jaccard Grad-CAM``):
    an attention layer by its layer alone; accepts ``attention:pool3`` and the sweep's ``pool3``."""
    if key.startswith(ATTENTION_PREFIX):
        return _layer(key.split(":", 1)[1])
    if key.startswith("pool"):
        return _layer(key)
    return method_name(key).short
