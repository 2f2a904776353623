"""Segmentation runs: masks at each image's full size (``attnmel segment``) and the ISIC Task 1 / Task 2 scores.

A run on an attribute dataset (ISIC 2018 Task 2) predicts the five attribute masks; ``attnmel segment
--attributes`` writes them as ``<id>_attribute_<name>.png`` (the official names), and evaluation gives the
official Task 2 score (:mod:`attnmel.metrics.attributes`) in ``metrics.json["attributes"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnmel.errors import AttnMelError


def _prepare(image: np.ndarray, data_cfg: dict, mean: list[float], std: list[float]) -> torch.Tensor:
    """The network's input for a whole image, by the data layer's one geometry (:func:`eval_box` +
    :func:`crop_resize`, what evaluation feeds the network). A run whose input is not the whole image
    (``data.center_crop``, ``data.crop_to_mask``, ``data.image_size`` < ``data.resize``) is refused: its masks
    could not cover every pixel of the original."""
    from attnmel.data.transforms import BaseSpec, crop_resize, eval_box

    h, w = image.shape[:2]
    size = int(data_cfg["image_size"])
    spec = BaseSpec.from_cfg(data_cfg)
    box = eval_box(w, h, spec, size)
    # crop_to_mask crops around a lesion mask the image to be segmented does not have yet.
    if spec.crop_to_mask is not None or not np.allclose(box, (0.0, 0.0, float(w), float(h)), atol=1e-6):
        raise AttnMelError(f"config: data.center_crop={data_cfg.get('center_crop')!r}, data.crop_to_mask="
                           f"{data_cfg.get('crop_to_mask')!r}, data.resize={data_cfg.get('resize')!r}, "
                           f"data.image_size={size}: this run saw only part of each image, so full-size masks "
                           "cannot be made from it (segmentation needs center_crop null, crop_to_mask null and "
                           "image_size equal to resize)")
    arr = crop_resize(np.ascontiguousarray(image), box, (w, h), (size, size), nearest=False)
    x = torch.from_numpy(arr).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


@torch.inference_mode()
def predict_full_size(model: torch.nn.Module, image: np.ndarray, data_cfg: dict, mean: list[float],
                      std: list[float]) -> np.ndarray:
    """Lesion probability (H, W) at the image's own size (a multi-output segmenter: its first output)."""
    return predict_outputs_full_size(model, image, data_cfg, mean, std)[0]


@torch.inference_mode()
def predict_outputs_full_size(model: torch.nn.Module, image: np.ndarray, data_cfg: dict, mean: list[float],
                              std: list[float]) -> np.ndarray:
    """Every output's probability (C, H, W) at the image's own size; the model runs where its weights are (the
    run's device, :func:`attnmel.train.inference.open_run`)."""
    device = next(model.parameters()).device
    logits = model(_prepare(image, data_cfg, mean, std).to(device))
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    prob = torch.sigmoid(logits.float())
    prob = F.interpolate(prob, size=image.shape[:2], mode="bilinear", align_corners=False)
    return prob[0].cpu().numpy()


def _norm_stats(cfg: dict) -> tuple[list[float], list[float]]:
    from attnmel.data.transforms import normalization_from_cfg

    mean, std = normalization_from_cfg(cfg["data"])
    return list(mean), list(std)


def check_segmentation_run(run):
    """The loaded run itself, or AttnMelError when it is not a segmentation run."""
    if run.cfg.get("task") != "segmentation":
        raise AttnMelError(f"{run.run_dir}: not a segmentation run (task: {run.cfg.get('task')})")
    return run


def write_masks(run, images: list[Path], out_dir: Path, ids: list[str] | None = None,
                progress: bool = True) -> list[Path]:
    """``<id>_segmentation.png`` per image in ``out_dir`` (ids default to the file stems)."""
    from PIL import Image
    from rich.progress import track

    from attnmel.data.images import load_image
    from attnmel.io import atomic_path

    mean, std = _norm_stats(run.cfg)
    written = []
    pairs = list(zip(images, ids or [Path(p).stem for p in images]))
    for path, image_id in track(pairs, description="segmenting", disable=not progress or len(pairs) < 2):
        image = load_image(path)
        prob = predict_full_size(run.model, image, run.cfg["data"], mean, std)
        target = Path(out_dir) / f"{image_id}_segmentation.png"
        with atomic_path(target) as tmp:
            Image.fromarray(((prob > 0.5) * 255).astype(np.uint8), mode="L").save(tmp, format="PNG")
        written.append(target)
    return written


