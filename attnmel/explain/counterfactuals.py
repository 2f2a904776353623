"""Counterfactual tests: does an artefact change the decision, and does the model need the lesion?

Both work on the network's input (normalised tensors, after the run's geometry), batched:

- **Artefact insertion**: real artefact cut-outs (e.g. the coloured patches of the Reveal-to-Revise masks, cut
  from their own images, :func:`cutouts`) pasted onto images outside the lesion (:func:`paste`, placement
  seeded), then the change in melanoma probability, the share of melanomas flipped to benign at the
  operating threshold, and the share of each map's mass on the pasted pixels.
- **Lesion removal** (Bissoto et al. 2019): the lesion replaced by surrounding skin (:func:`remove_lesion`: the
  mean colour of a ring around it), then the AUC left: a model that keeps its AUC without the lesion reads
  the context.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The cut-outs and their pasting are the data layer's (artefact augmentation in training uses them too).
from attnmel.data.artefacts import Cutout, centre_disk, cutout, paste  # noqa: F401

# The operating threshold on the melanoma probability (the argmax of a binary head).
THRESHOLD = 0.5
RING_PX = 5  # width of the skin ring whose mean colour replaces the lesion


def remove_lesion(image: torch.Tensor, lesion: torch.Tensor, ring: int = RING_PX) -> torch.Tensor:
    """``image`` (3, H, W) with the lesion (dilated by one pixel) filled with the mean colour of the ring of skin
    ``ring`` pixels wide around it (the whole non-lesion area where the ring is empty)."""
    les = lesion.to(torch.float32)[None, None]
    grown = F.max_pool2d(les, 3, stride=1, padding=1)[0, 0] > 0
    band = F.max_pool2d(grown[None, None].float(), 2 * ring + 1, stride=1, padding=ring)[0, 0] > 0
    skin = band & ~grown
    if not skin.any():
        skin = ~grown
    out = image.clone()
    if not skin.any():
        return out
    fill = image[:, skin].mean(dim=1)
    out[:, grown] = fill[:, None]
    return out


def melanoma_probs(model: nn.Module, images: torch.Tensor, melanoma_index: int) -> np.ndarray:
    """P(melanoma) per image, no gradients; ``model`` returns logits or a ClassifierOutput."""
    param = next(model.parameters(), None)
    with torch.inference_mode():
        out = model(images.to(param.device) if param is not None else images)
    logits = out.logits if hasattr(out, "logits") else out
    return torch.softmax(logits.float(), dim=1)[:, melanoma_index].cpu().numpy()


def insertion(model: nn.Module, batches: Iterable[dict], cuts: Sequence[Cutout], melanoma_index: int,
              seed: int = 0, map_methods: Sequence[str] = (), has_masks: bool = True) -> dict[str, np.ndarray]:
    """Per image: P(melanoma) before and after pasting one cut-out (chosen and placed with ``seed``), its
    label, and with ``map_methods`` each map's share of mass on the pasted pixels (``share:<method>``)."""
    from attnmel.explain.artefacts import artefact_scores

    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"before": [], "after": [], "label": [], "source": []}
    for batch in batches:
        x = batch["image"]
        lesions = _lesions(batch, has_masks)
        pasted, changed = [], []
        for i in range(len(x)):
            cut = cuts[int(rng.integers(0, len(cuts)))]
            img, ch = paste(x[i], lesions[i], cut, rng)
            pasted.append(img)
            changed.append(ch)
            out["source"].append(cut.source)
        xp = torch.stack(pasted)
        out["before"].append(melanoma_probs(model, x, melanoma_index))
        out["after"].append(melanoma_probs(model, xp, melanoma_index))
        out["label"].append(np.asarray(batch["label"]) == melanoma_index)
        if map_methods:
            from attnmel.explain.attributions import explain_batch

            ex = explain_batch(model, xp, tuple(map_methods), melanoma_index=melanoma_index)
            for name, maps in ex.maps.items():
                out.setdefault(f"share:{name}", []).append(
                    [artefact_scores(maps[i], changed[i].numpy())["artefact_share"] for i in range(len(xp))])
    return {k: (np.asarray(v) if k == "source" else np.concatenate([np.asarray(b) for b in v])) for k, v in out.items()}


def removal(model: nn.Module, batches: Iterable[dict], melanoma_index: int) -> dict[str, np.ndarray]:
    """Per image: P(melanoma) with the lesion replaced by skin, and the label (batches must carry masks)."""
    after, labels = [], []
    for batch in batches:
        lesions = _lesions(batch, True)
        x = torch.stack([remove_lesion(batch["image"][i], lesions[i]) for i in range(len(batch["image"]))])
        after.append(melanoma_probs(model, x, melanoma_index))
        labels.append(np.asarray(batch["label"]) == melanoma_index)
    return {"after": np.concatenate(after), "label": np.concatenate(labels)}


def _lesions(batch: dict, has_masks: bool) -> list[torch.Tensor]:
    x = batch["image"]
    if has_masks and "mask" in batch:
        return [m[0] > 0.5 for m in batch["mask"]]
    disk = centre_disk(x.shape[-2], x.shape[-1])
    return [disk] * len(x)


def summarise_insertion(r: dict[str, np.ndarray], threshold: float = THRESHOLD) -> dict:
    """The insertion figures: mean change of P(melanoma) on melanomas and on benign lesions (with 95 %
    bootstrap intervals), the share of melanomas called melanoma before that the patch flips to benign, and
    the mean share of each map's mass on the pasted patch."""
    from attnmel.metrics.bootstrap import mean_ci

    delta = r["after"] - r["before"]
    mel = r["label"].astype(bool)
    called = mel & (r["before"] >= threshold)
    flipped = called & (r["after"] < threshold)
    out = {"n_images": int(mel.size), "threshold": threshold,
           "delta_p_melanoma": {"melanoma": mean_ci(delta[mel]), "benign": mean_ci(delta[~mel])},
           "flip_rate": float(flipped.sum() / called.sum()) if called.any() else None,
           "n_melanoma_called": int(called.sum()), "n_flipped": int(flipped.sum()),
           "map_share_on_patch": {k.split(":", 1)[1]: mean_ci(v) for k, v in r.items() if k.startswith("share:")}}
    return out


def summarise_removal(r: dict[str, np.ndarray], before: np.ndarray) -> dict:
    """AUC before and after lesion removal (with 95 % bootstrap intervals)."""
    from attnmel.metrics.bootstrap import auc_ci

    return {"n_images": int(r["label"].size), "auc_before": auc_ci(r["label"], before),
            "auc_without_lesion": auc_ci(r["label"], r["after"])}
