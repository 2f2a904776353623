"""The one inference path after training: a trained run opened once, on its device, scoring loaders.

:func:`open_run` loads a run folder's best checkpoint once (config with the allowed edits, ``data.masks``
resolved by :func:`attnmel.train.masks.resolve_mask_source`), puts the model on the device the config names
(``trainer.accelerator``, or the ``--device`` of evaluate / report / predict / segment; ``auto`` takes the GPU
when there is one) and keeps one DataModule for every split it scores. :func:`score_loader` is the one function
that turns a loader into probabilities: the model runs on the run's device with the run's precision
(``trainer.precision``, ``auto`` as in training), and a ``model.svm`` run's probabilities are the TMI 2017 fusion
with the SVM of ``svm.npz`` (fitted once on the training split), averaged over 8 rotations/flips with ``data.tta``, so
evaluate, the report, predict and the sweep
give the same numbers. The report and predict pass their own ``forward`` (the maps and the logits from one pass,
:func:`attnmel.explain.attributions.explain_batch`); the probabilities still come from here.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from attnmel.errors import AttnMelError
from attnmel.train.rundir import BEST, LoadedRun, load_run

DEVICES = ("auto", "cpu", "gpu", "cuda", "mps")


def resolve_device(accelerator: str) -> torch.device:
    """The device of ``trainer.accelerator`` (or ``--device``): ``auto`` = the GPU when there is one, else CPU;
    ``gpu`` / ``cuda`` without a GPU is a one-line error."""
    name = str(accelerator).lower()
    if name not in DEVICES:
        raise AttnMelError(f"unknown device {accelerator!r} (known: {', '.join(DEVICES)})")
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise AttnMelError(f"device {accelerator!r} asked for, but torch sees no CUDA GPU "
                               "(use --device cpu or trainer.accelerator=cpu)")
        return torch.device("cuda")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AttnMelError("device 'mps' asked for, but torch sees no MPS device (use --device cpu)")
    return torch.device(name)


def resolve_precision(cfg: dict, device: torch.device | None = None) -> str:
    """``trainer.precision: auto``: bf16 autocast where the hardware computes bf16 natively, else fp32.

    bf16 autocast with channels-last was the fastest setting of the model benchmark on a CPU with
    avx512_bf16 (about 2x fp32, same predicted classes); on a CPU without bf16 units it is emulated and slower.
    ``ATTNMEL_BF16=off|on`` overrides the CPU's answer (:mod:`attnmel.models.precision`).
    ``device``: where the run computes (default: the device ``trainer.accelerator`` means).
    """
    p = str(cfg["trainer"]["precision"])
    if p != "auto":
        return p
    if device is None:
        accel = str(cfg["trainer"]["accelerator"])
        on_gpu = accel in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    else:
        on_gpu = device.type == "cuda"
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    from attnmel.models.precision import has_fast_bf16

    return "bf16-mixed" if has_fast_bf16("cpu") else "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string (None: full precision)."""
    p = str(precision)
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.startswith("16") or p == "transformer-engine-float16":
        return torch.float16
    return None


