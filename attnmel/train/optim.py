"""Optimisers by ``optim.name`` (registry) and the step schedule every trainer uses."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from attnmel.errors import AttnMelError
from attnmel.registry import Registry

Params = Iterable[torch.nn.Parameter]
OPTIMISERS: Registry[Callable[[Params, dict[str, Any]], torch.optim.Optimizer]] = Registry(
    "optimiser", key="optim.name")


@OPTIMISERS.register("sgd")
def _sgd(params: Params, o: dict[str, Any]) -> torch.optim.Optimizer:
    momentum, nesterov = float(o.get("momentum", 0.0)), bool(o.get("nesterov", False))
    if nesterov and momentum <= 0:
        raise AttnMelError("optim.nesterov needs optim.momentum > 0")
    return torch.optim.SGD(params, lr=float(o["lr"]), momentum=momentum, nesterov=nesterov,
                           weight_decay=float(o.get("weight_decay", 0.0)))


@OPTIMISERS.register("adamw")
def _adamw(params: Params, o: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=float(o["lr"]), weight_decay=float(o.get("weight_decay", 0.0)))


def configure_optimisers(module: torch.nn.Module, optim_cfg: dict[str, Any]) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for the ``optim`` section: the named optimiser over the
    trainable parameters (Mask R-CNN freezes early stages), stepped down by ``gamma`` every ``step_size``
    epochs."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = OPTIMISERS.get(str(optim_cfg.get("name", "sgd")).lower())(params, optim_cfg)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(optim_cfg.get("step_size", 10)),
                                            gamma=float(optim_cfg.get("gamma", 0.1)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
