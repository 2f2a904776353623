"""Whether a device computes bf16 natively: the one hardware check behind ``trainer.precision: auto`` and the
precision of Integrated Gradients (:mod:`attnmel.explain.attributions`)."""

from __future__ import annotations

import torch


def cpu_has_bf16() -> bool:
    """True where oneDNN runs bf16 on the CPU natively (avx512_bf16 or AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def has_fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 autocast on ``device`` is measured-faster than fp32 (a bf16 GPU, or a CPU with bf16 units)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()
