"""VGG-16-BN family: AttnMel-CNN, Mel-CNN, VGG-16-GAP and VGG-16 (the paper's ablation rows).

The backbone is built as a ``features`` ``nn.Sequential`` with exactly torchvision's ``vgg16_bn``
indices, so ``features.<i>.*`` keys of torchvision checkpoints load unchanged. Pool-3/4/5 are the
outputs of the 3rd/4th/5th max-pools (strides 8/16/32). Inputs may be any size that is a multiple of 32.

``width`` scales every channel count (backbone, attention inter-channels, fc6/fc7) for a CPU-fast
variant; ``width=1.0`` is exactly the paper's network (and the only width ImageNet weights fit).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnmel.errors import AttnMelError
from attnmel.models.attention import GridAttention
from attnmel.models.base import Classifier, ClassifierOutput, init_new_linear

VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")
ATTENTION_LAYER_NAMES = ("pool3", "pool4")


def scaled(channels: int, width: float) -> int:
    """Channel count under the width multiplier (at least 8 so every layer stays usable)."""
    return channels if width == 1.0 else max(8, int(round(channels * width)))


def make_vgg16_bn_features(width: float = 1.0) -> tuple[nn.Sequential, list[int], list[int]]:
    """Build torchvision's ``vgg16_bn().features``; also return the max-pool indices and channels."""
    layers: list[nn.Module] = []
    pools: list[int] = []
    pool_channels: list[int] = []
    in_c = 3
    for v in VGG16_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            pools.append(len(layers) - 1)
            pool_channels.append(in_c)
        else:
            out_c = scaled(int(v), width)
            layers += [nn.Conv2d(in_c, out_c, kernel_size=3, padding=1), nn.BatchNorm2d(out_c),
                       nn.ReLU(inplace=True)]
            in_c = out_c
    features = nn.Sequential(*layers)
    # From scratch the backbone gets torchvision's own VGG init, so "none" matches vgg16_bn(weights=None).
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return features, pools, pool_channels


