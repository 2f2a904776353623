"""``attnmel data check``: verify a download and show what was found, per split and class.

Every file is opened (images fully decoded, masks checked against their image's size), so this is the
slow, thorough counterpart of the cheap readers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnmel.data.readers import ATTRIBUTES, dataset_info, read_split
from attnmel.data.readers._common import NO_IMAGE, NO_LABEL, check_root
from attnmel.data.readers.validate import inspect_all
from attnmel.data.samples import SPLITS
from attnmel.errors import AttnMelError


@dataclass
class SplitCheck:
    """What one split holds; ``error`` is set (and the rest empty) when the split cannot be read at all."""

    split: str
    class_names: list[str] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)  # readable images per class
    with_masks: dict[str, int] = field(default_factory=dict)
    with_dermo: dict[str, int] = field(default_factory=dict)
    images_without_masks: list[str] = field(default_factory=list)
    labels_without_images: list[str] = field(default_factory=list)
    images_without_labels: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # one-line messages naming the file
    nonbinary_masks: list[str] = field(default_factory=list)
    low_masks: list[str] = field(default_factory=list)  # no value above 128: read as empty
    small_images: list[str] = field(default_factory=list)  # short side under SMALL_SIDE px
    attributes: dict[str, int] = field(default_factory=dict)  # ISIC 2018 Task 2: images with each attribute
    split_file: Path | None = None  # where a drawn (or user-given) split is stored
    # data.artefact_flags / data.artefact_masks: per class, images the flags cover, carrying each artefact,
    # and with an artefact mask (attnmel.data.artefacts.counts_by)
    artefacts: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None

    @property
    def total(self) -> int:
        return sum(self.images.values())

    def problems(self) -> list[str]:
        """What makes the download incomplete or inconsistent (partial masks count; no masks at all do not)."""
        if self.error:
            return [self.error]
        out = [f"{self.split}: {msg}" for msg in self.unreadable]
        if self.labels_without_images:
            out.append(f"{self.split}: {len(self.labels_without_images)} label(s) without image "
                       f"({_few(self.labels_without_images)})")
        if self.images_without_labels:
            out.append(f"{self.split}: {len(self.images_without_labels)} image(s) without label "
                       f"({_few(self.images_without_labels)})")
        masked = sum(self.with_masks.values())
        if masked > 0 and self.images_without_masks:
            out.append(f"{self.split}: {len(self.images_without_masks)} image(s) without mask "
                       f"({_few(self.images_without_masks)})")
        return out


@dataclass
class CheckResult:
    """The table ``check`` prints: one :class:`SplitCheck` per split."""

    dataset: str
    root: Path
    splits: list[SplitCheck]

    def rows(self) -> list[dict[str, Any]]:
        """One row per split x class: ``split, class, images, with_masks, with_dermo``."""
        return [{"split": s.split, "class": c, "images": s.images.get(c, 0), "with_masks": s.with_masks.get(c, 0),
                 "with_dermo": s.with_dermo.get(c, 0)} for s in self.splits for c in s.class_names]

    def problems(self) -> list[str]:
        return [p for s in self.splits for p in s.problems()]

    @property
    def ok(self) -> bool:
        return not self.problems()


# Far below any training size (the paper trains at 224): upsampled many times over, almost surely a bad file.
SMALL_SIDE = 32


def _few(items: list[str], k: int = 3) -> str:
    return ", ".join(Path(i).name for i in items[:k]) + (", ..." if len(items) > k else "")


def check_split(dataset: str, root: Path, split: str, num_classes: int, **opts: Any) -> SplitCheck:
    """Read one split and open every file of it."""
    out = SplitCheck(split)
    try:
        index = read_split(dataset, root, split, num_classes=num_classes, **opts)
    except AttnMelError as e:
        out.error = f"{split}: {e}"
        return out
    out.class_names = list(index.class_names)
    out.split_file = index.split_file
    for key, reason in index.skipped:
        if reason.startswith(NO_IMAGE):
            out.labels_without_images.append(key)
        elif reason.startswith(NO_LABEL):
            out.images_without_labels.append(key)
        else:
            out.unreadable.append(f"{key}: {reason}")
    for c in out.class_names:
        out.images[c] = out.with_masks[c] = out.with_dermo[c] = 0
    for sample, res in zip(index.samples, inspect_all(index.samples)):
        if res.image_error:
            out.unreadable.append(res.image_error)
            continue
        name = out.class_names[sample.label]
        out.images[name] += 1
        if min(res.size) < SMALL_SIDE:
            out.small_images.append(f"{sample.image} ({res.size[0]}x{res.size[1]})")
        if res.mask_low:
            out.low_masks.append(str(sample.mask))
        if res.mask_error:
            out.unreadable.append(res.mask_error)
        elif sample.mask is not None:
            out.with_masks[name] += 1
            if res.mask_nonbinary:
                out.nonbinary_masks.append(str(sample.mask))
        if sample.mask is None:
            out.images_without_masks.append(sample.image_id)
        if res.dermo_error:
            out.unreadable.append(res.dermo_error)
        elif sample.dermo is not None:
            out.with_dermo[name] += 1
        if res.attributes_error:
            out.unreadable.append(res.attributes_error)
        elif sample.attributes is not None:
            for attr, present in zip(ATTRIBUTES, res.attributes_present):
                out.attributes[attr] = out.attributes.get(attr, 0) + int(present)
    return out


def check_dataset(dataset: str, root: str | Path, **opts: Any) -> CheckResult:
    """Check every split of a dataset folder with the most detailed class list the dataset has.

    A missing or empty root, or an unknown dataset name, raises :class:`AttnMelError`; a problem confined to
    one split (a missing folder, a malformed CSV) is recorded in that split's row instead.
    """
    info = dataset_info(dataset)
    root = check_root(root)
    # The richest class list shows most, but synthetic data has no seborrheic keratoses to show.
    k = 2 if dataset == "synthetic" else max(info.num_classes)
    opts.pop("validate", None)  # check opens every file itself, collecting rather than stopping
    flags_path, masks_dir = opts.pop("artefact_flags", None), opts.pop("artefact_masks", None)
    # The readers' warnings say what the table says; keep the output to the table.
    data_log = logging.getLogger("attnmel.data")
    level = data_log.level
    data_log.setLevel(logging.ERROR)
    try:
        splits = [check_split(dataset, root, s, k, **opts) for s in SPLITS]
        if flags_path or masks_dir:
            count_artefacts(dataset, root, splits, k, flags_path, masks_dir, **opts)
    finally:
        data_log.setLevel(level)
    return CheckResult(dataset, root, splits)


def count_artefacts(dataset: str, root: Path, splits: list[SplitCheck], num_classes: int,
                    flags_path: str | Path | None, masks_dir: str | Path | None, **opts: Any) -> None:
    """Fill each split's ``artefacts`` table: per class, how many images carry each flagged artefact (and
    have an artefact mask): the correlation between artefact and label that a model could learn."""
    from attnmel.data.artefacts import counts_by, list_artefact_masks, read_flags

    indexes = [read_split(dataset, root, s.split, num_classes=num_classes, **opts) for s in splits if not s.error]
    ids = [x.image_id for idx in indexes for x in idx.samples]
    flags = read_flags(flags_path, ids) if flags_path else None
    masks = list_artefact_masks(masks_dir, ids) if masks_dir else {}
    for s, idx in zip([s for s in splits if not s.error], indexes):
        s.artefacts = counts_by(flags, idx.samples, idx.class_names) if flags else {
            c: {"n": s.images.get(c, 0)} for c in idx.class_names}
        for x in idx.samples:
            row = s.artefacts[idx.class_names[x.label]]
            row["artefact mask"] = row.get("artefact mask", 0) + int(x.image_id in masks)


def render_artefacts(result: CheckResult, console: Any) -> None:
    """The artefact table: split x class rows, one column per artefact."""
    from rich.table import Table

    cols = list(dict.fromkeys(k for s in result.splits for row in s.artefacts.values() for k in row))
    if not cols:
        return
    table = Table(title="artefacts (images carrying each, per split and class)")
    table.add_column("split")
    table.add_column("class")
    for c in cols:
        table.add_column("images" if c == "n" else "flagged" if c == "covered" else c, justify="right")
    for s in result.splits:
        for cls, row in s.artefacts.items():
            table.add_row(s.split, cls, *[str(row.get(c, 0)) for c in cols])
        if s.artefacts:
            table.add_section()
    console.print(table)


def render_check(result: CheckResult, console: Any = None) -> None:
    """Print the table and the list of problems with ``rich``. Each problem and warning is one line, never
    wrapped at the terminal's width (``soft_wrap``), so that a path stays whole in a log or a grep."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    labelled = not dataset_info(result.dataset).segmentation_only
    table = Table(title=escape(f"{result.dataset}: {result.root}"))
    table.add_column("split")
    table.add_column("class" if labelled else "")
    for col in ("images", "with masks", "with dermo"):
        table.add_column(col, justify="right")
    for s in result.splits:
        if s.error:
            table.add_row(s.split, "[red]error (below)[/red]", "-", "-", "-")
            continue
        for c in s.class_names if labelled else s.class_names[:1]:
            n = s.images[c] if labelled else s.total
            m = s.with_masks[c] if labelled else sum(s.with_masks.values())
            d = s.with_dermo[c] if labelled else sum(s.with_dermo.values())
            table.add_row(escape(s.split), escape(c) if labelled else "", str(n), str(m), str(d))
        table.add_section()
    console.print(table)
    for path in dict.fromkeys(s.split_file for s in result.splits if s.split_file is not None):
        names = "/".join(s.split for s in result.splits if s.split_file == path)
        say(f"{names}: split stored in {path} (not in the dataset folder; edit it to change the split, or give "
            f"data.split_file)")
    render_artefacts(result, console)
    for s in result.splits:
        if s.error:
            continue
        say(f"{s.split}: {s.total} images | without masks {len(s.images_without_masks)} | "
            f"labels without images {len(s.labels_without_images)} | "
            f"without labels {len(s.images_without_labels)} | unreadable {len(s.unreadable)}")
        if s.small_images:
            say(f"{s.split}: warning: {len(s.small_images)} image(s) under {SMALL_SIDE} px on the short side "
                f"(upsampled in training): {_few(s.small_images)}")
        if s.low_masks:
            say(f"{s.split}: warning: {len(s.low_masks)} mask(s) with no value above 128, read as empty "
                f"(expected 0/255): {_few(s.low_masks)}")
        if s.attributes:
            say(f"{s.split}: images showing each attribute: "
                + ", ".join(f"{a} {s.attributes[a]}" for a in ATTRIBUTES))
        if s.nonbinary_masks:
            say(f"{s.split}: {len(s.nonbinary_masks)} mask(s) not strictly 0/255 (thresholded at > 128): "
                f"{_few(s.nonbinary_masks)}")
    problems = result.problems()
    if problems:
        console.print(f"[bold red]{len(problems)} problem(s):[/bold red]")
        for p in problems:
            say(f"  {p}")
    else:
        console.print("[green]ok[/green]: every image, label and mask was read")


def run_check(dataset: str, root: str | Path, console: Any = None, **opts: Any) -> int:
    """Check and print; exit status 0 when nothing is wrong, 1 when problems were found."""
    result = check_dataset(dataset, root, **opts)
    render_check(result, console)
    return 0 if result.ok else 1
