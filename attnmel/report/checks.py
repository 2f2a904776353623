"""The report's checks beyond overlap: artefact attention, faithfulness, randomisation, confidence intervals.

:func:`explanation_checks` runs after the pass over the split (:func:`attnmel.report.build._collect`) and
returns what the page's "beyond overlap" block shows (``ctx``), what goes into ``metrics.json["attention"]``
(``metrics``), its timings and the figures it wrote. Every method of the report takes part: the attention maps
by layer, Grad-CAM, CAM (VGG-16-GAP), Integrated Gradients when on, the centred blob and a uniform-random map.

- **Artefact attention** (splits with artefact masks, :attr:`DatasetIndex.has_artefacts`): every image's share of
  each map's mass on artefacts and whether its peak lies on one (:mod:`attnmel.explain.artefacts`), and the
  correct predictions whose primary map peaks on an artefact.
- **Faithfulness** on a seeded sample of :data:`FAITHFULNESS_IMAGES` images: deletion and insertion curves with
  :data:`FAITHFULNESS_STEPS` steps (:mod:`attnmel.explain.faithfulness`).
- **Randomisation** on the first :data:`RANDOMISATION_IMAGES` of that sample, :data:`RANDOMISATION_STAGES`
  stages (:mod:`attnmel.explain.randomisation`); Integrated Gradients, when on, on
  :data:`RANDOMISATION_IG_IMAGES` of them with :data:`RANDOMISATION_IG_STEPS` steps (trained and randomised
  maps alike), since each IG map costs that many gradient passes per stage.
- **95 % bootstrap confidence intervals** (:func:`attnmel.metrics.bootstrap.mean_ci`) on every mean of the
  attention-quality table and of the checks above.

Sizes: the defaults keep the 600-image report at 224 px under 10 minutes on 2 CPU cores (docs/BENCHMARKS.md):
faithfulness costs ``3 + 2 x (steps - 1) x methods`` forward passes per sampled image, randomisation about
``stages + 1`` forward-and-Grad-CAM passes per image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from attnmel.explain.baselines import baseline_maps

log = logging.getLogger("attnmel.report")

FAITHFULNESS_IMAGES = 16  # with 8 steps and 5 methods: ~1200 forwards, ~270 s of the 600-image report at 224 px
FAITHFULNESS_STEPS = 8
RANDOMISATION_IMAGES = 12
RANDOMISATION_STAGES = 8
RANDOMISATION_IG_IMAGES = 1
RANDOMISATION_IG_STEPS = 8  # fewer than the report's 32: the check compares rankings, on trained and random alike
CHECKS_SEED = 0
ARTEFACT_PEAK = 0.5  # a map "peaks on an artefact" when more than half of its maximal pixels lie on one


@dataclass
class ChecksOutput:
    """What :func:`explanation_checks` hands back to the report."""

    ctx: dict[str, Any]
    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    figures: set[Path] = field(default_factory=set)
    gallery: list[int] = field(default_factory=list)  # right but peaking on an artefact, most share first


@dataclass
class ChecksInput:
    """The report's state the checks read: the dataset (eval transform, sample order), the pass's results."""

    model: nn.Module
    dataset: Any
    ids: list[str]
    labels: np.ndarray
    probs: np.ndarray
    maps: list[dict[str, np.ndarray]]
    per_image: list[dict[str, Any]]
    table_methods: list[str]
    primary: str
    split: str
    dataset_name: str
    integrated_gradients: bool
    labels_of: Callable[[str], str]


def _image_hw(inp: ChecksInput) -> tuple[int, int]:
    return tuple(inp.dataset[0]["image"].shape[-2:])  # type: ignore[return-value]


def explanation_checks(inp: ChecksInput, fig_dir: Path, faithfulness_images: int = FAITHFULNESS_IMAGES,
                       faithfulness_steps: int = FAITHFULNESS_STEPS,
                       randomisation_images: int = RANDOMISATION_IMAGES,
                       randomisation_stages: int = RANDOMISATION_STAGES) -> ChecksOutput:
    """Run every check of the module docstring; see :class:`ChecksOutput`."""
    out = ChecksOutput(ctx={}, metrics={})
    n = len(inp.ids)
    rng = np.random.default_rng(CHECKS_SEED)
    sample = sorted(rng.choice(n, size=min(n, max(1, faithfulness_images)), replace=False).tolist())
    methods = [*list(inp.maps[0].keys()), "blob", "random"]
    labels = {m: inp.labels_of(m) for m in methods}

    t0 = time.perf_counter()
    out.ctx["ci"], out.metrics["ci"] = _table_cis(inp)
    out.timings["confidence intervals"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out.ctx["artefact"], out.metrics["artefact"], out.gallery = _artefacts(inp, methods)
    out.timings["artefact scoring"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    faith = _faithfulness(inp, sample, methods, faithfulness_steps)
    out.timings["faithfulness"] = time.perf_counter() - t0
    path = perturbation_curves_figure(faith["curves"], labels, fig_dir / "faithfulness.png")
    out.figures.add(path)
    out.ctx["faithfulness"] = {**faith, "figure": f"figures/{path.name}"}
    out.metrics["faithfulness"] = {k: v for k, v in faith.items() if k != "rows"}

    t0 = time.perf_counter()
    rand = _randomisation(inp, sample[:max(1, randomisation_images)], randomisation_stages)
    out.timings["randomisation"] = time.perf_counter() - t0
    path = randomisation_figure(rand["stages"], rand["mean"], labels, rand["fail_rho"], fig_dir / "randomisation.png")
    out.figures.add(path)
    out.ctx["randomisation"] = {**rand, "figure": f"figures/{path.name}"}
    out.metrics["randomisation"] = {k: v for k, v in rand.items() if k != "rows"}
    for ctx in out.ctx.values():
        if isinstance(ctx, dict):
            ctx.setdefault("labels", labels)
    return out


# -- confidence intervals of the attention-quality table ------------------------------------------------
def _table_cis(inp: ChecksInput) -> tuple[dict[str, Any], dict[str, Any]]:
    from attnmel.explain.maps import SCORE_KEYS
    from attnmel.metrics.bootstrap import DEFAULT_RESAMPLES, mean_ci

    cis: dict[str, dict[str, Any]] = {}
    for m in inp.table_methods:
        rows = [r for r in inp.per_image if r["method"] == m]
        if rows:
            cis[m] = {k: mean_ci([r[k] for r in rows]) for k in SCORE_KEYS}
    note = (f"95 % percentile bootstrap intervals, {DEFAULT_RESAMPLES} resamples of the images (seed 0)"
            if cis else "")
    return {"rows": cis, "scores": list(SCORE_KEYS), "note": note}, {"method": note, "means": cis} if cis else {}


# -- artefacts ---------------------------------------------------------------------------------------
def _artefacts(inp: ChecksInput, methods: list[str]) -> tuple[dict[str, Any], dict[str, Any], list[int]]:
    from attnmel.explain.artefacts import ARTEFACT_KEYS, artefact_scores
    from attnmel.metrics.bootstrap import mean_ci

    if not getattr(inp.dataset, "with_artefact", False):
        reason = (f"split '{inp.split}' of dataset '{inp.dataset_name}' has no artefact mask for every image "
                  "(ISIC-2017_<Split>_Artefact_GroundTruth/ISIC_<id>_artefact.png, which the synthetic generator "
                  "writes for the artefacts it plants; real datasets have none), so the share of attention on "
                  "artefacts cannot be measured and is left out")
        return {"available": False, "reason": reason}, {"available": False, "reason": reason}, []
    n = len(inp.ids)
    hw = _image_hw(inp)
    free = baseline_maps(inp.ids, hw)
    per: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    has: list[bool] = []
    for k in range(n):
        art = inp.dataset[k]["artefact"][0].numpy() > 0.5
        has.append(bool(art.any()))
        for m in methods:
            raw = free[m][k] if m in free else inp.maps[k][m]
            per[m].append(artefact_scores(np.asarray(raw, dtype=np.float32), art))
    with_art = [k for k in range(n) if has[k]]
    means = {m: {key: mean_ci([per[m][k][key] for k in with_art]) for key in ARTEFACT_KEYS} for m in methods}
    pred = inp.probs.argmax(axis=1)
    peak_rule = (f"correct prediction (argmax = true class) and more than {ARTEFACT_PEAK:.0%} of the "
                 f"{inp.labels_of(inp.primary)} map's maximal pixels lie on an artefact")
    right = [k for k in with_art if pred[k] == inp.labels[k] and per[inp.primary][k]["artefact_peak"] > ARTEFACT_PEAK]
    right.sort(key=lambda k: (-per[inp.primary][k]["artefact_share"], k))
    metrics = {"available": True, "n_images": n, "n_with_artefacts": len(with_art), "mean": means,
               "right_but_on_artefact": {"rule": peak_rule, "image_ids": [inp.ids[k] for k in right]},
               "per_image": [{"image_id": inp.ids[k], "method": m, **per[m][k]} for m in methods for k in range(n)]}
    ctx = {"available": True, "n_with": len(with_art), "n": n, "means": means, "scores": list(ARTEFACT_KEYS),
           "rule": peak_rule, "n_right": len(right),
           "share": {inp.ids[k]: per[inp.primary][k]["artefact_share"] for k in right}}
    return ctx, metrics, right


# -- faithfulness ------------------------------------------------------------------------------------
def _predict(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Class probabilities from the explanations' prepared copy of the model (BatchNorm folded, channels-last:
    :func:`attnmel.explain.attributions.prepared_model`, the one the report's forward already built), for the
    many forward passes of the curves."""
    from attnmel.explain.attributions import device_of, prepared_model

    fast = prepared_model(model, channels_last=True)
    dev = device_of(fast)  # the run's device: the curves' images are built on the CPU

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = fast(x.to(dev).contiguous(memory_format=torch.channels_last)).logits.float()
            return torch.softmax(out, dim=1).cpu()

    return predict


