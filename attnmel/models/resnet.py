"""ResNet-50 classifier in torchvision's key layout: backbone -> GAP -> Linear(2048, K)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from attnmel.models.base import Classifier, ClassifierOutput, init_new_linear


class ResNet50(Classifier):
    """torchvision ResNet-50 with a K-way ``fc``; ``features`` is the 2048-d pooled vector."""

    torchvision_arch = "resnet50"
    head_prefixes = ("fc.",)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        tv = torchvision.models.resnet50(weights=None)
        # Same attribute names as torchvision, so checkpoint keys match one to one.
        self.conv1, self.bn1, self.relu, self.maxpool = tv.conv1, tv.bn1, tv.relu, tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = tv.layer1, tv.layer2, tv.layer3, tv.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)
        init_new_linear(self.fc)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last residual stage (``layer4``)."""
        return self.layer4

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        feats = torch.flatten(self.avgpool(x), 1)
        return ClassifierOutput(self.fc(feats), {}, feats)