def gap(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling (B, C, h, w) -> (B, C)."""
    return x.mean(dim=(2, 3))


class VGGClassifier(Classifier):
    """Shared VGG-16-BN backbone with pool-3/4/5 taps."""

    torchvision_arch = "vgg16_bn"

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if not width > 0:
            raise AttnMelError(f"model.width must be > 0, got {width!r}")
        self.width = float(width)
        self.features, pools, pool_channels = make_vgg16_bn_features(self.width)
        self._pool3, self._pool4, self._pool5 = pools[2], pools[3], pools[4]
        self.c3, self.c4, self.c5 = pool_channels[2], pool_channels[3], pool_channels[4]

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last ReLU of block 5 (the input of pool-5)."""
        return self.features[self._pool5 - 1]

    def taps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the backbone; return (pool3, pool4, pool5)."""
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise AttnMelError(f"input size {h}x{w} is not a multiple of 32 (set data.image_size accordingly)")
        out: list[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (self._pool3, self._pool4, self._pool5):
                out.append(x)
        return out[0], out[1], out[2]


GAP_PATHS = ("keep", "remove", "gated")


class AttnMelCNN(VGGClassifier):
    """AttnMel-CNN: ``concat(GAP(pool5), att(pool3), att(pool4)) -> Linear(1280, K)``.

    A layer left out of ``attention_layers`` contributes ``GAP(pool_i)`` instead of its attended
    vector, so the head stays 1280-d and the parameter layout of the head does not depend on the
    switch; with no attention layers the network is exactly Mel-CNN (same concat order).

    ``gap_path`` is OUR extension, not the paper's (``model.gap_path``). The GAP(pool-5) vector reaches the
    classifier without passing any attention gate, so it can carry a shortcut whatever the maps show.
    ``keep`` is the paper's network; ``remove`` drops that vector (head ``Linear(c3 + c4, K)``); ``gated``
    replaces it by pool-5 averaged under the pool-4 attention map (max-pooled 2x to pool-5's grid, so pool-5
    counts only where pool-4 attends; head unchanged). ``gated`` needs pool-4 attention.
    """

    head_prefixes = ("attention.", "classifier.")

    def __init__(self, num_classes: int, attention: str = "sigmoid",
                 attention_layers: Sequence[str] = ATTENTION_LAYER_NAMES, width: float = 1.0,
                 gap_path: str = "keep") -> None:
        super().__init__(width)
        layers = tuple(attention_layers)
        unknown = [n for n in layers if n not in ATTENTION_LAYER_NAMES]
        if unknown:
            raise AttnMelError(f"model.attention_layers: unknown layer(s) {unknown}; known: "
                               f"{', '.join(ATTENTION_LAYER_NAMES)}")
        if gap_path not in GAP_PATHS:
            raise AttnMelError(f"model.gap_path must be one of {', '.join(GAP_PATHS)}, got {gap_path!r}")
        if gap_path == "gated" and "pool4" not in layers:
            raise AttnMelError("model.gap_path: gated gates pool-5 with the pool-4 map, so "
                               "model.attention_layers must include pool4")
        self.gap_path = gap_path
        # Keep the canonical order whatever order the config lists them in.
        self.attention_layers = tuple(n for n in ATTENTION_LAYER_NAMES if n in layers)
        self.normalisation = attention
        inter = scaled(256, self.width)
        local = {"pool3": self.c3, "pool4": self.c4}
        self.attention = nn.ModuleDict(
            {n: GridAttention(local[n], self.c5, inter, attention) for n in self.attention_layers})
        head_in = self.c3 + self.c4 + (0 if gap_path == "remove" else self.c5)
        self.classifier = nn.Linear(head_in, num_classes)
        init_new_linear(self.classifier)

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        p3, p4, p5 = self.taps(x)
        parts: list[torch.Tensor] = []
        maps: dict[str, torch.Tensor] = {}
        for name, l in (("pool3", p3), ("pool4", p4)):
            if name in self.attention:
                a, v = self.attention[name](l, p5)
                maps[name] = a
            else:
                v = gap(l)
            parts.append(v)
        if self.gap_path == "keep":
            parts.insert(0, gap(p5))
        elif self.gap_path == "gated":
            a5 = F.adaptive_max_pool2d(maps["pool4"], p5.shape[-2:])
            parts.insert(0, (a5 * p5).mean(dim=(2, 3)))
        feats = torch.cat(parts, dim=1)
        return ClassifierOutput(self.classifier(feats), maps, feats)


class MelCNN(VGGClassifier):
    """Mel-CNN: ``concat(GAP(pool5), GAP(pool3), GAP(pool4)) -> Linear(1280, K)`` (no attention)."""

    head_prefixes = ("classifier.",)

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__(width)
        self.classifier = nn.Linear(self.c5 + self.c3 + self.c4, num_classes)
        init_new_linear(self.classifier)

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        p3, p4, p5 = self.taps(x)
        feats = torch.cat([gap(p5), gap(p3), gap(p4)], dim=1)
        return ClassifierOutput(self.classifier(feats), {}, feats)


class VGG16GAP(VGGClassifier):
    """VGG-16-GAP: ``GAP(pool5) -> Linear(512, K)``; its class activation map is the paper's baseline."""

    head_prefixes = ("classifier.",)

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__(width)
        self.classifier = nn.Linear(self.c5, num_classes)
        init_new_linear(self.classifier)

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        _, _, p5 = self.taps(x)
        feats = gap(p5)
        return ClassifierOutput(self.classifier(feats), {}, feats)

    def class_activation_map(self, x: torch.Tensor) -> torch.Tensor:
        """CAM (B, K, h, w) at pool-5 resolution, without the bias: ``GAP(cam) + bias == logits``."""
        _, _, p5 = self.taps(x)
        return torch.einsum("kc,bchw->bkhw", self.classifier.weight, p5)


class VGG16(VGGClassifier):
    """VGG-16(-BN) with fc6/fc7: pool-5 -> adaptive avg-pool 7x7 -> fc6 -> fc7 -> Linear(4096, K).

    The ``classifier`` Sequential keeps torchvision's indices (0 = fc6, 3 = fc7), so ImageNet fc6/fc7
    load by key; only index 6 (the K-way layer) is new. Non-224 inputs go through the same adaptive
    pooling to 7x7 as torchvision.
    """

    head_prefixes = ("classifier.6.",)

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__(width)
        fc = scaled(4096, self.width)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(self.c5 * 7 * 7, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc, num_classes),
        )
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                init_new_linear(m)  # torchvision's fc init is the same N(0, 0.01)

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        _, _, p5 = self.taps(x)
        h = torch.flatten(self.avgpool(p5), 1)
        head = len(self.classifier) - 1
        for i in range(head):  # fc6, fc7 (+ReLU, dropout): their output is the feature vector
            h = self.classifier[i](h)
        return ClassifierOutput(self.classifier[head](h), {}, h)
