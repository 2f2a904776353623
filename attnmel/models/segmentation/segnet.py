"""SegNet (Badrinarayanan et al., TPAMI 2017): the segmenter of the SegNet + DenseNet-121 seed.

Encoder: VGG-16-BN's 13 conv layers in torchvision's ``features`` layout (built by
:func:`attnmel.models.vgg.make_vgg16_bn_features`), so ImageNet ``vgg16_bn`` checkpoints load into it as
into every other VGG backbone here. Each 2x2 max-pool keeps its argmax indices; the decoder mirrors the
encoder (13 conv-BN-ReLU layers, channels reversed) and, at each stage, first *unpools* with the indices of
the matching encoder pool (values go back to where the maxima came from, zeros elsewhere), then
convolves. A final 3x3 conv gives one logit per output (1: lesion, 5: the ISIC 2018 Task 2 attributes).

Unpooling is a ``scatter`` into a zero map by the pooling indices: plain ops that export to ONNX. Inputs
whose sides are not multiples of 32 are padded (replicate) and the output cropped back.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from attnmel.errors import AttnMelError
from attnmel.models.segmentation._weights import load_into, load_state_dict_file
from attnmel.models.vgg import VGG16_LAYOUT, make_vgg16_bn_features, scaled
from attnmel.models.weights import imagenet_checkpoint, parse_pretrained, read_state_dict


def _stages(width: float) -> list[list[int]]:
    """Conv output channels per encoder stage: [[64, 64], [128, 128], [256]*3, [512]*3, [512]*3]."""
    stages: list[list[int]] = [[]]
    for v in VGG16_LAYOUT:
        if v == "M":
            stages.append([])
        else:
            stages[-1].append(scaled(int(v), width))
    return [s for s in stages if s]


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def max_unpool(x: Tensor, indices: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.max_unpool2d`` as a scatter (ONNX ScatterElements): ``x`` back to the argmax positions."""
    b, c, _h, _w = x.shape
    out = x.new_zeros((b, c, size[0] * size[1]))
    out = out.scatter(2, indices.flatten(2), x.flatten(2))
    return out.view(b, c, size[0], size[1])


class SegNet(nn.Module):
    """SegNet with a VGG-16-BN encoder; ``forward`` gives logits (B, out_channels, H, W) at input size.

    ``width`` scales every channel (1.0 = the paper's network, the only width ImageNet weights fit).
    """

    stride = 32

    def __init__(self, out_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        self.width = float(width)
        self.features, self._pools, _ = make_vgg16_bn_features(self.width)
        stages = _stages(self.width)
        decoder: list[nn.Module] = []
        # Mirror: stage 5 first; within a stage the channels run backwards, and its last conv narrows to
        # the previous stage's width (stage 1 keeps its own; the classifier conv follows).
        for k in reversed(range(len(stages))):
            chans = stages[k]
            out_last = stages[k - 1][-1] if k > 0 else chans[0]
            layers: list[nn.Module] = []
            for j in range(len(chans)):
                cout = chans[j] if j < len(chans) - 1 else out_last
                layers += _conv_bn_relu(chans[j], cout)
            decoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(decoder)
        self.classifier = nn.Conv2d(stages[0][0], int(out_channels), 3, padding=1)

    def encode(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, tuple[int, int]]]]:
        """The pool-5 map and, per pool, its argmax indices and the size it pooled from."""
        kept: list[tuple[Tensor, tuple[int, int]]] = []
        for i, layer in enumerate(self.features):
            if i in self._pools:
                size = (int(x.shape[-2]), int(x.shape[-1]))
                x, idx = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
                kept.append((idx, size))
            else:
                x = layer(x)
        return x, kept

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y, kept = self.encode(x)
        for stage, (idx, size) in zip(self.decoder, reversed(kept)):
            y = stage(max_unpool(y, idx, size))
        return self.classifier(y)[..., :h, :w]

    def load_pretrained(self, pretrained: str | Path | None) -> None:
        """``imagenet`` (torchvision's vgg16_bn), a vgg16_bn-layout file (encoder) or a saved SegNet (all)."""
        spec = parse_pretrained(pretrained)
        if spec is None:
            return
        if spec == "imagenet":
            if self.width != 1.0:
                raise AttnMelError(f"model.width={self.width} has no ImageNet weights: use model.width=1.0 "
                                   "or model.pretrained=none")
            path = imagenet_checkpoint("vgg16_bn")
            state = read_state_dict(path)
        else:
            path = Path(spec)
            state = load_state_dict_file(path)
        if any(k.startswith("decoder.") for k in state):
            load_into(self, state, source=path)
            return
        encoder = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        load_into(self.features, encoder, source=path)


def segnet(out_channels: int = 1, width: float = 1.0, pretrained: str | Path | None = "none") -> SegNet:
    """A SegNet with the weights ``pretrained`` names."""
    model = SegNet(out_channels=out_channels, width=width)
    model.load_pretrained(pretrained)
    return model