def _write_attribute_masks(run, images: list[Path], out_dir: Path, progress: bool = True) -> list[Path]:
    from PIL import Image
    from rich.progress import track

    from attnmel.data.images import load_image
    from attnmel.data.readers.isic2018_task2 import attribute_file_name
    from attnmel.io import atomic_path
    from attnmel.train.segmentation import segmentation_outputs

    outputs = segmentation_outputs(run.cfg)
    mean, std = _norm_stats(run.cfg)
    written = []
    for path in track(images, description="segmenting attributes", disable=not progress or len(images) < 2):
        probs = predict_outputs_full_size(run.model, load_image(path), run.cfg["data"], mean, std)
        for name, prob in zip(outputs, probs):
            target = Path(out_dir) / attribute_file_name(Path(path).stem, name)
            with atomic_path(target) as tmp:
                Image.fromarray(((prob > 0.5) * 255).astype(np.uint8), mode="L").save(tmp, format="PNG")
            written.append(target)
    return written


def segment_images(run, images: list[Path], out_dir: Path, attributes: bool = False) -> list[Path]:
    """Write ``<id>_segmentation.png`` (8-bit, 0/255, the image's size) per image: the official format.

    ``attributes``: the run is an attribute segmenter; write ``<id>_attribute_<name>.png`` per attribute
    (the ISIC 2018 Task 2 submission names) instead.
    """
    from attnmel.train.segmentation import segmentation_outputs

    run = check_segmentation_run(run)
    run_dir = run.run_dir
    is_attr = segmentation_outputs(run.cfg) != ("lesion",)
    if attributes and not is_attr:
        raise AttnMelError(f"{run_dir}: --attributes needs a run trained on attribute masks "
                           f"(dataset {run.cfg['data']['dataset']} gives lesion masks)")
    if is_attr and not attributes:
        raise AttnMelError(f"{run_dir}: this run detects attributes: pass --attributes")
    images = [Path(p) for p in images]
    written = (_write_attribute_masks if attributes else write_masks)(run, images, Path(out_dir))
    print(f"{len(written)} masks written to {out_dir}")
    return written


def samples_without_masks(dataset: str, root: str | Path, out: Path, num_classes: int = 2) -> list:
    """The samples of every split of a dataset that have no ``<image_id>_segmentation.png`` in ``out`` yet."""
    from attnmel.data.readers import read_split
    from attnmel.data.samples import SPLITS

    todo: list = []
    for split in SPLITS:
        try:
            index = read_split(dataset, root, split, num_classes=num_classes)
        except AttnMelError:
            continue  # a split the download does not have
        todo += [s for s in index.samples if not (out / f"{s.image_id}_segmentation.png").is_file()]
    return todo


def split_has_masks(cfg: dict, split: str) -> bool:
    """Whether ``split`` of the run's dataset has any lesion mask (a split the copy lacks has none)."""
    from attnmel.data.readers import read_split

    d = cfg["data"]
    try:
        index = read_split(d["dataset"], d["root"], split, labels_optional=True)
    except AttnMelError:
        return False
    return any(s.mask is not None for s in index.samples)


def evaluate_segmentation(run, split: str = "test") -> dict:
    """ISIC Task 1 metrics of a segmentation run on a split, each mask scored at its full resolution
    (the caller records them in ``metrics.json``)."""
    from attnmel.data.images import load_image, load_mask
    from attnmel.data.readers import read_split
    from attnmel.metrics.segmentation import segmentation_metrics

    d = run.cfg["data"]
    index = read_split(d["dataset"], d["root"], split, labels_optional=True)
    samples = [s for s in index.samples if s.mask is not None]
    if not samples:
        raise AttnMelError(f"{d['root']}: split '{split}' has no lesion masks to score against")
    mean, std = _norm_stats(run.cfg)
    preds, truths = [], []
    for s in samples:
        image = load_image(s.image)
        truths.append(load_mask(s.mask, image.shape[:2]))
        preds.append(predict_full_size(run.model, image, d, mean, std) > 0.5)
    return segmentation_metrics(preds, truths, image_ids=[s.image_id for s in samples])


def evaluate_attributes(run, split: str = "test") -> dict:
    """The official ISIC 2018 Task 2 scores of an attribute run on a split, each image at full resolution;
    with the per-image numbers (the caller records them in ``metrics.json["attributes"]``)."""
    from attnmel.data.images import load_image, load_mask
    from attnmel.data.readers import read_split
    from attnmel.metrics.attributes import normalised_confusion, scores_from_confusions
    from attnmel.train.segmentation import segmentation_outputs

    d = run.cfg["data"]
    outputs = segmentation_outputs(run.cfg)
    index = read_split(d["dataset"], d["root"], split, num_classes=int(d["num_classes"]))
    mean, std = _norm_stats(run.cfg)
    cms = np.zeros((len(index.samples), len(outputs), 4))
    for i, s in enumerate(index.samples):  # one image at a time: full-size masks are large
        image = load_image(s.image)
        probs = predict_outputs_full_size(run.model, image, d, mean, std)
        for a, path in enumerate(s.attributes):
            cms[i, a] = normalised_confusion(probs[a] > 0.5, load_mask(path, image.shape[:2]))
    return scores_from_confusions(cms, outputs, [s.image_id for s in index.samples])
