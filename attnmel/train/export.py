"""``attnmel export RUN_DIR --format onnx``: a trained run as ``model.onnx`` + ``model.json``, usable without AttnMel.

Into ``RUN_DIR/export/`` (or ``--out``):

- ``model.onnx``: input ``image`` float32 (batch, 3, height, width), NCHW, RGB, normalised; batch and image
  size are dynamic (height and width multiples of 32). Outputs, classifiers: ``probabilities`` (batch, K)
  softmax over ``class_names``, then one ``attention_<layer>`` (batch, 1, h, w) per attention layer
  (AttnMel-CNN: pool-3 at /8, pool-4 at /16), or ``cam`` (batch, K, h, w) for VGG-16-GAP. Segmenters (U-Net,
  FCRN, SegNet): ``lesion_probability`` (batch, 1, height, width), or for an ISIC 2018 Task 2 attribute run
  ``attribute_probabilities`` (batch, 5, height, width), its channels named in the sidecar (the run's own
  outputs, :func:`attnmel.train.segmentation.segmentation_outputs`). Mask R-CNN is refused (detections of
  data-dependent number; ``attnmel segment`` runs it).
- ``model.json``: the sidecar another program needs: class names, the input size the model was trained at,
  the normalisation, the preprocessing geometry step by step, the outputs, and the parity check.

Exported with torch's ONNX exporter (``dynamo=True``: shapes stay symbolic, so the adaptive pooling and the
attention's upsampling follow any input size), then checked in onnxruntime against the PyTorch model on the
same random inputs at two sizes and two batch sizes: max abs difference <= :data:`PARITY_ATOL` on every
output, or nothing is written.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_json
from attnmel.train.rundir import ONNX_FILE, SIDECAR_FILE, SVM_FILE, RunDir

log = logging.getLogger("attnmel.train")

FORMATS = ("onnx",)
OPSET = 18
# fp32 on both sides; differences come from kernel order only (measured ~1e-6 on probabilities and maps).
PARITY_ATOL = 1e-4
NOT_EXPORTABLE = {"maskrcnn": "torchvision's Mask R-CNN returns a data-dependent number of detections, which the "
                              "ONNX export of this project does not support; use `attnmel segment`"}


class _ClassifierGraph(nn.Module):
    """What the ONNX graph computes for a classifier: probabilities, then the maps in a fixed order."""

    def __init__(self, model: nn.Module, cam: bool) -> None:
        super().__init__()
        self.model = model
        self.layers = tuple(getattr(model, "attention_layers", ()))
        self.cam = cam

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        maps = [out.maps[k] for k in self.layers]
        if self.cam:
            maps.append(self.model.class_activation_map(image))
        return (torch.softmax(out.logits.float(), dim=1), *maps)


class _SegmenterGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(image)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return torch.sigmoid(logits.float())


def _graph(run) -> tuple[nn.Module, list[str], list[dict[str, Any]]]:
    """The module to export, its output names and their descriptions (for the sidecar)."""
    task = run.cfg.get("task", "classification")
    if task == "segmentation":
        from attnmel.train.segmentation import segmentation_outputs

        channels = list(segmentation_outputs(run.cfg))  # ("lesion",) or the five ISIC 2018 Task 2 attributes
        if channels == ["lesion"]:
            out = {"name": "lesion_probability", "shape": ["batch", 1, "height", "width"],
                   "meaning": "sigmoid lesion probability per pixel of the input; threshold at 0.5 for a mask"}
        else:
            out = {"name": "attribute_probabilities", "shape": ["batch", len(channels), "height", "width"],
                   "channels": channels,
                   "meaning": "sigmoid probability per pixel of each ISIC 2018 Task 2 attribute, channels in the "
                              "order of 'channels'; threshold at 0.5 for each attribute's mask"}
        return _SegmenterGraph(run.model).eval(), [out["name"]], [out]
    cam = not getattr(run.model, "attention_layers", ()) and hasattr(run.model, "class_activation_map")
    graph = _ClassifierGraph(run.model, cam).eval()
    outputs = [{"name": "probabilities", "shape": ["batch", len(run.class_names)],
                "meaning": "softmax class probabilities, columns in the order of class_names"}]
    strides = {"pool3": 8, "pool4": 16}
    for layer in graph.layers:
        s = strides.get(layer)
        outputs.append({"name": f"attention_{layer}", "shape": ["batch", 1, f"height/{s}", f"width/{s}"],
                        "meaning": f"attention map at {layer} (sigmoid or softmax as trained), before any "
                                   "upsampling; upsample bilinearly onto the input crop to display it"})
    if cam:
        outputs.append({"name": "cam", "shape": ["batch", len(run.class_names), "height/32", "width/32"],
                        "meaning": "class activation map per class (VGG-16-GAP)"})
    return graph, [o["name"] for o in outputs], outputs


def preprocessing(data_cfg: dict[str, Any]) -> dict[str, Any]:
    """The eval geometry and normalisation of a run, as steps another program can repeat."""
    from attnmel.data.transforms import normalization_from_cfg

    mean, std = normalization_from_cfg(data_cfg)
    size, resize, crop = int(data_cfg["image_size"]), int(data_cfg["resize"]), data_cfg.get("center_crop")
    steps = []
    if data_cfg.get("crop_to_mask"):
        steps.append({"op": f"lesion_{data_cfg['crop_to_mask']}", "margin": data_cfg.get("crop_margin"),
                      "note": "segment-then-classify: crop to (or mask outside) the lesion mask's bounding box "
                              "with this margin first; the mask comes from the segmentation run"})
    resample = ("PIL Image.resize(..., Image.BILINEAR, box=crop_box): crop and resize in one call, float box "
                "coordinates; PIL's bilinear filter widens with the scale (antialiased when shrinking)")
    if crop is None:
        steps.append({"op": "crop_resize", "crop_box": "(0, 0, W, H): the whole image, squeezed to a square "
                      "(aspect ratio not kept)", "size": [resize, resize], "interpolation": resample})
    else:
        steps.append({"op": "crop_resize", "crop_box": f"centred square of side s = {crop} * min(W, H): "
                      "((W - s) / 2, (H - s) / 2, (W + s) / 2, (H + s) / 2)", "size": [resize, resize],
                      "interpolation": resample})
    steps += [{"op": "center_crop", "size": [size, size],
               "offset": "top = left = int(round((resize - size) / 2)) (torchvision center_crop)"},
              {"op": "to_float", "note": "RGB, HWC uint8 -> CHW float32 / 255"},
              {"op": "normalize", "mean": list(mean), "std": list(std), "note": "(x - mean) / std per channel"}]
    return {"mean": list(mean), "std": list(std), "steps": steps,
            "equivalent": f"one square centre crop of side {crop} * short side * {size} / {resize}, resized to "
                          f"{size}x{size}" if crop is not None else None}


def _export_onnx(graph: nn.Module, example: torch.Tensor, path: Path, names: list[str]) -> None:
    dims = torch.export.Dim
    batch = dims("batch", min=1, max=4096)
    h32, w32 = dims("height_div32", min=1, max=256), dims("width_div32", min=1, max=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(graph, (example,), dynamo=True, input_names=["image"], output_names=names,
                                 dynamic_shapes={"image": {0: batch, 2: 32 * h32, 3: 32 * w32}},
                                 opset_version=OPSET, external_data=False, verbose=False, report=False)
    prog.save(str(path), external_data=False)


def check_parity(onnx_path: Path, graph: nn.Module, names: list[str], size: int, atol: float = PARITY_ATOL,
                 seed: int = 0) -> dict[str, Any]:
    """onnxruntime vs PyTorch on the same random inputs at (batch, size) and (batch, size + 32): max abs
    difference per output; raises when one exceeds ``atol``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    diffs: dict[str, float] = dict.fromkeys(names, 0.0)
    cases = [(2, size, size), (1, size + 32, size + 64)]
    for b, h, w in cases:
        x = torch.randn(b, 3, h, w, generator=gen)
        with torch.inference_mode():
            ref = graph(x)
        ref = (ref,) if isinstance(ref, torch.Tensor) else ref
        got = session.run(names, {"image": x.numpy()})
        for n, r, g in zip(names, ref, got):
            if tuple(g.shape) != tuple(r.shape):
                raise AttnMelError(f"{onnx_path}: output {n} has shape {g.shape} in onnxruntime, {tuple(r.shape)} "
                                   f"in PyTorch (input {b}x3x{h}x{w})")
            diffs[n] = max(diffs[n], float(np.abs(g - r.float().numpy()).max()))
    worst = max(diffs.values())
    if worst > atol:
        raise AttnMelError(f"{onnx_path}: onnxruntime differs from PyTorch by {worst:.2e} (> {atol:g}): not written")
    return {"tolerance_abs": atol, "max_abs_diff": diffs, "inputs": [f"{b}x3x{h}x{w}" for b, h, w in cases],
            "runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)"}


