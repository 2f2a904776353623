"""``attnmel report``: one self-contained HTML page per run, ``RUN_DIR/report/index.html``.

The page holds the run's config, dataset and checkpoint; classification metrics recomputed on the split
(ROC, precision-recall, confusion matrix); the attention-quality table (method x layer: Jaccard, Dice,
pointing game, energy inside) for the model's attention maps, CAM (VGG-16-GAP), Grad-CAM, optionally
Integrated Gradients, and the centred-blob baseline, all scored by :mod:`attnmel.explain.maps`; the
Jaccard-vs-threshold curve and per-image Jaccard histogram; a gallery (best, worst, random) and the cases
where the model is right but looks outside the lesion. Figures are files in ``report/figures/``,
referenced relatively, so the page opens offline from ``file://``. The numbers also go to
``metrics.json`` (``attention`` section, with a per-image list) and ``reports/index.html`` is rebuilt.

:func:`report_numbers` is the scoring half, with no figure and no page-only check (the sweep calls it through
:func:`score_attention`): :func:`open_split` (the run on its device and the split), :func:`collect` (one pass
over the split through :func:`attnmel.train.inference.score_loader`: probabilities, with the SVM fusion where the
run has it, and the maps of :func:`attnmel.explain.attributions.explain_batch`, scored per batch), :func:`score`
(classification metrics and the means), :func:`select_gallery` and the ``attention`` section.
:func:`build_report` adds the page: the checks beyond overlap, :func:`draw`,
:func:`page_context` + :func:`render_page`, and writing. The page and its figures are built in a temporary folder
beside ``RUN_DIR/report/`` and swapped in at the end (:func:`attnmel.io.atomic_dir`): a build that fails or is
killed half-way leaves the previous report whole.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from attnmel.errors import AttnMelError, file_error, missing_masks
from attnmel.explain.attributions import DEFAULT_TARGET
from attnmel.explain.methods import method_label, short_label
from attnmel.explain.overlay import DEFAULT_OVERLAY_SIDE
from attnmel.io import atomic_dir, atomic_path, write_text
from attnmel.report.calibration import reported_probs
from attnmel.report.real_artefacts import real_artefact_section
from attnmel.report.render import template_env

log = logging.getLogger("attnmel.report")

GALLERY_SIZE = 6  # cases per gallery group (best, worst, random, right-but-outside thumbnails)
GALLERY_SEED = 0
# "Right but looking outside": a correct prediction whose primary map puts less than this share of its
# (re-normalised) energy inside the lesion, and less than a flat map would (the lesion's share of the view).
OUTSIDE_ENERGY = 0.5
PAPER_ANCHORS = ("Paper (ISIC 2017 test, attention vs lesion masks, Jaccard pool-3 / pool-4): AttnMel-CNN "
                 "0.3105 / 0.3186; AttnMel-CNN-Dermo 0.3621 / 0.4767; AttnMel-CNN-Lesion 0.5533 / 0.6560; "
                 "VGG-16-GAP CAM 0.2825.")


def _slug(method: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in method)


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


# -- step 0: the run and the split ------------------------------------------------------------------------
@dataclass
class Inputs:
    """The run, its DataModule and the (possibly limited) split the report covers."""

    run_dir: Path
    split: str
    limit: int | None
    run: Any  # attnmel.train.inference.TrainedRun: cfg, model on its device, class_names, melanoma_index, ...
    dm: Any  # AttnMelDataModule
    n_split: int
    used: Any  # the dataset the report iterates (the split, or its first ``limit`` items)
    has_masks: bool
    load_s: float = 0.0
    view: Any = None  # attnmel.train.external.DataView: the data scored and the name results go under
    own_cfg: dict = field(default_factory=dict)  # the run's own config (before overrides / external data)

    @property
    def suffix(self) -> str:
        return self.view.suffix(self.split) if self.view is not None else ("" if self.split == "test" else
                                                                            f"_{self.split}")


def open_split(run_dir: str | Path, split: str, limit: int | None, device: str | None = None,
               run: Any = None, overrides: Sequence[str] = (), dataset: str | None = None,
               root: str | Path | None = None) -> Inputs:
    """Open the run (best checkpoint, on ``device`` or ``trainer.accelerator``; ``run``: one opened already) and
    its split's eval dataset; one-line errors for bad arguments. ``overrides``/``dataset``/``root``: keys that
    describe the data, or external data (:func:`attnmel.train.external.data_view`)."""
    from attnmel.train.external import data_view, run_on_view
    from attnmel.train.inference import open_run

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise AttnMelError(f"report --limit must be a positive integer, got {limit!r}")
    if split not in ("train", "val", "test"):
        raise AttnMelError(f"unknown split '{split}' (known: train, val, test)")
    run = run if run is not None else open_run(run_dir, device)
    if run.cfg.get("task", "classification") != "classification":
        raise file_error(run_dir, "a segmentation run: the attention report needs a classifier run")
    own_cfg = run.cfg
    view = data_view(run.cfg, split, overrides, dataset, root)
    run, split = run_on_view(run, view), view.split
    dm = run.data()
    ds = dm.dataset(split, train=False)  # the eval transform, one item per image, even for "train"
    if len(ds) == 0:
        raise file_error(dm.root, f"split '{split}' has no images")
    used = _Head(ds, limit) if limit and limit < len(ds) else ds
    if view.tag:
        from attnmel.train.external import warn_small_images

        warn_small_images(dm.index(split).samples, int(view.cfg["data"]["image_size"]), dm.root)
    return Inputs(run_dir=run_dir, split=split, limit=limit, run=run, dm=dm, n_split=len(ds), used=used,
                  has_masks=bool(getattr(ds, "with_mask", False)), load_s=time.perf_counter() - t0, view=view,
                  own_cfg=own_cfg)


# -- step 1: one pass over the split: predictions, maps, scores --------------------------------------------
@dataclass
class Collected:
    """What one pass over the split gathers."""

    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    maps: list[dict[str, np.ndarray]] = field(default_factory=list)  # raw maps per image, for the gallery
    lesion_px: list[int] = field(default_factory=list)
    lesion_share: list[float] = field(default_factory=list)  # the lesion's share of the network's view
    per_image: list[dict[str, Any]] = field(default_factory=list)  # attention_quality rows
    by_case: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (method, position) -> row
    ig_completeness: list[float] = field(default_factory=list)  # per image, with --ig
    timings: dict[str, float] = field(default_factory=lambda: {"data": 0.0, "inference": 0.0,
                                                               "attributions": 0.0, "scoring": 0.0})

    def score(self, method: str, k: int, key: str = "jaccard") -> float | None:
        """Image ``k``'s ``key`` score of ``method`` (None where not scored)."""
        r = self.by_case.get((method, k))
        return None if r is None else float(r[key])