def _faithfulness(inp: ChecksInput, sample: list[int], methods: list[str], steps: int) -> dict[str, Any]:
    from attnmel.explain.faithfulness import perturbation_curves, protocol
    from attnmel.metrics.bootstrap import mean_ci

    model = inp.model.eval()
    images = torch.stack([inp.dataset[k]["image"] for k in sample])
    hw = tuple(images.shape[-2:])
    free = baseline_maps([inp.ids[k] for k in sample], hw)
    sal = {m: torch.from_numpy(np.stack([np.asarray(free[m][j] if m in free else inp.maps[k][m], dtype=np.float32)
                                         for j, k in enumerate(sample)])) for m in methods}
    targets = torch.from_numpy(inp.probs[sample].argmax(axis=1).astype(np.int64))
    log.info("faithfulness: %d images x %d methods x %d steps", len(sample), len(methods), steps)
    curves = perturbation_curves(_predict(model), images, sal, targets, steps=steps)
    summary = {m: {"deletion_auc": mean_ci(c.deletion_auc), "insertion_auc": mean_ci(c.insertion_auc),
                   "deletion_curve": c.deletion.mean(axis=0).tolist(),
                   "insertion_curve": c.insertion.mean(axis=0).tolist()} for m, c in curves.items()}
    beats, paired = _against_random(curves)
    return {"protocol": protocol(steps), "n_images": len(sample), "steps": steps,
            "image_ids": [inp.ids[k] for k in sample], "fractions": curves[methods[0]].fractions.tolist(),
            "mean": summary, "beats_random": beats, "paired_vs_random": paired,
            "output_range": _output_range(summary),
            "curves": {m: (s["deletion_curve"], s["insertion_curve"]) for m, s in summary.items()}}


