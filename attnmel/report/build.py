"""``attnmel report``: one self-contained HTML page per run, ``RUN_DIR/report/index.html``.

The page holds the run's config, dataset and checkpoint; classification metrics recomputed on the split
(ROC, precision-recall, confusion matrix); the attention-quality table (method x layer: Jaccard, Dice,
pointing game, energy inside) for the model's attention maps, CAM (VGG-16-GAP), Grad-CAM, optionally
Integrated Gradients, and the centred-blob baseline, all scored by :mod:`attnmel.explain.maps`; the
Jaccard-vs-threshold curve and per-image Jaccard histogram; a gallery (best, worst, random) and the cases
where the model is right but looks outside the lesion. Figures are PNG files in ``report/figures/``,
referenced relatively, so the page opens offline from ``file://``. The numbers also go to
``metrics.json`` (``attention`` section, with a per-image list) and ``reports/index.html`` is rebuilt.

One pass over the split does everything per batch: a single forward gives the predictions, the attention
maps and (captum, batched) Grad-CAM of the predicted class, with the parameters frozen so that autograd
records only the layers after ``gradcam_layer`` (see :func:`forward_with_gradcam`); then optional CAM and
Integrated Gradients, and scoring. Only the small raw maps are kept for the gallery.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from attnmel.errors import AttnMelError, file_error
from attnmel.io import write_text

log = logging.getLogger("attnmel.report")

TEMPLATES = Path(__file__).resolve().parent / "templates"
GALLERY_SIZE = 6  # cases per gallery group (best, worst, random, right-but-outside thumbnails)
GALLERY_SEED = 0
# "Right but looking outside": a correct prediction whose primary map puts less than this share of its
# (re-normalised) energy inside the lesion.
OUTSIDE_ENERGY = 0.5
EXPLAIN_TARGET = "predicted"
PAPER_ANCHORS = ("Paper (ISIC 2017 test, attention vs lesion masks, Jaccard pool-3 / pool-4): AttnMel-CNN "
                 "0.3105 / 0.3186; AttnMel-CNN-Dermo 0.3621 / 0.4767; AttnMel-CNN-Lesion 0.5533 / 0.6560; "
                 "VGG-16-GAP CAM 0.2825.")


# -- templates -----------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "—" if not np.isfinite(v) else f"{float(v):.{digits}f}"
    return str(v)


def template_env():
    """The jinja2 environment of the report templates; autoescape is on for every template."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    return env


# -- methods -------------------------------------------------------------------------------------------
def method_label(method: str) -> tuple[str, str]:
    """(method, layer) as the attention-quality table shows them."""
    if method.startswith("attention:"):
        layer = method.split(":", 1)[1]
        return "AttnMel attention", layer.replace("pool", "pool-")
    return {
        "cam": ("CAM (VGG-16-GAP)", "pool-5"),
        "gradcam": ("Grad-CAM (captum LayerGradCam)", "gradcam_layer (last conv block)"),
        "ig": ("Integrated Gradients (captum)", "input"),
        "blob": ("Centred Gaussian blob (baseline)", "—"),
        "random": ("Uniform random map (floor)", "—"),
    }.get(method, (method, ""))


def short_label(method: str) -> str:
    """Compact name for legends and gallery column heads."""
    m, layer = method_label(method)
    if method.startswith("attention:"):
        return f"attention {layer}"
    return {"cam": "CAM", "gradcam": "Grad-CAM", "ig": "Int. Gradients", "blob": "blob",
            "random": "random"}.get(method, m)


def _slug(method: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in method)


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    # Without parameter gradients autograd records only what lies after the first tensor that needs one
    # (Grad-CAM: the hooked layer's output), which roughly halves the cost of an attribution pass.
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


@dataclass
class ForwardResult:
    """One batch through the model: logits (B, K), attention maps {layer: (B, h, w)}, Grad-CAM (B, h', w')."""

    logits: torch.Tensor
    maps: dict[str, torch.Tensor]
    gradcam: torch.Tensor
    forward_s: float