def collect(inp: Inputs, integrated_gradients: bool, target: str | int = DEFAULT_TARGET) -> Collected:
    """Every batch once, through the one scoring function (:func:`attnmel.train.inference.score_loader`: the
    probabilities, with the SVM fusion of a ``model.svm`` run): its forward is
    :func:`~attnmel.explain.attributions.explain_batch` (the attention maps, Grad-CAM and CAM of ``target`` from
    one forward, IG on request) on the run's device and precision, and each batch's maps are scored against its
    masks."""
    from attnmel.explain.attributions import explain_batch
    from attnmel.train.inference import score_loader

    methods = ("attention", "gradcam", "cam") + (("ig",) if integrated_gradients else ())
    c = Collected()
    t = c.timings
    run = inp.run
    run.model.eval()

    def forward(batch: dict):
        with run.autocast():
            ex = explain_batch(run.model, batch["image"], methods, target, run.melanoma_index)
        t["inference"] += ex.timings["inference"]
        t["attributions"] += ex.timings["attributions"]
        maps = {k: v.numpy().astype(np.float16) if k == "ig" else v.numpy() for k, v in ex.maps.items()}
        ids = [str(i) for i in batch["image_id"]]
        t0 = time.perf_counter()
        if inp.has_masks:
            _score_batch(c, batch, maps, ids, inp.dm.root)
        t["scoring"] += time.perf_counter() - t0
        c.ids += ids  # _score_batch indexes the images from len(c.ids): after it
        c.maps += [{k: v[i] for k, v in maps.items()} for i in range(len(ids))]
        if ex.ig_completeness is not None:
            c.ig_completeness += ex.ig_completeness.tolist()
        return ex

    scored = score_loader(run, inp.dm.loader(inp.used), forward)
    t["data"] += scored.timings["data"]
    c.labels = [int(v) for v in scored.labels]
    c.probs = [scored.probs]
    return c