def _against_random(curves: dict[str, Any]) -> tuple[dict[str, dict[str, bool]], dict[str, dict[str, Any]]]:
    """Per method, whether its deletion (insertion) AUC is lower (higher) than the random map's on the same
    images: the 95 % bootstrap interval of the paired per-image difference must lie wholly on that side. A
    difference of means alone called 0.583 vs 0.581 "better" on a real run whose intervals overlapped."""
    from attnmel.metrics.bootstrap import mean_ci

    rnd = curves["random"]
    paired = {m: {"deletion": mean_ci(c.deletion_auc - rnd.deletion_auc),
                  "insertion": mean_ci(c.insertion_auc - rnd.insertion_auc)}
              for m, c in curves.items() if m != "random"}
    beats = {m: {"deletion": bool(d["deletion"]["ci_high"] is not None and d["deletion"]["ci_high"] < 0),
                 "insertion": bool(d["insertion"]["ci_low"] is not None and d["insertion"]["ci_low"] > 0)}
             for m, d in paired.items()}
    return beats, paired


def _output_range(summary: dict[str, dict[str, Any]]) -> float:
    """How far the explained class's mean probability moves along any method's deletion or insertion curve. A
    model whose output barely depends on its input (a weak real-data run: 0.55-0.60 along every curve) gives
    AUCs that cannot rank the maps, whatever the maps are."""
    spans = [max(c) - min(c) for s in summary.values() for c in (s["deletion_curve"], s["insertion_curve"])]
    return float(max(spans)) if spans else 0.0


