"""FCRN: fully convolutional residual network with multi-scale fusion (Yu et al., IEEE TMI 2017).

A torchvision ResNet-50 encoder without its pooling/fc head. A 1x1 "score" conv turns the output of
each fused stage into one lesion-logit channel; the score maps are upsampled (bilinear) to the input
size and summed. Fusing strides 8/16/32 is the paper's best variant (FCRN-8); adding stride 4
(layer1) gives finer boundaries at the cost of a larger upsampled map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet50

from attnmel.errors import AttnMelError
from attnmel.models.segmentation._weights import load_into, resnet50_state_dict

# Output stride of each ResNet-50 stage and its channel count.
STAGES: dict[int, tuple[str, int]] = {
    4: ("layer1", 256), 8: ("layer2", 512), 16: ("layer3", 1024), 32: ("layer4", 2048),
}


class FCRN(nn.Module):
    """ResNet-50 FCRN returning logits (B,out_channels,H,W) at the input's size (any H, W >= 32)."""

    def __init__(self, pretrained: str | Path | None = "none", fuse_strides: Iterable[int] = (8, 16, 32),
                 out_channels: int = 1) -> None:
        super().__init__()
        strides = sorted({int(s) for s in fuse_strides})
        if not strides or any(s not in STAGES for s in strides):
            raise AttnMelError(
                f"model.fuse_strides must be a non-empty subset of "
                f"{sorted(STAGES)}, got {list(fuse_strides)}"
            )
        self.fuse_strides = tuple(strides)
        encoder = resnet50(weights=None)
        state = resnet50_state_dict(pretrained)
        if state is not None:
            # The fc head is not part of the encoder (and a classifier's fc has its own class count).
            load_into(encoder, state, source=str(pretrained), ignore=("fc.",))
        self.stem = nn.Sequential(encoder.conv1, encoder.bn1, encoder.relu, encoder.maxpool)
        # Stages past the deepest fused one would never reach the loss: leave them out entirely.
        deepest = max(strides)
        self.stages = nn.ModuleDict(
            {name: getattr(encoder, name) for s, (name, _) in STAGES.items() if s <= deepest}
        )
        self.scores = nn.ModuleDict({STAGES[s][0]: nn.Conv2d(STAGES[s][1], out_channels, kernel_size=1)
                                     for s in strides})
        # Small score weights, as in FCN: summing several 1000+-channel projections at default init
        # starts with logits of magnitude ~10, i.e. saturated sigmoids and a slow first epoch.
        for conv in self.scores.values():
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        y = self.stem(x)
        logits: Tensor | None = None
        for name, stage in self.stages.items():
            y = stage(y)
            if name in self.scores:
                s = F.interpolate(self.scores[name](y), size=size, mode="bilinear", align_corners=False)
                logits = s if logits is None else logits + s
        assert logits is not None
        return logits