def _refuse_early(run_dir: Path) -> None:
    """The one "cannot export" check: a model that cannot be exported is refused from its config, before its
    weights are loaded."""
    name = (RunDir(run_dir).saved_config_summary().get("model") or {}).get("name")
    if name in NOT_EXPORTABLE:
        raise AttnMelError(f"{run_dir}: model '{name}' cannot be exported to ONNX: {NOT_EXPORTABLE[name]}")


def export_run(run_dir: str | Path, fmt: str = "onnx", out_dir: str | Path | None = None) -> dict[str, Path]:
    """Export a run's best checkpoint; returns ``{"onnx": ..., "sidecar": ...}`` (written atomically)."""
    from attnmel.train.rundir import load_run

    if fmt not in FORMATS:
        raise AttnMelError(f"unsupported export format '{fmt}' (supported: {', '.join(FORMATS)})")
    run_dir = Path(run_dir)
    folder = RunDir(run_dir)
    if not run_dir.is_dir():
        raise file_error(run_dir, "run folder not found")
    if not folder.best.is_file():
        raise file_error(run_dir, f"no checkpoint to export ({folder.best.relative_to(run_dir)} is missing: train "
                                  "the run first)")
    _refuse_early(run_dir)
    run = load_run(run_dir)
    graph, names, outputs = _graph(run)
    size = int(run.cfg["data"]["image_size"])
    out_dir = Path(out_dir) if out_dir is not None else folder.export_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attnmel-export-", dir=out_dir) as tmp:
        staged = Path(tmp) / ONNX_FILE
        try:
            _export_onnx(graph, torch.zeros(2, 3, size, size), staged, names)
        except AttnMelError:
            raise
        except Exception as e:  # noqa: BLE001 - the exporter raises many types; one line says which model failed
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise AttnMelError(f"{run_dir}: ONNX export of model '{run.cfg['model']['name']}' failed: "
                               f"{first}") from None
        parity = check_parity(staged, graph, names, size)
        os.replace(staged, out_dir / ONNX_FILE)  # same folder: an atomic rename, never a half-written model
    sidecar = {
        "format": "onnx", "file": ONNX_FILE, "opset": OPSET, "task": run.cfg.get("task", "classification"),
        "model": run.cfg["model"]["name"], "checkpoint": str(run.checkpoint.relative_to(run.run_dir)),
        "class_names": run.class_names, "melanoma_index": run.melanoma_index,
        "input": {"name": "image", "dtype": "float32", "layout": "NCHW", "channels": "RGB",
                  "shape": ["batch", 3, "height", "width"], "input_size": [size, size],
                  "size_rule": "height and width multiples of 32; trained and checked at input_size"},
        "preprocessing": preprocessing(run.cfg["data"]),
        "outputs": outputs, "parity": parity,
        **({"svm_fusion": "not in the graph: this model.svm run's metrics average these probabilities with an "
                          f"SVM on the penultimate features ({SVM_FILE}), which the ONNX model does not include"}
           if run.cfg["model"].get("svm") else {}),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out_dir / SIDECAR_FILE, sidecar)
    log.info("exported %s -> %s (max abs diff vs PyTorch %.1e)", run_dir, out_dir / ONNX_FILE,
             max(parity["max_abs_diff"].values()))
    return {"onnx": out_dir / ONNX_FILE, "sidecar": out_dir / SIDECAR_FILE}