# -- randomisation -----------------------------------------------------------------------------------
def _explainer(inp: ChecksInput, ids: list[str], with_ig: bool):
    """``explain(model, x)``: every method's maps, each model explaining its own predicted class."""
    from attnmel.explain.attributions import explain_batch

    methods = ("attention", "gradcam", "cam") + (("ig",) if with_ig else ())

    def explain(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = dict(explain_batch(model, x, methods, target="predicted").maps)
        for m, v in baseline_maps(ids, tuple(x.shape[-2:])).items():
            maps[m] = torch.from_numpy(np.stack(v))
        return maps

    return explain


def _randomisation(inp: ChecksInput, sample: list[int], n_stages: int) -> dict[str, Any]:
    from attnmel.explain.randomisation import FAIL_RHO, cascading_randomisation
    from attnmel.metrics.bootstrap import mean_ci

    ids = [inp.ids[k] for k in sample]
    images = torch.stack([inp.dataset[k]["image"] for k in sample])
    log.info("randomisation: %d images x %d stages", len(sample), n_stages)
    res = cascading_randomisation(inp.model, images, _explainer(inp, ids, False), n_stages, CHECKS_SEED)
    rho = dict(res.rho)
    n_images = {m: len(sample) for m in rho}
    if inp.integrated_gradients:
        few = sample[:RANDOMISATION_IG_IMAGES]
        ig = cascading_randomisation(inp.model, images[:len(few)], _ig_only(inp, [inp.ids[k] for k in few]),
                                     n_stages, CHECKS_SEED)
        rho["ig"], n_images["ig"] = ig.rho["ig"], len(few)
    mean = {m: [float(v) for v in r.mean(axis=1)] for m, r in rho.items()}
    final = {m: mean_ci(r[-1]) for m, r in rho.items()}
    passed = {m: bool(final[m]["mean"] < FAIL_RHO) for m in rho}
    stages = [s.name for s in res.stages]
    failing = [m for m, ok in passed.items() if not ok]
    return {"stages": stages, "stage_modules": [s.modules for s in res.stages], "n_images": n_images,
            "image_ids": ids, "mean": mean, "final": final, "passed": passed, "failing": failing,
            "ig_steps": RANDOMISATION_IG_STEPS if inp.integrated_gradients else None,
            "fail_rho": FAIL_RHO, "rule": (f"re-initialised cascading from the classifier down in {len(stages)} "
                                           f"stages; a method fails when the mean Spearman correlation of its maps "
                                           f"with the trained model's is still >= {FAIL_RHO} once every layer is "
                                           "random (its maps barely depend on what the model learned)")}


def _ig_only(inp: ChecksInput, ids: list[str]):
    from attnmel.explain.attributions import IGSettings, explain_batch

    def explain(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(explain_batch(model, x, ("ig",), target="predicted",
                                  ig=IGSettings(n_steps=RANDOMISATION_IG_STEPS)).maps)

    return explain


# -- figures -----------------------------------------------------------------------------------------
def _style(method: str) -> str:
    return "--" if method in ("blob", "random") else "-"


def perturbation_curves_figure(curves: dict[str, tuple[list[float], list[float]]], labels: dict[str, str],
                               path: Path) -> Path:
    """Mean deletion (left) and insertion (right) curves, one line per method."""
    from attnmel.report.figures import _PALETTE, _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8), sharey=True)
    for i, (m, (dele, ins)) in enumerate(curves.items()):
        xs = np.linspace(0.0, 1.0, len(dele))
        for ax, ys in zip(axes, (dele, ins)):
            ax.plot(xs, ys, ls=_style(m), lw=1.8, marker="o", ms=3, color=_PALETTE[i % len(_PALETTE)],
                    label=labels.get(m, m))
    for ax, title in zip(axes, ("Deletion (lower is more faithful)", "Insertion (higher is more faithful)")):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("share of pixels perturbed, most salient first")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("probability of the explained class")
    axes[1].legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def randomisation_figure(stages: list[str], mean: dict[str, list[float]], labels: dict[str, str],
                         fail_rho: float, path: Path) -> Path:
    """Mean Spearman correlation with the trained model's maps after each cascading stage."""
    from attnmel.report.figures import _PALETTE, _plt, save_figure

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    xs = np.arange(len(stages) + 1)
    for i, (m, ys) in enumerate(mean.items()):
        ax.plot(xs, [1.0, *ys], ls=_style(m), lw=1.8, marker="o", ms=3, color=_PALETTE[i % len(_PALETTE)],
                label=labels.get(m, m))
    ax.axhline(fail_rho, color="0.6", lw=1, ls=":")
    ax.set_xticks(xs, ["trained", *stages], rotation=35, ha="right", fontsize=7)
    lowest = min((min(ys) for ys in mean.values() if len(ys)), default=0.0)
    ax.set_ylim(min(-0.3, lowest - 0.05), 1.05)  # a map anti-correlated once random must stay on the plot
    ax.set_xlabel("re-initialised from the classifier down to")
    ax.set_ylabel("mean Spearman rho with trained maps")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Cascading model-parameter randomisation", fontsize=10)
    return save_figure(fig, path)
