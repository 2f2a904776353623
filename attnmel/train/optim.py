"""Optimisers by ``optim.name`` and learning-rate schedules by ``optim.schedule`` (registries)."""

from __future__ import annotations

import math
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


SCHEDULES: Registry[Callable[[torch.optim.Optimizer, dict[str, Any], int], Any]] = Registry(
    "schedule", key="optim.schedule")


@SCHEDULES.register("step")
def _step(opt: torch.optim.Optimizer, o: dict[str, Any], max_epochs: int) -> Any:
    """The paper's: lr x ``gamma`` every ``step_size`` epochs."""
    return torch.optim.lr_scheduler.StepLR(opt, step_size=int(o.get("step_size", 10)), gamma=float(o.get("gamma", 0.1)))


def warmup_cosine(epoch: int, warmup: int, total: int) -> float:
    """The lr factor of epoch ``epoch`` (0-based): linear warm-up over ``warmup`` epochs (1/(w+1) .. w/(w+1)),
    then half a cosine from 1 down to 0 at the end of epoch ``total``; never exactly 0 in a training epoch."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / span))


@SCHEDULES.register("cosine")
def _cosine(opt: torch.optim.Optimizer, o: dict[str, Any], max_epochs: int) -> Any:
    """Linear warm-up over ``warmup_epochs``, then cosine annealing to 0 over the rest of ``max_epochs``."""
    warmup = int(o.get("warmup_epochs") or 0)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: warmup_cosine(e, warmup, max_epochs))


def configure_optimisers(module: torch.nn.Module, optim_cfg: dict[str, Any], max_epochs: int = 1) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for the ``optim`` section: the named optimiser over the
    trainable parameters (Mask R-CNN freezes early stages) with the named schedule (``optim.schedule``:
    ``step``, the paper's, or ``cosine``), stepped once per epoch of ``max_epochs``."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = OPTIMISERS.get(str(optim_cfg.get("name", "sgd")).lower())(params, optim_cfg)
    sched = SCHEDULES.get(str(optim_cfg.get("schedule") or "step").lower())(opt, optim_cfg, int(max_epochs))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
