"""Mask R-CNN (He et al., 2017) for lesion instance masks, exposed as a semantic segmenter.

Wraps torchvision's ``maskrcnn_resnet50_fpn`` with background plus ``num_classes`` classes (1: lesion;
5: one per ISIC 2018 Task 2 attribute, as the attribute seed does). ``forward`` always predicts: per class,
the union (pixel-wise max) of that class's instance mask probabilities whose detection score passes
``score_threshold``, returned as clamped logits (B,num_classes,H,W) so it plugs into the same losses,
metrics and ``sigmoid`` as U-Net and FCRN. Training goes through :meth:`training_step_loss`, which
turns binary masks into instance targets (one instance per connected component of each channel).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.measure import label, regionprops
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from attnmel.errors import AttnMelError
from attnmel.models.segmentation._weights import (
    StateDict,
    imagenet_resnet50_state_dict,
    load_into,
    load_state_dict_file,
)
from attnmel.models.weights import parse_pretrained

# Lesion images hold one or a few instances, not COCO's dozens: far fewer proposals and sampled RoIs
# than torchvision's defaults (2000/1000 proposals, 512 RoIs) lose nothing and make the box head,
# which dominates the cost at dermoscopy sizes, several times cheaper.
LESION_DETECTOR_OPTIONS: dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 500,
    "rpn_pre_nms_top_n_test": 500,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 128,
}

# Heads whose shapes depend on the class count: re-initialised when a file has another count (COCO's 91).
_CLASS_HEADS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


class MaskRCNNSegmenter(nn.Module):
    """Mask R-CNN (ResNet-50-FPN) lesion segmenter.

    ``pretrained``: ``none``; ``imagenet`` (ImageNet ResNet-50 backbone, as torchvision's
    ``weights_backbone``); or a path to either a torchvision ResNet-50 state dict (backbone only) or a
    ``maskrcnn_resnet50_fpn`` state dict (whole detector; class-count-specific heads are
    re-initialised if their shapes differ). With pretrained backbone weights the backbone uses
    FrozenBatchNorm2d and trains only its last ``trainable_backbone_layers`` stages, like torchvision.
    Inputs are expected already normalised (the DataModule does it), so the detector's own
    normalisation is the identity; it still resizes to ``min_size``/``max_size`` internally and maps
    the masks back to the input size. ``detector_options`` override keyword arguments of
    torchvision's ``MaskRCNN`` (defaults: :data:`LESION_DETECTOR_OPTIONS`).
    """

    def __init__(
        self,
        pretrained: str | Path | None = "none",
        min_size: int = 224,
        max_size: int = 448,
        score_threshold: float = 0.5,
        trainable_backbone_layers: int = 3,
        detections_per_image: int = 20,
        min_component_area: int = 1,
        logit_clamp: float = 1e-4,
        detector_options: dict[str, Any] | None = None,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.score_threshold = float(score_threshold)
        self.min_component_area = int(min_component_area)
        self.logit_clamp = float(logit_clamp)
        kwargs = dict(
            num_classes=1 + self.num_classes,
            min_size=int(min_size),
            max_size=int(max(max_size, min_size)),
            image_mean=[0.0, 0.0, 0.0],
            image_std=[1.0, 1.0, 1.0],
            box_detections_per_img=int(detections_per_image),
            **LESION_DETECTOR_OPTIONS,
        )
        known = inspect.signature(MaskRCNN.__init__).parameters
        bad = sorted(k for k in (detector_options or {}) if k not in known or k in ("self", "backbone", "num_classes"))
        if bad:
            raise AttnMelError(f"model.detector_options: not options of torchvision's MaskRCNN: {', '.join(bad)}")
        kwargs.update(detector_options or {})
        self.detector = self._build(pretrained, int(trainable_backbone_layers), kwargs)

    @staticmethod
    def _build(pretrained: str | Path | None, trainable_layers: int, kwargs: dict) -> MaskRCNN:
        """Build the detector and load whatever ``pretrained`` names."""
        spec = parse_pretrained(pretrained)
        if spec is None:
            return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
        kind = str(spec)
        if spec == "imagenet":
            state: StateDict = imagenet_resnet50_state_dict()
        else:
            state = load_state_dict_file(spec)
            if all(k.startswith("detector.") for k in state):  # a saved MaskRCNNSegmenter
                state = {k[len("detector."):]: v for k, v in state.items()}
        if any(k.startswith("backbone.body.") for k in state):
            # Whole-detector file: match its norm layers (torchvision's pretrained detectors use frozen BN).
            frozen = not any(k.endswith("num_batches_tracked") for k in state)
            detector = MaskRCNN(_backbone(frozen, trainable_layers if frozen else 5), **kwargs)
            own = detector.state_dict()
            skip = tuple(
                k for k in own
                if k.startswith(_CLASS_HEADS) and k in state and tuple(state[k].shape) != tuple(own[k].shape)
            )
            load_into(detector, state, source=kind, ignore=skip)
            return detector
        backbone = _backbone(frozen=True, trainable_layers=trainable_layers)
        load_into(backbone.body, state, source=kind, ignore=("fc.",))
        return MaskRCNN(backbone, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B,num_classes,H,W) from the per-class union of confident instance masks (eval mode)."""
        was_training = self.detector.training
        self.detector.eval()
        try:
            detections = self.detector(list(x))
        finally:
            self.detector.train(was_training)
        b, _, h, w = x.shape
        probs = x.new_zeros((b, self.num_classes, h, w))
        for i, det in enumerate(detections):
            for c in range(self.num_classes):
                keep = (det["scores"] > self.score_threshold) & (det["labels"] == c + 1)
                if keep.any():
                    probs[i, c] = det["masks"][keep].amax(dim=0)[0]
        # Clamp so "no lesion" is a finite logit: BCE and sigmoid downstream stay well defined.
        p = probs.clamp(self.logit_clamp, 1.0 - self.logit_clamp)
        return torch.logit(p)

    def targets_from_masks(self, masks: Tensor) -> list[dict[str, Tensor]]:
        """Instance targets from binary masks (B,C,H,W): one instance of class c+1 per 8-connected
        component of channel c.

        Components smaller than ``min_component_area`` pixels are dropped (annotation specks). An
        empty mask gives an empty target (no boxes), which torchvision trains as a negative image.
        """
        targets = []
        binary = (masks.detach() > 0.5).cpu().numpy()
        h, w = binary.shape[-2:]
        for channels in binary:
            boxes, inst, classes = [], [], []
            for c, m in enumerate(channels):
                lab = label(m, connectivity=2)
                for region in regionprops(lab):
                    if region.area < self.min_component_area:
                        continue
                    r0, c0, r1, c1 = region.bbox  # max row/col exclusive: never a zero-size box
                    boxes.append([c0, r0, c1, r1])
                    inst.append(lab == region.label)
                    classes.append(c + 1)
            targets.append({
                "boxes": torch.as_tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4), device=masks.device),
                "labels": torch.as_tensor(np.array(classes, dtype=np.int64), device=masks.device),
                "masks": torch.as_tensor(np.array(inst, dtype=np.uint8).reshape(-1, h, w), device=masks.device),
            })
        return targets

    def training_step_loss(self, images: Tensor, masks: Tensor) -> Tensor:
        """Sum of torchvision's Mask R-CNN losses (RPN, box, class, mask) for a batch.

        In eval mode (validation) the detector still computes its losses, with BatchNorm kept in
        eval so validation never changes the running statistics.
        """
        targets = self.targets_from_masks(masks)
        if self.training:
            losses = self.detector(list(images), targets)
        else:
            self.detector.train()
            for m in self.detector.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
            try:
                losses = self.detector(list(images), targets)
            finally:
                self.detector.eval()
        return torch.stack(list(losses.values())).sum()


def _backbone(frozen: bool, trainable_layers: int) -> nn.Module:
    """ResNet-50-FPN as ``maskrcnn_resnet50_fpn`` builds it (frozen BN when pretrained)."""
    if frozen:
        return resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=trainable_layers
        )
    return resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5)