def _score_batch(c: Collected, batch: dict, maps: dict[str, np.ndarray], ids: list[str], root: Path) -> None:
    """Score one batch's maps (and the blob and random baselines) against its lesion masks into ``c``."""
    from attnmel.explain.baselines import baseline_maps
    from attnmel.explain.maps import attention_quality

    x = batch["image"]
    if "mask" not in batch:
        raise missing_masks(root, "a batch of the split came without lesion masks")
    mk = batch["mask"]
    if tuple(mk.shape[-2:]) != tuple(x.shape[-2:]):
        raise file_error(root, f"lesion mask of {ids[0]} is {tuple(mk.shape[-2:])} but its image is "
                               f"{tuple(x.shape[-2:])} after the transform; masks must have the image's size")
    masks = list((mk[:, 0] > 0.5).numpy())
    scored = {k: [v[i].astype(np.float32) for i in range(len(ids))] for k, v in maps.items()}
    scored.update(baseline_maps(ids, tuple(x.shape[-2:])))  # masks have the image's size (checked above)
    rows = attention_quality(scored, masks, ids)["per_image"]
    # attention_quality lists each method's images in batch order.
    for j, r in enumerate(rows):
        c.by_case[(r["method"], len(c.ids) + j % len(ids))] = r
    c.per_image += rows
    c.lesion_px += [int(m.sum()) for m in masks]
    c.lesion_share += [float(m.mean()) for m in masks]


# -- step 2: classification metrics and the means -----------------------------------------------------------
@dataclass
class Scores:
    """The split's numbers: labels, probabilities, argmax, classification metrics and curves, the attention means
    per method, the map methods in order and the primary one (which orders the gallery)."""

    labels: np.ndarray
    probs: np.ndarray
    pred: np.ndarray
    cls: dict[str, Any]
    curves: dict[str, Any]
    mean: dict[str, dict[str, Any]]
    map_methods: list[str]
    methods: list[str]
    primary: str
    seconds: float = 0.0


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


def score(inp: Inputs, c: Collected) -> Scores:
    """Classification metrics recomputed on the split, and the attention-quality means per method."""
    from attnmel.metrics.classification import classification_metrics, curves

    t0 = time.perf_counter()
    labels = np.asarray(c.labels, dtype=np.int64)
    probs = reported_probs(inp.run_dir, np.concatenate(c.probs))  # the run's temperature, where it was kept
    names, mel = inp.run.class_names, inp.run.melanoma_index
    cls = classification_metrics(labels, probs, names, mel)
    crv = curves(labels, probs, names, mel)
    map_methods = list(c.maps[0].keys()) if c.maps else []
    methods = map_methods + (["blob", "random"] if inp.has_masks else [])
    return Scores(labels=labels, probs=probs, pred=probs.argmax(axis=1), cls=cls, curves=crv,
                  mean=_summarise(c.per_image, methods) if inp.has_masks else {}, map_methods=map_methods,
                  methods=methods, primary=_primary_method(map_methods), seconds=time.perf_counter() - t0)


# -- step 3: which images the gallery shows ------------------------------------------------------------------
@dataclass
class Gallery:
    """Gallery groups ``(key, title, positions)``, the right-but-outside positions (most outside first) and the
    rule that picks them."""

    groups: list[tuple[str, str, list[int]]]
    outside: list[int]
    outside_rule: str

    def positions(self, gallery_size: int) -> list[int]:
        """Every position that gets drawn, once each, in page order."""
        out: list[int] = []
        for k in [k for _, _, ks in self.groups for k in ks] + self.outside[:gallery_size]:
            if k not in out:
                out.append(k)
        return out


def jaccard_lift(c: Collected, method: str, k: int) -> float:
    """Image ``k``'s Jaccard of ``method`` minus that of a map covering the whole view (= the lesion's share of
    the view). Raw Jaccard ranks big lesions first: on real images a lesion filling the frame gave the best
    Jaccard to maps that ignored it."""
    share = c.lesion_share[k] if k < len(c.lesion_share) else 0.0
    return (c.score(method, k) or 0.0) - share


