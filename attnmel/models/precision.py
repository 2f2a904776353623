"""Whether a device computes bf16 natively: the one hardware check behind ``trainer.precision: auto`` and the
precision of Integrated Gradients (:mod:`attnmel.explain.attributions`).

``ATTNMEL_BF16`` (read here only) overrides what the check finds on the CPU: ``off`` resolves ``auto`` as if the
CPU had no bf16 units (fp32), ``on`` as if it had them (bf16 autocast, emulated and slow where the CPU has none),
``auto`` (or unset) asks the hardware. CI runs the precision-sensitive tests both ways (``make test-precision``),
so a bf16 machine also checks what a CPU without bf16 computes, and the other way round.
"""

from __future__ import annotations

import os

import torch

from attnmel.errors import AttnMelError

BF16_ENV = "ATTNMEL_BF16"
BF16_MODES = ("auto", "off", "on")


def bf16_mode() -> str:
    """``ATTNMEL_BF16``: ``auto`` (unset), ``off`` or ``on``; anything else is a one-line error."""
    mode = os.environ.get(BF16_ENV, "auto").strip().lower() or "auto"
    if mode not in BF16_MODES:
        raise AttnMelError(f"{BF16_ENV} must be one of {', '.join(BF16_MODES)}; got {os.environ[BF16_ENV]!r}")
    return mode


def cpu_has_bf16() -> bool:
    """True where oneDNN runs bf16 on the CPU natively (avx512_bf16 or AMX); emulated bf16 is slower than fp32.
    The hardware's answer, whatever ``ATTNMEL_BF16`` says (the benches report it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def has_fast_bf16(device: torch.device | str) -> bool:
    """Whether ``auto`` picks bf16 autocast on ``device``: a bf16 GPU, or a CPU with bf16 units; on the CPU
    ``ATTNMEL_BF16=off|on`` overrides the hardware check."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    mode = bf16_mode()
    return mode == "on" or (mode == "auto" and cpu_has_bf16())
