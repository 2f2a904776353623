"""What a dataset reader produces: an index of samples, one per image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image and what is known about it.

    ``mask`` is the binary lesion mask (PNG, 0/255). ``dermo`` is the ISIC 2017 Part 2 ground truth
    as a pair ``(features_json, superpixels_png)``, turned into the union mask of the four dermoscopic
    features by :func:`attnmel.data.images.load_dermo_mask`. ``artefact`` is the binary artefact mask
    (PNG, 0/255: the union of every artefact planted in the image, all zero when it has none), written by
    the synthetic generator as ``ISIC-2017_<Split>_Artefact_GroundTruth/ISIC_<id>_artefact.png``.
    """

    image_id: str
    image: Path
    label: int
    mask: Path | None = None
    dermo: tuple[Path, Path] | None = None
    group: str | None = None  # e.g. HAM10000 lesion_id: splits never separate a group
    artefact: Path | None = None
    # ISIC 2018 Task 2: one 0/255 PNG per attribute, in ATTRIBUTES order (attnmel.data.readers.isic2018_task2)
    attributes: tuple[Path, ...] | None = None


@dataclass
class DatasetIndex:
    """The samples of one split, the class names, and the files that were skipped with why."""

    dataset: str
    split: str
    samples: list[Sample]
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or id, reason)
    # Where the split's assignment is stored, for a split the dataset does not ship (drawn or data.split_file).
    split_file: Path | None = None

    @property
    def melanoma_index(self) -> int:
        """Column of the melanoma class in the class list (the positive class of the binary metrics)."""
        for i, name in enumerate(self.class_names):
            if name.lower() in ("melanoma", "mel", "malignant"):
                return i
        return len(self.class_names) - 1

    @property
    def has_masks(self) -> bool:
        return bool(self.samples) and all(s.mask is not None for s in self.samples)

    @property
    def has_dermo(self) -> bool:
        return bool(self.samples) and all(s.dermo is not None for s in self.samples)

    @property
    def has_artefacts(self) -> bool:
        """Every image of the split has an artefact mask (so shares of attention on artefacts are defined)."""
        return bool(self.samples) and all(s.artefact is not None for s in self.samples)
    def has_attributes(self) -> bool:
        return bool(self.samples) and all(s.attributes is not None for s in self.samples)

    def labels(self) -> list[int]:
        return [s.label for s in self.samples]