def select_gallery(c: Collected, s: Scores, has_masks: bool, gallery_size: int) -> Gallery:
    """Best and worst by the primary map's Jaccard above the whole-view map's (:func:`jaccard_lift`), a seeded
    random sample, and the correct predictions whose primary map puts less than :data:`OUTSIDE_ENERGY` of its
    energy inside the lesion and less than a flat map would (most avoiding first)."""
    n, primary = len(c.ids), s.primary
    rng = np.random.default_rng(GALLERY_SEED)
    groups: list[tuple[str, str, list[int]]] = []
    if has_masks:
        order = sorted(range(n), key=lambda k: (-jaccard_lift(c, primary, k), k))
        best = order[:gallery_size]
        worst = [k for k in reversed(order) if k not in best][:gallery_size]
        rest = [k for k in range(n) if k not in best and k not in worst]
        pick = sorted(rng.choice(rest, size=min(gallery_size, len(rest)), replace=False).tolist()) if rest else []
        groups += [("best", f"Highest {short_label(primary)} Jaccard above the whole-view map", best),
                   ("worst", f"Lowest {short_label(primary)} Jaccard below the whole-view map", worst),
                   ("random", f"Random sample (seed {GALLERY_SEED})", pick)]
    else:
        pick = sorted(rng.choice(n, size=min(gallery_size, n), replace=False).tolist())
        groups.append(("random", f"Random sample (seed {GALLERY_SEED})", pick))
    rule = (f"correct prediction (argmax = true class), a non-empty lesion mask, and the {short_label(primary)} "
            f"map puts less than {OUTSIDE_ENERGY:.0%} of its re-normalised energy inside the lesion and less than "
            "a flat map would (energy inside < the lesion's share of the view); the map that avoids its lesion most "
            "(energy inside / lesion share) first")
    outside: list[int] = []
    if has_masks:
        def energy(k: int) -> float:
            return c.score(primary, k, "energy_inside") or 0.0

        outside = [k for k in range(n) if s.pred[k] == s.labels[k] and c.lesion_px[k] > 0
                   and energy(k) < min(OUTSIDE_ENERGY, c.lesion_share[k])]
        outside.sort(key=lambda k: (energy(k) / c.lesion_share[k], k))
    return Gallery(groups=groups, outside=outside, outside_rule=rule)


# -- step 4: drawing -------------------------------------------------------------------------------------------
def draw(out_dir: Path, inp: Inputs, c: Collected, s: Scores, gallery: Gallery, gallery_size: int,
         overlay_size: int | None, extra: Sequence[int] = ()) -> tuple[dict[str, str], dict[int, dict[str, Any]]]:
    """Every figure once, into ``out_dir/figures``: the metric plots, the colour bar and each gallery case's panels.
    Returns the figures' page-relative paths and, per drawn position, its panels."""
    from attnmel.data.cache import resolve_sources
    from attnmel.explain.overlay import colourbar_figure

    fig_dir = out_dir / "figures"
    figs = _draw_metric_figures(fig_dir, s, inp.run.class_names, c, inp.has_masks)
    figs["colourbar"] = f"figures/{colourbar_figure(fig_dir / 'colourbar.png').name}"
    samples = inp.used.dataset.index.samples if isinstance(inp.used, _Head) else inp.used.index.samples
    wanted = gallery.positions(gallery_size)
    wanted += [k for k in extra if k not in wanted]  # e.g. the checks' right-but-on-an-artefact cases
    sources = resolve_sources([samples[k] for k in wanted], inp.dm.masks_dir, inp.dm.spec)
    drawn = {k: _draw_case(fig_dir, k, src, c, inp, overlay_size) for k, src in zip(wanted, sources)}
    return figs, drawn


def _draw_metric_figures(fig_dir: Path, s: Scores, class_names: list[str], c: Collected,
                         has_masks: bool) -> dict[str, str]:
    from attnmel.explain.maps import CURVE_THRESHOLDS
    from attnmel.report import figures as F

    cls, mel_c = s.cls, s.curves["melanoma"]
    reason = mel_c.get("reason", "")
    prevalence = cls["n_melanoma"] / cls["n_images"] if cls["n_images"] else None
    out = {
        "roc": F.roc_figure(mel_c["roc"], fig_dir / "roc.png", cls.get("auc"), s.curves.get("per_class"), reason),
        "pr": F.pr_figure(mel_c["pr"], fig_dir / "pr.png", cls.get("average_precision"), prevalence, reason),
        "confusion": F.confusion_figure(cls["confusion_matrix"], class_names, fig_dir / "confusion.png"),
    }
    if has_masks and s.mean:
        labels = {m: short_label(m) for m in s.mean}
        out["jaccard_curve"] = F.jaccard_curve_figure(list(CURVE_THRESHOLDS),
                                                      {m: v["jaccard_curve"] for m, v in s.mean.items()},
                                                      labels, fig_dir / "jaccard_curve.png")
        per: dict[str, list[float]] = {m: [] for m in s.mean}
        for r in c.per_image:
            per[r["method"]].append(r["jaccard"])
        out["jaccard_hist"] = F.jaccard_histogram_figure(per, labels, fig_dir / "jaccard_hist.png")
    return {k: f"figures/{p.name}" for k, p in out.items()}


