"""DenseNet-121 classifier in torchvision's key layout: features -> ReLU -> GAP -> Linear(1024, K)."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from attnmel.models.base import Classifier, ClassifierOutput, init_new_linear

# torchvision's published DenseNet checkpoints still use the old 'norm.1' style keys; torchvision's own
# loader renames them with this pattern, and so do we.
_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


class DenseNet121(Classifier):
    """torchvision DenseNet-121 with a K-way ``classifier``; ``features`` is the 1024-d pooled vector."""

    torchvision_arch = "densenet121"
    head_prefixes = ("classifier.",)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = torchvision.models.densenet121(weights=None).features
        self.classifier = nn.Linear(1024, num_classes)
        init_new_linear(self.classifier)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last dense block (``features.denseblock4``)."""
        return self.features.denseblock4

    @staticmethod
    def remap_torchvision_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in state_dict.items():
            m = _OLD_KEY.match(key)
            out[m.group(1) + m.group(2) if m else key] = value
        return out

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        x = F.relu(self.features(x))
        feats = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return ClassifierOutput(self.classifier(feats), {}, feats)
