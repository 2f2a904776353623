"""``attnmel export``: ONNX in onnxruntime against PyTorch (tolerance 1e-4 absolute), sidecar, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from attnmel.errors import AttnMelError
from attnmel.train.export import PARITY_ATOL, export_run, preprocessing

TOL = 1e-4  # fp32 in both runtimes: the graphs differ only in kernel order
assert PARITY_ATOL == TOL


def _untrained_run(tmp: Path, data_root: Path, size: int = 64, model: str = "attnmel", **over) -> Path:
    from attnmel.bench.report import make_untrained_run

    extra = [f"{k}={v}" for k, v in over.items()]
    return make_untrained_run(tmp / "runs" / model, data_root, image_size=size, model=model, width=0.125,
                              cache_dir=tmp / "cache", overrides=extra)


# -- errors ----------------------------------------------------------------------------------------
def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from attnmel.cli import main

    with pytest.raises(AttnMelError, match="run folder not found"):
        export_run(tmp_path / "nope")
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)
    (empty / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "attnmel"}}))
    assert main(["export", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"attnmel: error: {empty}: no checkpoint to export (checkpoints/best.ckpt is missing: "
                   "train the run first)")
    assert main(["export", str(empty), "--format", "tflite"]) == 2
    assert capsys.readouterr().err.strip() == "attnmel: error: unsupported export format 'tflite' (supported: onnx)"
    seg = tmp_path / "runs" / "seg"
    (seg / "checkpoints").mkdir(parents=True)
    (seg / "checkpoints" / "best.ckpt").write_bytes(b"never read")
    (seg / "config.yaml").write_text(yaml.safe_dump({"task": "segmentation", "model": {"name": "maskrcnn"}}))
    with pytest.raises(AttnMelError, match=r"model 'maskrcnn' cannot be exported to ONNX: .*use `attnmel segment`"):
        export_run(seg)
    assert not (seg / "export" / "model.onnx").exists()


# -- the sidecar says what the model expects ---------------------------------------------------------
@pytest.mark.parametrize("center_crop", [0.8, None])
def test_sidecar_preprocessing_reproduces_the_eval_transform(tmp_path: Path, synthetic_root: Path,
                                                             center_crop: float | None) -> None:
    """Following the sidecar's steps by hand (PIL + numpy, no AttnMel) gives the tensor AttnMel feeds the model."""
    from attnmel import config as config_mod
    from attnmel.data.datamodule import AttnMelDataModule

    cfg = config_mod.load_config(None, ["data.dataset=synthetic", f"data.root={synthetic_root}", "data.resize=80",
                                        "data.image_size=64", f"data.cache_dir={tmp_path / 'cache'}",
                                        "data.num_workers=0"])
    cfg["data"]["center_crop"] = center_crop
    rng = np.random.default_rng(0)
    W, H = 150, 111
    yy, xx = np.mgrid[:H, :W]
    arr = np.stack([xx * 255 // W, yy * 255 // H, (xx + yy) % 256], axis=-1).astype(np.uint8)
    arr = np.clip(arr.astype(int) + rng.integers(0, 20, arr.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    ours = AttnMelDataModule(cfg, progress=False).predict_dataset([path])[0]["image"].numpy()

    pre = preprocessing(cfg["data"])
    step = next(s for s in pre["steps"] if s["op"] == "crop_resize")
    R = step["size"][0]
    if center_crop is None:
        box = (0.0, 0.0, float(W), float(H))
    else:
        s = center_crop * min(W, H)
        box = ((W - s) / 2, (H - s) / 2, (W + s) / 2, (H + s) / 2)
    img = np.asarray(Image.fromarray(arr).resize((R, R), Image.BILINEAR, box=box), dtype=np.float32)
    size = next(s for s in pre["steps"] if s["op"] == "center_crop")["size"][0]
    top = int(round((R - size) / 2))
    img = img[top:top + size, top:top + size] / 255.0
    by_hand = ((img - np.array(pre["mean"])) / np.array(pre["std"])).transpose(2, 0, 1)
    assert by_hand.shape == ours.shape == (3, 64, 64)
    assert np.abs(by_hand - ours).max() < 1e-4


# -- parity in onnxruntime ----------------------------------------------------------------------------
@pytest.mark.slow
def test_onnx_classifier_matches_pytorch(tmp_path: Path, synthetic_root: Path) -> None:
    import onnxruntime as ort

    from attnmel.cli import main
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.train.rundir import load_run

    run_dir = _untrained_run(tmp_path, synthetic_root)
    assert main(["export", str(run_dir)]) == 0
    onnx_path, sidecar_path = run_dir / "export" / "model.onnx", run_dir / "export" / "model.json"
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["class_names"] == ["other", "melanoma"] and sidecar["input"]["input_size"] == [64, 64]
    assert [o["name"] for o in sidecar["outputs"]] == ["probabilities", "attention_pool3", "attention_pool4"]
    assert sidecar["preprocessing"]["mean"] and sidecar["parity"]["tolerance_abs"] == TOL

    run = load_run(run_dir)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    batch = next(iter(AttnMelDataModule(run.cfg, progress=False).eval_dataloader("test")))
    images = batch["image"][:5].float().contiguous()
    # Real test images, another batch size than the export's, and a larger, non-square input.
    for x in (images, torch.nn.functional.interpolate(images[:3], size=(96, 128), mode="bilinear")):
        with torch.inference_mode():
            out = run.model(x)
        probs, p3, p4 = session.run(None, {"image": x.numpy()})
        np.testing.assert_allclose(probs, torch.softmax(out.logits, 1).numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(p3, out.maps["pool3"].numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(p4, out.maps["pool4"].numpy(), atol=TOL, rtol=0)
        assert p3.shape == (x.shape[0], 1, x.shape[2] // 8, x.shape[3] // 8)
        assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_onnx_unet_segmenter_matches_pytorch(tmp_path: Path) -> None:
    import onnxruntime as ort

    from attnmel import config as config_mod
    from attnmel.io import write_text
    from attnmel.models.segmentation import build_segmenter

    run_dir = tmp_path / "runs" / "unet"
    cfg = config_mod.load_config(None, ["task=segmentation", "model.name=unet", "model.pretrained=none",
                                        "model.width=0.25", "data.image_size=64", "data.resize=64",
                                        f"out_dir={run_dir.parent}", "name=unet"])
    cfg["data"]["center_crop"] = None
    torch.manual_seed(0)
    model = build_segmenter("unet", cfg["model"])
    (run_dir / "checkpoints").mkdir(parents=True)
    write_text(run_dir / "config.yaml", config_mod.dump(cfg))
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "attnmel": {"config": cfg, "class_names": ["lesion"], "melanoma_index": 0}},
               run_dir / "checkpoints" / "best.ckpt")
    paths = export_run(run_dir)
    sidecar = json.loads(paths["sidecar"].read_text())
    assert sidecar["task"] == "segmentation" and sidecar["outputs"][0]["name"] == "lesion_probability"
    assert sidecar["preprocessing"]["steps"][0]["crop_box"].startswith("(0, 0, W, H)")
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    model.eval()
    for shape in ((2, 3, 64, 64), (1, 3, 96, 160)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = torch.sigmoid(model(x))
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == (shape[0], 1, shape[2], shape[3])
        np.testing.assert_allclose(got, ref.numpy(), atol=TOL, rtol=0)


@pytest.mark.slow
def test_onnx_attribute_run_names_and_sizes_its_five_outputs(tmp_path: Path) -> None:
    """An ISIC 2018 Task 2 run: the sidecar names one output of the run's five attribute channels, which is what
    the graph returns in onnxruntime (the sidecar once said one lesion channel)."""
    import onnxruntime as ort

    from attnmel import config as config_mod
    from attnmel.data.readers import ATTRIBUTES
    from attnmel.io import write_text
    from attnmel.models.segmentation import build_segmenter

    run_dir = tmp_path / "runs" / "attributes"
    cfg = config_mod.load_config(None, ["task=segmentation", "model.name=unet", "model.pretrained=none",
                                        "model.width=0.25", "data.dataset=synthetic_attributes",
                                        "data.image_size=64", "data.resize=64", f"out_dir={run_dir.parent}",
                                        "name=attributes"])
    cfg["data"]["center_crop"] = None
    torch.manual_seed(0)
    model = build_segmenter("unet", cfg["model"], out_channels=len(ATTRIBUTES))
    (run_dir / "checkpoints").mkdir(parents=True)
    write_text(run_dir / "config.yaml", config_mod.dump(cfg))
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "attnmel": {"config": cfg, "class_names": [], "melanoma_index": 0, "outputs": list(ATTRIBUTES)}},
               run_dir / "checkpoints" / "best.ckpt")
    paths = export_run(run_dir)
    (out,) = json.loads(paths["sidecar"].read_text())["outputs"]
    assert out["name"] == "attribute_probabilities" and out["channels"] == list(ATTRIBUTES)
    assert out["shape"] == ["batch", 5, "height", "width"]
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["attribute_probabilities"]
    model.eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = torch.sigmoid(model(x))
    (got,) = session.run(None, {"image": x.numpy()})
    assert got.shape == (2, 5, 64, 96)
    np.testing.assert_allclose(got, ref.numpy(), atol=TOL, rtol=0)