def _draw_case(fig_dir: Path, k: int, src, c: Collected, inp: Inputs, overlay_size: int | None) -> dict[str, Any]:
    """The panels of one case, one file each: the original image's region the network saw (long side capped at
    ``overlay_size``) with the truth contour, and each map upsampled over it."""
    from attnmel.explain.overlay import display_view, map_panels, panel_suffix, write_panel

    image, mask = display_view(src, inp.dm.spec, inp.dm.image_size, overlay_size)
    if not inp.has_masks:
        mask = None
    panels = []
    for key, rgb in map_panels(image, c.maps[k], mask).items():
        path = write_panel(fig_dir / f"case{k:05d}_{_slug(key)}{panel_suffix(rgb)}", rgb)
        panels.append(dict(key=key, src=f"figures/{path.name}", width=int(rgb.shape[1]), height=int(rgb.shape[0])))
    return {"panels": panels}


# -- step 5: the page --------------------------------------------------------------------------------------------
def attention_section(inp: Inputs, c: Collected, s: Scores, gallery: Gallery, target: str | int) -> dict[str, Any]:
    """The ``attention`` section of metrics.json (``available: false`` with the reason on a split without masks)."""
    from attnmel.explain.maps import CURVE_THRESHOLDS, ORDER_RULE

    n = len(c.ids)
    if not inp.has_masks:
        return {"available": False, "split": inp.split, "n_images": n, "limit": inp.limit,
                "reason": _no_mask_reason(inp), "mean": {}, "per_image": [], **_ig_completeness(c)}
    attention: dict[str, Any] = {
        "available": True, "split": inp.split, "n_images": n, "limit": inp.limit, "target": target,
        "threshold": 0.5, "thresholds": list(CURVE_THRESHOLDS), "order_rule": ORDER_RULE,
        "methods": {m: {"method": method_label(m)[0], "layer": method_label(m)[1]} for m in s.methods},
        "mean": s.mean, "primary": s.primary,
        "right_but_outside": {"rule": gallery.outside_rule, "image_ids": [c.ids[k] for k in gallery.outside]},
        "per_image": [{k: v for k, v in r.items() if k != "jaccard_curve"} for r in c.per_image],
    }
    if _masks_note(inp):
        attention["masks_note"] = _masks_note(inp)
    attention.update(_ig_completeness(c))
    return attention


def _ig_completeness(c: Collected) -> dict[str, Any]:
    """IG's completeness error over the split (``--ig``): its median and the share of images within 5 %."""
    if not c.ig_completeness:
        return {}
    from attnmel.explain.attributions import IGSettings, ig_autocast

    err = np.asarray(c.ig_completeness)
    s = IGSettings()
    bf16 = ig_autocast(s.precision, torch.device("cpu"))
    return {"ig_completeness": {"median": round(float(np.median(err)), 4),
                                "share_within_5_percent": round(float((err <= 0.05).mean()), 3),
                                "n_steps": s.n_steps, "precision": "bf16" if bf16 else "fp32"}}


def _masks_note(inp: Inputs) -> str:
    masks = inp.run.cfg["data"].get("masks")
    return ("" if not masks else f"lesion masks where the dataset has none come from data.masks={masks} "
                                 "(predicted by a segmentation run), not from ground truth")


def _no_mask_reason(inp: Inputs) -> str:
    d = inp.run.cfg["data"]
    return ("" if inp.has_masks else
            f"split '{inp.split}' of dataset '{d['dataset']}' ({d['root']}) has no lesion mask for every image, "
            "and the attention-quality scores (Jaccard, Dice, pointing game, energy inside) compare each map with "
            "the image's lesion mask, so they are left out; the maps are still shown")


def _case_row(k: int, c: Collected, s: Scores, class_names: list[str], mel: int, has_masks: bool) -> dict[str, Any]:
    y = c.labels[k]
    row: dict[str, Any] = dict(image_id=c.ids[k], true=class_names[y], predicted=class_names[int(s.pred[k])],
                               correct=bool(int(s.pred[k]) == y), p_mel=float(s.probs[k, mel]))
    if has_masks:
        row["lesion_share"] = c.lesion_share[k]
        row["jaccard"] = {m: c.score(m, k) for m in s.map_methods}
        row["energy"] = {m: c.score(m, k, "energy_inside") for m in s.map_methods}
    return row


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


