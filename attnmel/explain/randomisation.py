"""Model-parameter randomisation sanity check (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

A copy of the trained model is re-initialised cascading from the classifier down: stage 1 re-initialises the
last layer(s), each later stage the next layers down as well, until every layer is random. After each stage
every method's maps are recomputed on the same images and compared with the trained model's maps by
Spearman rank correlation (scipy), per image, at the maps' own resolution. An explanation that depends on what
the model learned changes as its layers are randomised; one whose maps barely change (mean correlation still
>= :data:`FAIL_RHO` with every layer random) fails the check. Maps that do not depend on the model at all
(the centred blob, a seeded random map) fail it by construction and are the floor of the plot.

Layers: the modules with ``reset_parameters`` and parameters of their own (convolutions, linear layers, norm
layers), in reverse registration order, a norm layer joined to the layer it follows; re-initialised with their
own ``reset_parameters`` (PyTorch's default initialisation; norm layers also reset their running statistics)
under ``torch.manual_seed(seed + stage)``, as Quantus' ``MPRT`` does. The first stage is the output layer alone;
with more layers than ``max_stages``, the others are grouped into consecutive stages of near-equal size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from attnmel.errors import AttnMelError

DEFAULT_STAGES = 8
FAIL_RHO = 0.5
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

ExplainFn = Callable[[nn.Module, torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass
class Stage:
    """One step of the cascade: a name (the deepest-down layer it reaches) and the modules it re-initialises."""

    name: str
    modules: list[str]


@dataclass
class RandomisationResult:
    """``rho[method]``: (n_stages, B) Spearman correlations with the trained model's maps."""

    stages: list[Stage]
    rho: dict[str, np.ndarray] = field(default_factory=dict)

    def mean(self) -> dict[str, list[float]]:
        """Mean correlation over images after each stage, per method."""
        return {m: [float(v) for v in r.mean(axis=1)] for m, r in self.rho.items()}

    def passed(self, fail_rho: float = FAIL_RHO) -> dict[str, bool]:
        """Per method: the maps changed (mean correlation below ``fail_rho``) once every layer is random."""
        return {m: bool(r[-1].mean() < fail_rho) for m, r in self.rho.items()}


def layer_units(model: nn.Module) -> list[list[str]]:
    """Re-initialisable layers from the output down: lists of module names (a norm layer with its layer)."""
    names = [n for n, mod in model.named_modules()
             if callable(getattr(mod, "reset_parameters", None)) and any(True for _ in mod.parameters(recurse=False))]
    mods = dict(model.named_modules())
    units: list[list[str]] = []
    pending: list[str] = []
    for n in reversed(names):  # a norm follows its layer in registration order: it comes first here
        if isinstance(mods[n], _NORMS):
            pending.append(n)
            continue
        units.append([n, *pending])
        pending = []
    if pending:
        units.append(pending)
    return units


def randomisation_stages(model: nn.Module, max_stages: int = DEFAULT_STAGES) -> list[Stage]:
    """The cascade's stages: every layer unit, or ``max_stages`` consecutive groups of them."""
    units = layer_units(model)
    if not units:
        raise AttnMelError(f"{type(model).__name__} has no layer to re-initialise")
    if max_stages < 1:
        raise AttnMelError(f"randomisation needs at least one stage, got {max_stages}")
    # The output layer alone first (Adebayo's "logits" stage), the rest in near-equal groups.
    groups = [np.arange(1)]
    if len(units) > 1:
        groups += np.array_split(np.arange(1, len(units)), min(max(max_stages - 1, 1), len(units) - 1))
    return [Stage(name=units[g[-1]][0], modules=[n for i in g for n in units[i]]) for g in groups]


def spearman_per_image(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B,) Spearman rank correlation of each pair of maps (flattened; average ranks for ties).

    A constant map has no ranking: two constant maps count as unchanged (1.0), one constant map against a
    varying one as uncorrelated (0.0).
    """
    x = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if x.shape != y.shape:
        raise AttnMelError(f"maps to correlate differ in shape: {x.shape} vs {y.shape}")
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        cx, cy = np.ptp(x[i]) == 0, np.ptp(y[i]) == 0
        out[i] = (1.0 if cx and cy else 0.0) if (cx or cy) else float(spearmanr(x[i], y[i]).statistic)
    return out


def _reset(model: nn.Module, names: list[str], seed: int) -> None:
    mods = dict(model.named_modules())
    torch.manual_seed(seed)
    for n in names:
        mods[n].reset_parameters()


def cascading_randomisation(model: nn.Module, images: torch.Tensor, explain: ExplainFn,
                            max_stages: int = DEFAULT_STAGES, seed: int = 0,
                            reference: Mapping[str, torch.Tensor] | None = None,
                            progress: Callable[[int, int], None] | None = None) -> RandomisationResult:
    """Correlations of ``explain``'s maps on a copy of ``model`` randomised stage by stage with the trained maps.

    ``explain(model, images) -> {method: (B, h, w)}`` (the model in eval mode); ``reference``: the trained
    model's maps when the caller has them (else computed). The caller's model is left untouched, and the
    global torch RNG is restored afterwards.
    """
    stages = randomisation_stages(model, max_stages)
    rng_state = torch.get_rng_state()
    try:
        copy_ = copy.deepcopy(model).eval()
        ref = dict(reference) if reference is not None else dict(explain(copy_, images))
        rho: dict[str, list[np.ndarray]] = {m: [] for m in ref}
        for s, stage in enumerate(stages):
            _reset(copy_, stage.modules, seed + s)
            maps = explain(copy_, images)
            for m in ref:
                rho[m].append(spearman_per_image(ref[m], maps[m]))
            if progress is not None:
                progress(s + 1, len(stages))
    finally:
        torch.set_rng_state(rng_state)
    return RandomisationResult(stages=stages, rho={m: np.stack(v) for m, v in rho.items()})