@dataclass
class TrainedRun(LoadedRun):
    """A loaded run on its device (see :func:`open_run`): one DataModule and one SVM for every split."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "32-true"
    _dm: Any = None
    _svm: Any = None

    def data(self):
        """The run's DataModule (built once; every split it serves shares it)."""
        if self._dm is None:
            from attnmel.data.datamodule import AttnMelDataModule

            # A trained run's data is read, never made: a deleted synthetic set is an error, not a new set.
            self._dm = AttnMelDataModule(self.cfg, progress=False, generate=False)
        return self._dm

    def autocast(self) -> AbstractContextManager:
        """The run's precision as an autocast context on its device."""
        dtype = autocast_dtype(self.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()

    @property
    def uses_svm(self) -> bool:
        return bool(self.cfg["model"].get("svm"))

    def forward(self, images: torch.Tensor):
        """The model's output (logits, maps, features) for a batch, on the run's device and precision."""
        from attnmel.explain.attributions import prepared_model

        net = prepared_model(self.model, channels_last=True)
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.autocast():
            return net(x)

    def svm(self):
        """The ``model.svm`` fusion's SVM: ``svm.npz`` when it exists, else fitted on the training split's
        penultimate features once and saved."""
        if self._svm is None:
            from attnmel.train.svm import FeatureSVM, fit_feature_svm

            path = self.folder.svm_file
            if path.is_file():
                self._svm = FeatureSVM.load(path)
            else:
                train = score_loader(self, self.data().eval_dataloader("train"), fuse=False)
                self._svm = fit_feature_svm(train.features, train.labels, num_classes=len(self.class_names),
                                            seed=int(self.cfg["seed"]))
                self._svm.save(path)
        return self._svm


def open_run(run_dir: str | Path, device: str | None = None, which: str = BEST) -> TrainedRun:
    """Load a trained run once: its checkpoint, config (``data.masks`` resolved), model on ``device`` (default:
    ``trainer.accelerator``) in eval mode, and the precision it runs with."""
    from attnmel.train.masks import resolve_mask_source

    loaded = load_run(run_dir, which)
    cfg = resolve_mask_source(loaded.cfg)
    dev = resolve_device(device or cfg["trainer"]["accelerator"])
    model = loaded.model.to(dev).eval()
    return TrainedRun(loaded.run_dir, cfg, model, loaded.class_names, loaded.melanoma_index, loaded.checkpoint,
                      device=dev, precision=resolve_precision(cfg, dev))


@dataclass
class Scored:
    """What :func:`score_loader` gives: image ids, probabilities (N, K) (the SVM fusion where the run has it),
    labels (N,) (None for unlabelled images), the network's own softmax (N, K), the penultimate features
    (N, D) and seconds spent waiting for data and in the forward."""

    ids: list[str]
    probs: np.ndarray
    labels: np.ndarray | None
    softmax: np.ndarray
    features: np.ndarray | None
    timings: dict[str, float]


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of a (B, C, H, W) batch (rot90 x k, each with and without a horizontal flip):
    the symmetries the training transform draws from, so test-time augmentation averages over them."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        out += [r, torch.flip(r, dims=(-1,))]
    return out


def softmax_tta(forward: Callable[[torch.Tensor], Any], images: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """The softmax averaged over the 8 :func:`dihedral_views` of ``images`` (``data.tta``), and the plain view's
    output (its features feed the SVM fusion)."""
    out = forward(images)
    probs = torch.softmax(out.logits.detach().float(), dim=1)
    for view in dihedral_views(images)[1:]:
        probs = probs + torch.softmax(forward(view).logits.detach().float(), dim=1)
    return probs / 8.0, out


def score_loader(run: TrainedRun, loader, forward: Callable[[dict], Any] | None = None, *,
                 fuse: bool = True) -> Scored:
    """Score every batch of ``loader`` with the run's model, on its device and precision.

    ``forward(batch)`` returns an object with ``logits`` (B, K) and ``features`` (B, D) (default: the run's own
    :meth:`TrainedRun.forward`); a caller that also wants maps passes its own and keeps them. ``fuse``: apply the
    SVM fusion of a ``model.svm`` run (False only to fit that SVM).
    """
    # data.tta: the run's own forward over the 8 rotations/flips (a caller's own forward, e.g. the report's maps,
    # sees the plain view only)
    tta = forward is None and bool(run.cfg["data"].get("tta"))
    forward = forward or (lambda batch: run.forward(batch["image"]))
    svm = run.uses_svm and fuse
    ids: list[str] = []
    soft: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    timings = {"data": 0.0, "forward": 0.0}
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        timings["data"] += time.perf_counter() - t0
        if batch is None:
            break
        t0 = time.perf_counter()
        if tta:
            p, out = softmax_tta(run.forward, batch["image"])
        else:
            out = forward(batch)
            p = torch.softmax(out.logits.detach().float(), dim=1)
        soft.append(p.cpu().numpy())
        if out.features is not None:
            feats.append(out.features.detach().float().cpu().numpy())
        timings["forward"] += time.perf_counter() - t0
        if "label" in batch:
            labels.append(batch["label"].cpu().numpy())
        ids += [str(i) for i in batch["image_id"]]
    softmax = np.concatenate(soft) if soft else np.zeros((0, len(run.class_names)))
    features = np.concatenate(feats) if feats and len(feats) == len(soft) else None
    probs = softmax
    if svm and len(ids):
        from attnmel.train.svm import average_with_svm

        if features is None:
            raise AttnMelError(f"{run.run_dir}: model.svm needs the model's penultimate features")
        probs = average_with_svm(softmax, features, run.svm())
    lab = np.concatenate(labels) if labels else (np.zeros(0, dtype=int) if not ids else None)
    return Scored(ids, probs, lab, softmax, features, timings)