def page_context(inp: Inputs, c: Collected, s: Scores, gallery: Gallery, figs: dict[str, str],
                 drawn: dict[int, dict[str, Any]], attention: dict[str, Any], *, target: str | int,
                 integrated_gradients: bool, gallery_size: int, timings: dict[str, float],
                 checks: Any = None) -> dict[str, Any]:
    """Everything ``report.html`` shows, as plain data (``checks``: :class:`~attnmel.report.checks.ChecksOutput`)."""
    from attnmel import config as config_mod
    from attnmel.explain.attributions import describe_target
    from attnmel.explain.maps import ORDER_RULE
    from attnmel.explain.overlay import colour_scale_note

    run, cfg, n = inp.run, inp.run.cfg, len(c.ids)
    mel = run.melanoma_index
    case = {k: _case_row(k, c, s, run.class_names, mel, inp.has_masks) for k in range(n)}
    return dict(
        run=dict(name=inp.run_dir.resolve().name, run_dir=str(inp.run_dir),
                 checkpoint=_rel(run.checkpoint, inp.run_dir), model=cfg["model"]["name"],
                 pretrained=cfg["model"].get("pretrained"), dataset=cfg["data"]["dataset"],
                 root=str(cfg["data"]["root"]), split=inp.split, n_images=n, n_split=inp.n_split, limit=inp.limit,
                 class_names=run.class_names, melanoma_class=run.class_names[mel], has_masks=inp.has_masks,
                 image_size=cfg["data"]["image_size"],
                 generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        config_yaml=config_mod.dump(cfg), cls=s.cls, cls_rows=_cls_rows(s.cls), figs=figs,
        attention=attention, no_mask_reason=_no_mask_reason(inp), masks_note=_masks_note(inp),
        table=[dict(key=m, method=method_label(m)[0], layer=method_label(m)[1], **s.mean[m]) for m in s.methods
               if m in s.mean],
        order_rule=ORDER_RULE, target=describe_target(target, run.class_names, mel), ig=integrated_gradients,
        paper=PAPER_ANCHORS, primary=short_label(s.primary), outside_rule=gallery.outside_rule,
        colour_note=colour_scale_note(),
        columns=[("image", "image + ground truth" if inp.has_masks else "image")]
                + [(m, short_label(m)) for m in s.map_methods],
        groups=[dict(key=g, title=t, cases=[{**case[k], **drawn[k]} for k in ks]) for g, t, ks in gallery.groups],
        outside=dict(n=len(gallery.outside), cases=[{**case[k], **drawn[k]} for k in gallery.outside[:gallery_size]],
                     more=[case[k] for k in gallery.outside[gallery_size:]]),
        checks=dict(checks.ctx, artefact_cases=[{**case[k], **drawn[k]} for k in checks.gallery[:gallery_size]],
                    artefact_more=[case[k] for k in checks.gallery[gallery_size:]]) if checks is not None else {},
        timings=timings,
    )


def render_page(ctx: dict[str, Any]) -> str:
    """The report page's HTML (jinja2, autoescaped)."""
    return template_env().get_template("report.html").render(**ctx)


# -- the numbers (no page) ---------------------------------------------------------------------------------------
@dataclass
class ReportNumbers:
    """The report's scoring half: the opened split, one pass's collection, the scores, the gallery choice and the
    ``attention`` section, with seconds per step. :func:`report_numbers` makes it; the sweep stops there."""

    inp: Inputs
    collected: Collected
    scores: Scores
    gallery: Gallery
    attention: dict[str, Any]
    timings: dict[str, float]


def report_numbers(run_dir: str | Path, split: str = "test", integrated_gradients: bool = False,
                   limit: int | None = None, *, target: str | int = DEFAULT_TARGET,
                   gallery_size: int = GALLERY_SIZE, device: str | None = None, run: Any = None,
                   overrides: Sequence[str] = (), dataset: str | None = None,
                   root: str | Path | None = None) -> ReportNumbers:
    """Everything the report computes before it draws: predictions, maps, their scores and the attention section.

    No figure is drawn and none of the page's further checks (:mod:`attnmel.report.checks`) runs. ``device``:
    where the model runs (default ``trainer.accelerator``); ``run``: a run opened already
    (:func:`attnmel.train.inference.open_run`); ``overrides`` / ``dataset`` + ``root``: keys that describe the
    data, or external data (:func:`attnmel.train.external.data_view`).
    """
    from attnmel.explain.attributions import check_target

    check_target(target)
    inp = open_split(run_dir, split, limit, device, run, overrides, dataset, root)
    c = collect(inp, integrated_gradients, target)
    s = score(inp, c)
    gallery = select_gallery(c, s, inp.has_masks, gallery_size)
    attention = attention_section(inp, c, s, gallery, target)
    return ReportNumbers(inp, c, s, gallery, attention,
                         {"load": inp.load_s, **c.timings, "classification": s.seconds})


def score_attention(run_dir: str | Path, split: str = "test", *, device: str | None = None,
                    run: Any = None) -> dict[str, Any]:
    """Write only the ``attention[_<split>]`` section of ``metrics.json`` (the sweep's numbers; no page) and
    return it."""
    from attnmel.train.rundir import RunDir

    nums = report_numbers(run_dir, split, device=device, run=run)
    suffix = "" if split == "test" else f"_{split}"
    RunDir(nums.inp.run_dir).update_metrics({f"attention{suffix}": nums.attention})
    return nums.attention


# -- the report ------------------------------------------------------------------------------------------------
def build_report(run_dir: str | Path, split: str = "test", integrated_gradients: bool = False,
                 limit: int | None = None, *, reports_root: Path | None = Path("reports"),
                 runs_roots: Sequence[Path] = (Path("runs"), Path("sweeps")),
                 gallery_size: int = GALLERY_SIZE, overlay_size: int | None = DEFAULT_OVERLAY_SIDE,
                 target: str | int = DEFAULT_TARGET, checks_options: dict[str, int] | None = None,
                 device: str | None = None, overrides: Sequence[str] = (), dataset: str | None = None,
                 root: str | Path | None = None) -> Path:
    """Write ``RUN_DIR/report/index.html`` (+ ``figures/``) and the ``attention`` section of metrics.json.

    ``limit``: use the split's first ``limit`` images. ``reports_root``: where ``index.html`` listing all
    runs is rebuilt (None: not rebuilt). ``overlay_size``: long side of the gallery panels in pixels (None: the
    original's resolution). ``target``: the class the Grad-CAM/CAM/IG maps explain. ``checks_options``: sizes of
    the checks beyond overlap (:func:`attnmel.report.checks.explanation_checks`: ``faithfulness_images``,
    ``faithfulness_steps``, ``randomisation_images``, ``randomisation_stages``). ``device``: where the model runs
    (default ``trainer.accelerator``). ``overrides``: keys that describe the data (``data.artefact_flags=...``);
    ``dataset`` + ``root``: report on external data, written to ``RUN_DIR/report_external_<dataset>_<folder>/``.
    Returns the report's path.
    """
    from attnmel.explain.overlay import check_overlay_side
    from attnmel.train.rundir import RunDir

    t_start = time.perf_counter()
    check_overlay_side(overlay_size)
    nums = report_numbers(run_dir, split, integrated_gradients, limit, target=target, gallery_size=gallery_size,
                          device=device, overrides=overrides, dataset=dataset, root=root)
    inp, c, s, gallery, attention, timings = (nums.inp, nums.collected, nums.scores, nums.gallery, nums.attention,
                                              nums.timings)
    folder = RunDir(inp.run_dir)
    report_dir = folder.report_dir_for(inp.view.tag)
    # Every file of the new report, metrics.json's update included, is written beside the old ones and swapped in
    # when all are complete (the folder, then metrics.json): a report killed half-way leaves both as they were.
    with atomic_path(folder.metrics_file) as metrics_tmp, atomic_dir(report_dir) as out_dir:
        checks = run_checks(inp, c, s, out_dir / "figures", integrated_gradients, checks_options)
        attention.update(checks.metrics)
        t0 = time.perf_counter()
        real_metrics, real_ctx = real_artefact_section(inp, c, s, inp.own_cfg)
        if real_metrics:
            attention["artefacts_real"] = real_metrics
            timings["real artefacts and counterfactuals"] = time.perf_counter() - t0
        timings.update(checks.timings)
        t0 = time.perf_counter()
        figs, drawn = draw(out_dir, inp, c, s, gallery, gallery_size, overlay_size, checks.gallery[:gallery_size])
        timings["drawing"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ctx = page_context(inp, c, s, gallery, figs, drawn, attention, target=target,
                           integrated_gradients=integrated_gradients, gallery_size=gallery_size,
                           timings={**timings, "total before writing the page": time.perf_counter() - t_start},
                           checks=checks)
        ctx["real"] = real_ctx
        calibration = run_calibration(inp, c, s, out_dir / "figures")
        ctx.update(calibration=calibration.ctx, provenance=run_provenance(inp, c), below_random=below_random(s))
        write_text(out_dir / folder.report_page.name, render_page(ctx))
        timings["render"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        _write_metrics(inp, s, attention, report_dir / folder.report_page.name, integrated_gradients, timings,
                       {"calibration": calibration.metrics,
                        "geometry": {k: ctx["provenance"][k] for k in GEOMETRY_KEYS}}, out=metrics_tmp)
    path = report_dir / folder.report_page.name
    if reports_root is not None:
        _rebuild_index(Path(reports_root), inp.run_dir, runs_roots)
    return path


def run_checks(inp: Inputs, c: Collected, s: Scores, fig_dir: Path, integrated_gradients: bool,
               options: dict[str, int] | None):
    """The checks beyond overlap (artefacts, faithfulness, randomisation, intervals): :mod:`attnmel.report.checks`."""
    from attnmel.report.checks import ChecksInput, explanation_checks

    table = [m for m in s.methods if m in s.mean]
    # The checks index the split by position and read its flags (with_artefact): the dataset under a --limit
    # head, whose first len(c.ids) items are the ones collected.
    ds = inp.used.dataset if isinstance(inp.used, _Head) else inp.used
    return explanation_checks(ChecksInput(inp.run.model, ds, c.ids, s.labels, s.probs, c.maps, c.per_image,
                                          table, s.primary, inp.split, inp.run.cfg["data"]["dataset"],
                                          integrated_gradients, short_label), fig_dir, **(options or {}))


def run_calibration(inp: Inputs, c: Collected, s: Scores, fig_dir: Path):
    """The calibration block (:mod:`attnmel.report.calibration`) on the split's softmax probabilities."""
    from attnmel.report.calibration import calibration_block

    return calibration_block(inp.run_dir, inp.split, s.labels, np.concatenate(c.probs), inp.run.melanoma_index,
                             fig_dir, oversample=inp.run.cfg["data"].get("oversample"))


def below_random(s: Scores) -> dict[str, Any]:
    """The model's maps whose mean Jaccard is below the uniform-random map's: on a real run every map was, which
    the table showed but nothing said (they avoid the lesion more than chance does)."""
    if "random" not in s.mean:
        return {}
    floor = s.mean["random"]["jaccard"]
    low = [short_label(m) for m in s.map_methods if m in s.mean and s.mean[m]["jaccard"] < floor]
    return {"methods": low, "floor": floor, "all": bool(low) and len(low) == len(s.map_methods)} if low else {}


GEOMETRY_KEYS = ("sizes", "transform", "grids", "trained_root", "same_tree", "chose_checkpoint")


def run_provenance(inp: Inputs, c: Collected) -> dict[str, Any]:
    """Which split chose the checkpoint and which geometry made the network's input
    (:mod:`attnmel.report.provenance`)."""
    from attnmel.report.provenance import provenance_block
    from attnmel.train.rundir import read_metrics

    ds = inp.used.dataset if isinstance(inp.used, _Head) else inp.used
    samples = ds.index.samples[: len(c.ids)]
    maps = {short_label(k): v for k, v in c.maps[0].items()} if c.maps else None
    return provenance_block(inp.run, inp.split, samples, maps, read_metrics(inp.run_dir))


def _write_metrics(inp: Inputs, s: Scores, attention: dict[str, Any], path: Path, integrated_gradients: bool,
                   timings: dict[str, float], report_extra: dict[str, Any] | None = None, *, out: Path) -> None:
    """The run's metrics.json with this report's sections, written to ``out`` (swapped in by the caller)."""
    from attnmel.io import write_json
    from attnmel.train.rundir import RunDir

    suffix = inp.suffix
    report = {"path": _rel(path, inp.run_dir), "n_images": len(s.labels), "integrated_gradients": integrated_gradients,
              "classification": {k: s.cls.get(k) for k in ("auc", "average_precision", "n_images")},
              "timings_s": {k: round(v, 3) for k, v in timings.items()}, **(report_extra or {})}
    write_json(out, RunDir(inp.run_dir).merged_metrics({f"attention{suffix}": attention, f"report{suffix}": report}))


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