def forward_with_gradcam(model: nn.Module, images: torch.Tensor) -> ForwardResult:
    """Logits, attention maps and Grad-CAM of each image's predicted class from ONE forward pass.

    Grad-CAM is captum's ``LayerGradCam`` on ``model.gradcam_layer`` (ReLU, summed over channels). Its
    forward function returns each image's largest logit, whose gradient is the gradient of the argmax class's
    logit, so the predicted class needs no earlier pass; the same forward's ``ClassifierOutput`` gives the
    logits and attention maps. With the parameters frozen, autograd records only the layers after
    ``gradcam_layer``: the backbone runs without gradients, as plain inference would, and the whole batch
    costs about one inference pass instead of two.
    """
    from captum.attr import LayerGradCam

    layer = getattr(model, "gradcam_layer", None)
    if not isinstance(layer, nn.Module):
        raise AttnMelError(f"{type(model).__name__} has no gradcam_layer module; Grad-CAM needs one")
    seen: list[tuple[Any, float]] = []

    def forward(z: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = model(z)
        seen.append((out, time.perf_counter() - t0))
        return out.logits.max(dim=1, keepdim=True).values

    gc = LayerGradCam(forward, layer)
    with _frozen(model), torch.enable_grad():
        attr = gc.attribute(images, target=0, relu_attributions=True)
    out, _ = seen[-1]
    return ForwardResult(logits=out.logits.detach().float().cpu(),
                         maps={k: v.detach().float()[:, 0].cpu() for k, v in out.maps.items()},
                         gradcam=attr.detach().float().sum(dim=1).cpu(), forward_s=sum(t for _, t in seen))


def integrated_gradients_batch(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """captum ``IntegratedGradients`` with the settings of :mod:`attnmel.explain.attributions`, (B, H, W)."""
    from captum.attr import IntegratedGradients

    from attnmel.explain.attributions import DEFAULT_IG_INTERNAL_BATCH, DEFAULT_IG_STEPS

    ig = IntegratedGradients(lambda z: model(z).logits)
    with _frozen(model), torch.enable_grad():
        attr = ig.attribute(images, baselines=0.0, target=targets, n_steps=DEFAULT_IG_STEPS,
                            internal_batch_size=DEFAULT_IG_INTERNAL_BATCH)
    return attr.detach().float().abs().sum(dim=1).cpu()


def cam_batch(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """VGG-16-GAP class activation maps (B, h, w) of ``targets`` (what :func:`~attnmel.explain.baselines.cam_maps`
    computes, without its second forward pass for the predicted class)."""
    cams = model.class_activation_map(images)
    return cams[torch.arange(images.shape[0]), targets.to(cams.device)].float().cpu()


class _Head(torch.utils.data.Dataset):
    """The first ``n`` items of a dataset. Keys go through unchanged, whatever the sampler yields (an int, or
    the DataModule's ``(position, seed)`` pairs), which ``torch.utils.data.Subset`` does not allow."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset, self.n = dataset, int(n)
        self.with_mask = getattr(dataset, "with_mask", False)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        return self.dataset[key]


# -- the pass over the split -----------------------------------------------------------------------------
@dataclass
class Collected:
    """What one pass over the split gathers."""

    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    maps: list[dict[str, np.ndarray]] = field(default_factory=list)  # raw maps per image, for the gallery
    lesion_px: list[int] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)  # attention_quality rows
    by_case: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (method, position) -> row
    timings: dict[str, float] = field(default_factory=lambda: {"data": 0.0, "inference": 0.0,
                                                               "attributions": 0.0, "scoring": 0.0})


def _collect(model: nn.Module, loader, has_masks: bool, integrated_gradients: bool, root: Path) -> Collected:
    from attnmel.explain.baselines import blob_maps, random_map, random_map_hw
    from attnmel.explain.maps import attention_quality

    c = Collected()
    t = c.timings
    has_cam = hasattr(model, "class_activation_map")
    model.eval()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        t["data"] += time.perf_counter() - t0
        if batch is None:
            break
        x = batch["image"]
        ids = [str(i) for i in batch["image_id"]]
        t0 = time.perf_counter()
        fr = forward_with_gradcam(model, x)
        spent = time.perf_counter() - t0
        # The forward itself is the inference; the rest of the call is Grad-CAM's (small) backward.
        t["inference"] += fr.forward_s
        t["attributions"] += spent - fr.forward_s
        probs = torch.softmax(fr.logits, dim=1).numpy()
        targets = torch.from_numpy(probs.argmax(axis=1).astype(np.int64))
        maps: dict[str, np.ndarray] = {f"attention:{k}": v.numpy() for k, v in fr.maps.items()}
        t0 = time.perf_counter()
        if has_cam:
            with torch.inference_mode():
                maps["cam"] = cam_batch(model, x, targets).numpy()
        maps["gradcam"] = fr.gradcam.numpy()
        if integrated_gradients:
            maps["ig"] = integrated_gradients_batch(model, x, targets).numpy().astype(np.float16)
        t["attributions"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        if has_masks:
            if "mask" not in batch:
                raise AttnMelError(f"{root}: a batch of the split came without lesion masks")
            mk = batch["mask"]
            if tuple(mk.shape[-2:]) != tuple(x.shape[-2:]):
                raise file_error(root, f"lesion mask of {ids[0]} is {tuple(mk.shape[-2:])} but its image is "
                                       f"{tuple(x.shape[-2:])} after the transform; masks must have the "
                                       "image's size")
            masks = list((mk[:, 0] > 0.5).numpy())
            scored = {k: [v[i].astype(np.float32) for i in range(len(ids))] for k, v in maps.items()}
            scored["blob"] = blob_maps(masks)
            scored["random"] = [random_map(i, random_map_hw(tuple(x.shape[-2:]))) for i in ids]
            rows = attention_quality(scored, masks, ids)["per_image"]
            # attention_quality lists each method's images in batch order.
            for j, r in enumerate(rows):
                c.by_case[(r["method"], len(c.ids) + j % len(ids))] = r
            c.per_image += rows
            c.lesion_px += [int(m.sum()) for m in masks]
        t["scoring"] += time.perf_counter() - t0

        c.ids += ids
        c.labels += [int(v) for v in batch["label"]]
        c.probs.append(probs)
        c.maps += [{k: v[i] for k, v in maps.items()} for i in range(len(ids))]
    return c


def _summarise(per_image: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Means per method over images: the numbers :func:`attention_quality` reports, over all batches."""
    from attnmel.explain.maps import SCORE_KEYS

    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rows = [r for r in per_image if r["method"] == m]
        if not rows:
            continue
        s: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in SCORE_KEYS}
        s["jaccard_curve"] = np.mean([r["jaccard_curve"] for r in rows], axis=0).tolist()
        s["n_images"] = len(rows)
        out[m] = s
    return out


def _primary_method(methods: Sequence[str]) -> str:
    att = [m for m in methods if m.startswith("attention:")]
    if "attention:pool4" in att:
        return "attention:pool4"
    if att:
        return att[-1]
    return "cam" if "cam" in methods else "gradcam"


# -- the report ----------------------------------------------------------------------------------------
def build_report(run_dir: str | Path, split: str = "test", integrated_gradients: bool = False,
                 limit: int | None = None, *, reports_root: Path | None = Path("reports"),
                 runs_roots: Sequence[Path] = (Path("runs"), Path("sweeps")),
                 gallery_size: int = GALLERY_SIZE, checks_options: dict[str, int] | None = None) -> Path:
    """Write ``RUN_DIR/report/index.html`` (+ ``figures/``) and the ``attention`` section of metrics.json.

    ``limit``: use the split's first ``limit`` images. ``reports_root``: where ``index.html`` listing all
    runs is rebuilt (None: not rebuilt). ``checks_options``: sizes of the checks beyond overlap
    (:func:`attnmel.report.checks.explanation_checks`: ``faithfulness_images``, ``faithfulness_steps``,
    ``randomisation_images``, ``randomisation_stages``). Returns the report's path.
    """
    from attnmel import config as config_mod
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.metrics.classification import classification_metrics, curves
    from attnmel.train.rundir import load_run, update_metrics

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise AttnMelError(f"report --limit must be a positive integer, got {limit!r}")
    if split not in ("train", "val", "test"):
        raise AttnMelError(f"unknown split '{split}' (known: train, val, test)")
    run = load_run(run_dir)
    if run.cfg.get("task", "classification") != "classification":
        raise file_error(run_dir, "a segmentation run: the attention report needs a classifier run")
    dm = AttnMelDataModule(run.cfg, progress=False)
    ds = dm.dataset(split, train=False)  # the eval transform, one item per image, even for "train"
    if len(ds) == 0:
        raise file_error(dm.root, f"split '{split}' has no images")
    has_masks = bool(getattr(ds, "with_mask", False))
    used = _Head(ds, limit) if limit and limit < len(ds) else ds
    loader = dm.loader(used)
    t_load = time.perf_counter() - t_start

    model = run.model
    c = _collect(model, loader, has_masks, integrated_gradients, dm.root)
    n = len(c.ids)
    labels = np.asarray(c.labels, dtype=np.int64)
    probs = np.concatenate(c.probs)
    pred = probs.argmax(axis=1)
    mel = run.melanoma_index
    t0 = time.perf_counter()
    cls = classification_metrics(labels, probs, run.class_names, mel)
    crv = curves(labels, probs, run.class_names, mel)
    t_cls = time.perf_counter() - t0

    map_methods = list(c.maps[0].keys()) if c.maps else []
    methods = map_methods + (["blob", "random"] if has_masks else [])
    mean = _summarise(c.per_image, methods) if has_masks else {}
    primary = _primary_method(map_methods)

    def score(method: str, k: int, key: str = "jaccard") -> float | None:
        r = c.by_case.get((method, k))
        return None if r is None else float(r[key])

    # -- which images the gallery shows ------------------------------------------------------------
    rng = np.random.default_rng(GALLERY_SEED)
    groups: list[tuple[str, str, list[int]]] = []
    if has_masks:
        order = sorted(range(n), key=lambda k: (-(score(primary, k) or 0.0), k))
        best = order[:gallery_size]
        worst = [k for k in reversed(order) if k not in best][:gallery_size]
        rest = [k for k in range(n) if k not in best and k not in worst]
        pick = sorted(rng.choice(rest, size=min(gallery_size, len(rest)), replace=False).tolist()) if rest else []
        groups += [("best", f"Highest {short_label(primary)} Jaccard", best),
                   ("worst", f"Lowest {short_label(primary)} Jaccard", worst),
                   ("random", f"Random sample (seed {GALLERY_SEED})", pick)]
    else:
        pick = sorted(rng.choice(n, size=min(gallery_size, n), replace=False).tolist())
        groups.append(("random", f"Random sample (seed {GALLERY_SEED})", pick))
    outside_rule = (f"correct prediction (argmax = true class), a non-empty lesion mask, and the "
                    f"{short_label(primary)} map puts less than {OUTSIDE_ENERGY:.0%} of its re-normalised "
                    f"energy inside the lesion (energy inside < {OUTSIDE_ENERGY})")
    outside: list[int] = []
    if has_masks:
        outside = [k for k in range(n) if pred[k] == labels[k] and c.lesion_px[k] > 0
                   and (score(primary, k, "energy_inside") or 0.0) < OUTSIDE_ENERGY]
        outside.sort(key=lambda k: (score(primary, k, "energy_inside") or 0.0, k))

    # -- beyond overlap: artefacts, faithfulness, randomisation, intervals (attnmel.report.checks) ---------
    from attnmel.report.checks import ChecksInput, explanation_checks

    checks = explanation_checks(ChecksInput(model, ds, c.ids, labels, probs, c.maps, c.per_image,
                                            [m for m in methods if m in mean], primary, split,
                                            run.cfg["data"]["dataset"], integrated_gradients, short_label),
                                run_dir / "report" / "figures", **(checks_options or {}))

    # -- drawing: each figure once ----------------------------------------------------------------------
    t0 = time.perf_counter()
    report_dir = run_dir / "report"
    fig_dir = report_dir / "figures"
    written: set[Path] = set(checks.figures)
    figs = _draw_metric_figures(fig_dir, cls, crv, run.class_names, mean, c, has_masks, written)
    drawn: dict[int, dict[str, Any]] = {}
    wanted = [k for _, _, ks in groups for k in ks] + outside[:gallery_size] + checks.gallery[:gallery_size]
    for k in wanted:
        if k not in drawn:
            drawn[k] = _draw_case(fig_dir, used, k, c, dm.mean, dm.std, has_masks, written)
    _remove_stale(fig_dir, written)
    t_draw = time.perf_counter() - t0

    # -- numbers -------------------------------------------------------------------------------------
    suffix = "" if split == "test" else f"_{split}"
    masks_note = ("" if not run.cfg["data"].get("masks") else
                  f"lesion masks where the dataset has none come from data.masks={run.cfg['data']['masks']} "
                  "(predicted by a segmentation run), not from ground truth")
    no_mask_reason = ("" if has_masks else
                      f"split '{split}' of dataset '{run.cfg['data']['dataset']}' ({run.cfg['data']['root']}) "
                      "has no lesion mask for every image, and the attention-quality scores (Jaccard, Dice, "
                      "pointing game, energy inside) compare each map with the image's lesion mask, so they are "
                      "left out; the maps are still shown")
    case = {k: _case_row(k, c, probs, run.class_names, mel, pred, map_methods, score, has_masks) for k in range(n)}
    if has_masks:
        attention: dict[str, Any] = {
            "available": True, "split": split, "n_images": n, "limit": limit, "target": EXPLAIN_TARGET,
            "threshold": 0.5, "thresholds": _thresholds(), "order_rule": _order_rule(),
            "methods": {m: {"method": method_label(m)[0], "layer": method_label(m)[1]} for m in methods},
            "mean": mean, "primary": primary,
            "right_but_outside": {"rule": outside_rule, "image_ids": [c.ids[k] for k in outside]},
            "per_image": [{k: v for k, v in r.items() if k != "jaccard_curve"} for r in c.per_image],
        }
        if masks_note:
            attention["masks_note"] = masks_note
    else:
        attention = {"available": False, "split": split, "n_images": n, "limit": limit, "reason": no_mask_reason,
                     "mean": {}, "per_image": []}
    attention.update(checks.metrics)

    timings = {"load": t_load, **c.timings, "classification": t_cls, **checks.timings, "drawing": t_draw}
    ctx = dict(
        run=dict(name=run_dir.resolve().name, run_dir=str(run_dir), checkpoint=_rel(run.checkpoint, run_dir),
                 model=run.cfg["model"]["name"], pretrained=run.cfg["model"].get("pretrained"),
                 dataset=run.cfg["data"]["dataset"], root=str(run.cfg["data"]["root"]), split=split, n_images=n,
                 n_split=len(ds), limit=limit, class_names=run.class_names, melanoma_class=run.class_names[mel],
                 has_masks=has_masks, image_size=run.cfg["data"]["image_size"],
                 generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        config_yaml=config_mod.dump(run.cfg),
        cls=cls, cls_rows=_cls_rows(cls), figs=figs,
        attention=attention, no_mask_reason=no_mask_reason, masks_note=masks_note,
        table=[dict(key=m, method=method_label(m)[0], layer=method_label(m)[1], **mean[m]) for m in methods
               if m in mean],
        order_rule=_order_rule(), target=EXPLAIN_TARGET, ig=integrated_gradients, paper=PAPER_ANCHORS,
        primary=short_label(primary), outside_rule=outside_rule,
        columns=[("image", "image + ground truth" if has_masks else "image")]
                + [(m, short_label(m)) for m in map_methods],
        groups=[dict(key=g, title=t, cases=[{**case[k], **drawn[k]} for k in ks]) for g, t, ks in groups],
        outside=dict(n=len(outside), cases=[{**case[k], **drawn[k]} for k in outside[:gallery_size]],
                     more=[case[k] for k in outside[gallery_size:]]),
        checks=dict(checks.ctx, artefact_cases=[{**case[k], **drawn[k]} for k in checks.gallery[:gallery_size]],
                    artefact_more=[case[k] for k in checks.gallery[gallery_size:]]),
        timings={**timings, "total before writing the page": time.perf_counter() - t_start},
    )
    t0 = time.perf_counter()
    html = template_env().get_template("report.html").render(**ctx)
    path = report_dir / "index.html"
    write_text(path, html)
    timings["render"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    update_metrics(run_dir, {f"attention{suffix}": attention,
                             f"report{suffix}": {"path": _rel(path, run_dir), "n_images": n,
                                                 "integrated_gradients": integrated_gradients,
                                                 "classification": {k: cls.get(k) for k in
                                                                    ("auc", "average_precision", "n_images")},
                                                 "timings_s": {k: round(v, 3) for k, v in timings.items()}}})
    if reports_root is not None:
        _rebuild_index(Path(reports_root), run_dir, runs_roots)
    return path


def _rebuild_index(reports_root: Path, run_dir: Path, runs_roots: Sequence[Path]) -> None:
    from attnmel.report.index import rebuild_index

    roots = [Path(r) for r in runs_roots]
    here = run_dir.resolve()
    if not any(r.resolve() == here or r.resolve() in here.parents for r in roots):
        roots.append(run_dir.parent)  # a run outside runs/ and sweeps/ still appears in the index
    try:
        rebuild_index(reports_root, roots)
    except OSError as e:  # the run's own report is written; a read-only reports/ must not undo that
        log.warning("%s: could not rebuild the reports index (%s)", reports_root, e)


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def _thresholds() -> list[float]:
    from attnmel.explain.maps import CURVE_THRESHOLDS

    return list(CURVE_THRESHOLDS)


def _order_rule() -> str:
    from attnmel.explain.maps import ORDER_RULE

    return ORDER_RULE


_CLS_KEYS = (("auc", "AUC (melanoma vs rest)"), ("average_precision", "average precision"),
             ("accuracy", "accuracy (p > 0.5)"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
             ("balanced_accuracy", "balanced accuracy"), ("f1", "F1"),
             ("spec_at_sens_82", "specificity at 82 % sensitivity"),
             ("spec_at_sens_89", "specificity at 89 % sensitivity"),
             ("spec_at_sens_95", "specificity at 95 % sensitivity"),
             ("multiclass_accuracy", "multi-class accuracy (argmax)"), ("mean_auc", "mean AUC over classes"),
             ("isic2017_mean_auc", "ISIC 2017 mean AUC (melanoma, SK)"))


def _cls_rows(cls: dict[str, Any]) -> list[dict[str, Any]]:
    undefined = cls.get("undefined") or {}
    return [dict(key=k, label=label, value=cls[k], why=undefined.get(k, "")) for k, label in _CLS_KEYS if k in cls]


def _case_row(k: int, c: Collected, probs: np.ndarray, class_names: list[str], mel: int, pred: np.ndarray,
              methods: Sequence[str], score, has_masks: bool) -> dict[str, Any]:
    y = c.labels[k]
    row: dict[str, Any] = dict(image_id=c.ids[k], true=class_names[y], predicted=class_names[int(pred[k])],
                               correct=bool(int(pred[k]) == y), p_mel=float(probs[k, mel]))
    if has_masks:
        row["jaccard"] = {m: score(m, k) for m in methods}
        row["energy"] = {m: score(m, k, "energy_inside") for m in methods}
    return row


def _draw_metric_figures(fig_dir: Path, cls: dict, crv: dict, class_names: list[str], mean: dict,
                         c: Collected, has_masks: bool, written: set[Path]) -> dict[str, str]:
    from attnmel.report import figures as F

    mel_c = crv["melanoma"]
    reason = mel_c.get("reason", "")
    prevalence = cls["n_melanoma"] / cls["n_images"] if cls["n_images"] else None
    out = {
        "roc": F.roc_figure(mel_c["roc"], fig_dir / "roc.png", cls.get("auc"), crv.get("per_class"), reason),
        "pr": F.pr_figure(mel_c["pr"], fig_dir / "pr.png", cls.get("average_precision"), prevalence, reason),
        "confusion": F.confusion_figure(cls["confusion_matrix"], class_names, fig_dir / "confusion.png"),
    }
    if has_masks and mean:
        labels = {m: short_label(m) for m in mean}
        out["jaccard_curve"] = F.jaccard_curve_figure(_thresholds(), {m: s["jaccard_curve"] for m, s in mean.items()},
                                                      labels, fig_dir / "jaccard_curve.png")
        per: dict[str, list[float]] = {m: [] for m in mean}
        for r in c.per_image:
            per[r["method"]].append(r["jaccard"])
        out["jaccard_hist"] = F.jaccard_histogram_figure(per, labels, fig_dir / "jaccard_hist.png")
    written.update(out.values())
    return {k: f"figures/{p.name}" for k, p in out.items()}


def _denormalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    img = (x.float() * s + m).clamp(0.0, 1.0) * 255.0
    return img.round().to(torch.uint8).permute(1, 2, 0).numpy()


def _draw_case(fig_dir: Path, dataset, k: int, c: Collected, mean: Sequence[float], std: Sequence[float],
               has_masks: bool, written: set[Path]) -> dict[str, Any]:
    """The panels of one case: the image (+ truth contour) and each map over it, one PNG each."""
    from attnmel.explain.maps import postprocess_map
    from attnmel.report import figures as F

    item = dataset[k]
    image = _denormalise(item["image"], mean, std)
    mask = (item["mask"][0] > 0.5).numpy() if has_masks and "mask" in item else None
    hw = image.shape[:2]
    panels = []
    path = F.write_png(fig_dir / f"case{k:05d}_image.png", F.overlay_panel(image, None, mask))
    written.add(path)
    panels.append(dict(key="image", src=f"figures/{path.name}"))
    for method, raw in c.maps[k].items():
        heat = postprocess_map(np.asarray(raw, dtype=np.float32), hw)
        path = F.write_png(fig_dir / f"case{k:05d}_{_slug(method)}.png", F.overlay_panel(image, heat, mask))
        written.add(path)
        panels.append(dict(key=method, src=f"figures/{path.name}"))
    return {"panels": panels}


def _remove_stale(fig_dir: Path, written: set[Path]) -> None:
    # Cases drawn by an earlier build (another limit or split) would otherwise pile up beside the page.
    keep = {p.resolve() for p in written}
    for p in fig_dir.glob("*.png"):
        if p.resolve() not in keep:
            try:
                p.unlink()
            except OSError:
                pass
