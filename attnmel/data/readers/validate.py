"""The optional full pass over a split (``validate=True``, and ``attnmel data check``): open every file.

Readers are cheap by default (no decoding). This pass decodes every image (catches truncation), reads
every mask and checks its size against its image, and reads every dermoscopic-feature pair.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from attnmel.data.images import load_dermo_mask, load_mask_u8, verify_image
from attnmel.data.readers._common import UNREADABLE
from attnmel.data.samples import DatasetIndex, Sample
from attnmel.errors import AttnMelError

log = logging.getLogger("attnmel.data")


@dataclass
class Inspection:
    """What opening one sample's files found; each ``*_error`` is a one-line message naming the file."""

    image_error: str | None = None
    mask_error: str | None = None
    mask_nonbinary: bool = False
    mask_low: bool = False  # values above 1 but none above 128: thresholds to an empty mask
    dermo_error: str | None = None
    size: tuple[int, int] = (0, 0)  # the image's (width, height)
    attributes_error: str | None = None
    attributes_present: tuple[bool, ...] = ()  # per attribute: does its mask have a positive pixel

    @property
    def ok(self) -> bool:
        return not (self.image_error or self.mask_error or self.dermo_error or self.attributes_error)


def inspect_sample(sample: Sample) -> Inspection:
    """Open the image (full decode), its mask and its dermoscopic-feature pair, if any."""
    try:
        w, h = verify_image(sample.image)
    except AttnMelError as e:
        return Inspection(image_error=str(e))
    out = Inspection(size=(w, h))
    if sample.mask is not None:
        try:
            m = load_mask_u8(sample.mask, expected_hw=(h, w))
            out.mask_nonbinary = bool(np.any((m != 0) & (m != 255)))
            top = int(m.max()) if m.size else 0
            out.mask_low = 1 < top <= 128
            if top == 0:
                out.mask_error = f"{sample.mask}: lesion mask is empty (no lesion pixel)"
        except AttnMelError as e:
            out.mask_error = str(e)
    if sample.dermo is not None:
        try:
            load_dermo_mask(*sample.dermo, expected_hw=(h, w))
        except AttnMelError as e:
            out.dermo_error = str(e)
    if sample.attributes is not None:
        try:
            out.attributes_present = tuple(bool(load_mask_u8(p, expected_hw=(h, w)).max() > 128)
                                           for p in sample.attributes)
        except AttnMelError as e:
            out.attributes_error = str(e)
    return out


def inspect_all(samples: list[Sample], workers: int | None = None) -> list[Inspection]:
    """:func:`inspect_sample` over many samples; PIL decodes outside the GIL, so threads help."""
    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(samples) < 8:
        return [inspect_sample(s) for s in samples]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(inspect_sample, samples))


def validate_index(index: DatasetIndex) -> DatasetIndex:
    """Drop samples whose image cannot be decoded (warning + ``skipped``); a bad mask is an error.

    Training can go on without one unreadable image, but a mask that does not fit its image means the
    download is inconsistent: stop and say which file.
    """
    results = inspect_all(index.samples)
    kept: list[Sample] = []
    skipped = list(index.skipped)
    nonbinary = 0
    for sample, res in zip(index.samples, results):
        if res.image_error:
            log.warning("%s; skipped", res.image_error)
            skipped.append((str(sample.image), f"{UNREADABLE}: {res.image_error}"))
            continue
        if res.mask_error:
            raise AttnMelError(res.mask_error)
        if res.dermo_error or res.attributes_error:
            raise AttnMelError(res.dermo_error or res.attributes_error)
        nonbinary += res.mask_nonbinary
        kept.append(sample)
    if nonbinary:
        log.warning("%s %s: %d mask(s) are not strictly 0/255; thresholded at > 128",
                    index.dataset, index.split, nonbinary)
    if not kept:
        raise AttnMelError(f"{index.dataset} {index.split}: none of the {len(index.samples)} images can be read")
    return replace(index, samples=kept, skipped=skipped)
