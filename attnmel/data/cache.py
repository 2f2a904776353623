"""The preprocessing cache: each image decoded once, base-preprocessed, and kept as ``uint8`` memmaps.

ISIC JPEGs are up to several thousand pixels a side; decoding them every epoch dominates a CPU run. One
pass decodes every image of a split (JPEGs in draft mode, at the smallest power-of-two reduction that still
leaves ``resize`` pixels across the crop), applies the base step of :mod:`attnmel.data.transforms` and
writes ``images.npy`` (N, R, R, 3), ``masks.npy`` / ``dermo.npy`` / ``artefacts.npy`` (N, R, R) and, for ISIC 2018
Task 2,
``attributes.npy`` (N, R, R; bit k = attribute k, see :func:`pack_attributes`) into a folder under
``data.cache_dir`` that later runs open with ``mmap_mode="r"``.

The folder name carries a hash of the dataset, split, base spec and every source file's path, size and
mtime, and every open stats every source again (a stat per file is cheap next to a decode): a deleted source is
a one-line error naming it, and editing, replacing, truncating or touching any image or mask gives a new key, so
the old cache is never used again: the cache is rebuilt with a warning naming the first changed file (the old
folder's ``meta.json`` records each source's size and mtime), and the old one is deleted once its replacement is
complete. Builds go to a hidden temporary folder that is
renamed into place only when complete, under a file lock (``filelock``), so a crash or a concurrent run
never leaves a half-written cache that is later trusted. The files' blocks are reserved before the build
(``posix_fallocate``), so a full disk is a one-line error naming the folder, not a SIGBUS.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from attnmel.data.images import image_size, load_dermo_mask, load_image, load_lesion_mask, load_mask
from attnmel.data.samples import Sample
from attnmel.data.transforms import BaseSpec, base_mask, base_preprocess, crop_box, draft_min_side, resize_label_map
from attnmel.errors import AttnMelError, file_error

log = logging.getLogger("attnmel.data")

CACHE_VERSION = 1  # bump when base_preprocess changes its output: old caches then stop matching

Arrays = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceFiles:
    """The files one preprocessed item is made from.

    ``mask``: the lesion mask that goes into the batch (the dataset's own, else a predicted one from
    ``data.masks``). ``crop_mask``: the mask ``data.crop_to_mask`` crops to (a predicted one where given:
    segment-then-classify uses the segmenter's output, else the dataset's).
    """

    image_id: str
    image: Path
    mask: Path | None = None
    mask_predicted: bool = False
    crop_mask: Path | None = None
    crop_mask_predicted: bool = False
    dermo: tuple[Path, Path] | None = None
    artefact: Path | None = None  # the artefact mask (synthetic sets), through the image's geometry like mask
    attributes: tuple[Path, ...] | None = None  # ISIC 2018 Task 2 masks; their union also serves as dermo

    def files(self) -> list[Path]:
        out = [self.image]
        for p in (self.mask, self.crop_mask, self.artefact):
            if p is not None:
                out.append(p)
        if self.dermo is not None:
            out.extend(self.dermo)
        if self.attributes is not None:
            out.extend(self.attributes)
        return out

    @property
    def has_dermo(self) -> bool:
        """A dermoscopic-feature mask: ISIC 2017 Part 2, else the union of the Task 2 attribute masks."""
        return self.dermo is not None or self.attributes is not None


def pack_attributes(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Up to 8 binary masks (H, W) as one uint8 map, bit k = mask k: nearest resizing keeps every bit."""
    if len(masks) > 8:
        raise ValueError(f"at most 8 masks fit in a uint8 map, got {len(masks)}")
    out = np.zeros(masks[0].shape, dtype=np.uint8)
    for k, m in enumerate(masks):
        out |= (np.asarray(m) > 0).astype(np.uint8) << k
    return out


def unpack_attributes(packed: np.ndarray, n: int) -> np.ndarray:
    """The (n, H, W) uint8 0/1 masks of a :func:`pack_attributes` map."""
    return (packed[None] >> np.arange(n, dtype=np.uint8)[:, None, None]) & 1


def predicted_masks(masks_dir: str | Path) -> dict[str, Path]:
    """``image_id -> mask file`` for a folder of ``<image_id>_segmentation.png`` / ``<image_id>.png``
    (case-insensitive suffix)."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise file_error(masks_dir, "data.masks: folder of masks not found")
    found: dict[str, Path] = {}
    for p in sorted(masks_dir.iterdir()):
        if p.suffix.lower() != ".png" or p.name.startswith("."):
            continue
        stem = p.stem
        if stem.lower().endswith("_segmentation"):
            found[stem[: -len("_segmentation")]] = p
        else:
            found.setdefault(stem, p)  # `<id>_segmentation.png` wins over `<id>.png`
    return found


def resolve_sources(samples: Sequence[Sample], masks_dir: str | Path | None = None,
                    spec: BaseSpec | None = None) -> list[SourceFiles]:
    """Pair every sample with its files, filling in predicted masks from ``masks_dir`` where the dataset
    has none. With ``spec.crop_to_mask`` set, every sample must end up with a mask to crop to."""
    predicted = predicted_masks(masks_dir) if masks_dir else {}
    out = []
    for s in samples:
        pred = predicted.get(s.image_id)
        mask, mask_pred = (s.mask, False) if s.mask is not None else (pred, pred is not None)
        crop, crop_pred = (pred, True) if pred is not None else (s.mask, False)
        if spec is not None and spec.crop_to_mask and crop is None:
            where = f" (looked in {masks_dir})" if masks_dir else " (give data.masks=<folder of predicted masks>)"
            raise file_error(s.image, f"data.crop_to_mask={spec.crop_to_mask} needs a lesion mask for "
                                      f"{s.image_id} and there is none{where}")
        out.append(SourceFiles(s.image_id, Path(s.image), mask, mask_pred, crop if spec and spec.crop_to_mask else None,
                               crop_pred, s.dermo, s.artefact, attributes=getattr(s, "attributes", None)))
    return out


def _load_any_mask(path: Path, predicted: bool, W: int, H: int) -> np.ndarray:
    if not predicted:
        return load_lesion_mask(path, expected_hw=(H, W))
    m = load_mask(path)
    # A segmenter may write masks at its own resolution; the base step maps them by relative position,
    # which is only right when the aspect ratio is the image's.
    mh, mw = m.shape
    if abs(mw / mh - W / H) > 0.02 * (W / H):
        raise file_error(path, f"predicted mask is {mw}x{mh} but its image is {W}x{H} (width x height): "
                               "aspect ratios differ")
    return m


def load_preprocessed(src: SourceFiles, spec: BaseSpec) -> Arrays:
    """Decode one item and apply the base step: image uint8 (R, R, 3), mask and dermo uint8 (R, R) or None.

    This is both what the cache stores and what an uncached dataset computes per item (the artefact mask:
    :func:`load_preprocessed_artefact`).
    """
    return load_item(src, spec)[0]


def load_item(src: SourceFiles, spec: BaseSpec) -> tuple[Arrays, np.ndarray | None]:
    """:func:`load_preprocessed`'s arrays and the packed attribute map uint8 (R, R) (None without attributes).

    Attribute masks must have the image's size (an error naming the file otherwise); without an ISIC 2017
    Part 2 pair, their union is the item's dermo mask.
    """
    W, H = image_size(src.image)
    if min(W, H) * SMALL_FACTOR < spec.resize:
        _warn_small(src.image, W, H, spec.resize)
    mask = _load_any_mask(src.mask, src.mask_predicted, W, H) if src.mask is not None else None
    crop = _crop_of(src, mask, W, H)
    dermo = load_dermo_mask(src.dermo[0], src.dermo[1], expected_hw=(H, W)) if src.dermo is not None else None
    attrs = [load_mask(p, expected_hw=(H, W)) for p in src.attributes] if src.attributes is not None else None
    if attrs and dermo is None:
        dermo = np.logical_or.reduce(attrs)
    box = crop_box(W, H, spec, crop if spec.crop_to_mask else None)
    image = load_image(src.image, draft_min_side=draft_min_side(W, H, box, spec.resize))
    arrays = base_preprocess(image, (W, H), spec, mask=mask, dermo=dermo,
                             crop_mask=crop if spec.crop_to_mask else None)
    packed = resize_label_map(pack_attributes(attrs), box, (W, H), spec.resize) if attrs else None
    return arrays, packed


SMALL_FACTOR = 4  # an image whose short side is under resize / 4 is upsampled more than 4x: almost surely wrong
_small_warned: set[Path] = set()


def _warn_small(path: Path, W: int, H: int, resize: int) -> None:
    """Warn (a few files by name, then once for the rest) about images far below the training size."""
    if path in _small_warned:
        return
    _small_warned.add(path)
    if len(_small_warned) <= 3:
        log.warning("%s: image is %dx%d px, far below data.resize=%d: it is upsampled %.0fx", path, W, H, resize,
                    resize / min(W, H))
    elif len(_small_warned) == 4:
        log.warning("more images are far below data.resize=%d (attnmel data check lists them)", resize)
def load_preprocessed_artefact(src: SourceFiles, spec: BaseSpec) -> np.ndarray | None:
    """The item's artefact mask after the base step, uint8 (R, R) in {0, 1}, or None when it has none."""
    if src.artefact is None:
        return None
    W, H = image_size(src.image)
    crop = None
    if spec.crop_to_mask:  # the crop follows a mask: read it, but not the image
        mask = _load_any_mask(src.mask, src.mask_predicted, W, H) if src.mask is not None else None
        crop = _crop_of(src, mask, W, H)
    return base_mask(load_mask(src.artefact, expected_hw=(H, W)), (W, H), spec, crop)


def _crop_of(src: SourceFiles, mask: np.ndarray | None, W: int, H: int) -> np.ndarray | None:
    if src.crop_mask is None:
        return None
    if src.crop_mask == src.mask:
        return mask
    return _load_any_mask(src.crop_mask, src.crop_mask_predicted, W, H)


class DecodeSource:
    """Uncached base arrays: decodes and preprocesses on every access (``data.cache: false``)."""

    def __init__(self, sources: Sequence[SourceFiles], spec: BaseSpec) -> None:
        self.sources, self.spec = list(sources), spec
        self.has_mask = np.array([s.mask is not None for s in self.sources], dtype=bool)
        self.has_dermo = np.array([s.has_dermo for s in self.sources], dtype=bool)
        self.has_artefact = np.array([s.artefact is not None for s in self.sources], dtype=bool)
        self.has_attributes = np.array([s.attributes is not None for s in self.sources], dtype=bool)

    def __len__(self) -> int:
        return len(self.sources)

    def get(self, i: int) -> Arrays:
        return load_preprocessed(self.sources[i], self.spec)

    def get_artefact(self, i: int) -> np.ndarray | None:
        return load_preprocessed_artefact(self.sources[i], self.spec)
    def attributes(self, i: int) -> np.ndarray | None:
        """The packed attribute map (R, R) of item ``i`` (None without attributes)."""
        return load_item(self.sources[i], self.spec)[1] if self.has_attributes[i] else None


# ------------------------------------------------------------------------------------------------ keys


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise file_error(path, "file not found") from None
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror})") from None
    return [st.st_size, st.st_mtime_ns]


def cache_keys(dataset: str, split: str, sources: Sequence[SourceFiles], spec: BaseSpec) -> tuple[str, str]:
    """(identity, key): ``identity`` hashes what the cache is *of* (dataset, split, spec, file paths);
    ``key`` adds every file's size and mtime, so any change to a source file changes it (a missing file is a
    one-line error naming it)."""
    head = {"v": CACHE_VERSION, "dataset": dataset, "split": split, "spec": spec.as_dict()}
    ident_items, key_items = [], []
    for s in sources:
        paths = [str(p.resolve()) for p in s.files()]
        flags = [s.mask is not None, s.mask_predicted, s.crop_mask is not None, s.dermo is not None]
        if s.artefact is not None:  # appended only then, so caches of sets without artefacts keep their keys
            flags.append("artefact")
        if s.attributes is not None:  # appended only then: caches of other datasets keep their keys
            flags.append("attributes")
        ident_items.append([s.image_id, paths, flags])
        key_items.append([s.image_id, paths, flags, [_stat(p) for p in s.files()]])
    ident = hashlib.sha256(json.dumps({**head, "items": ident_items}).encode()).hexdigest()
    key = hashlib.sha256(json.dumps({**head, "items": key_items}).encode()).hexdigest()
    return ident, key


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name)


# ----------------------------------------------------------------------------------------------- cache


class PreprocessCache:
    """A complete cache folder: base arrays by item position, opened lazily (per process) as memmaps."""

    def __init__(self, path: Path, meta: dict, built: bool) -> None:
        self.path, self.meta, self.built = Path(path), meta, built
        self.n = int(meta["n"])
        self.ids: list[str] = list(meta["ids"])
        self.has_mask = np.array(meta["has_mask"], dtype=bool)
        self.has_dermo = np.array(meta["has_dermo"], dtype=bool)
        self.has_artefact = np.array(meta.get("has_artefact") or [False] * self.n, dtype=bool)
        self.has_attributes = np.array(meta.get("has_attributes", [False] * self.n), dtype=bool)
        self._arrays: dict[str, np.ndarray] | None = None
        # Mapped now: forked DataLoader workers inherit the mapping, which stays readable even if a
        # later run replaces this cache (a source file changed) while this one is still training.
        self.arrays()

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:
        # A pickled memmap is a full in-memory copy; spawned workers reopen the files instead.
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def arrays(self) -> dict[str, np.ndarray]:
        """``{"images", "masks"?, "dermo"?, "artefacts"?, "attributes"?}`` as read-only memmaps."""
        if self._arrays is None:
            arrs = {"images": np.load(self.path / "images.npy", mmap_mode="r")}
            for name in ("masks", "dermo", "artefacts", "attributes"):
                if (self.path / f"{name}.npy").exists():
                    arrs[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
            self._arrays = arrs
        return self._arrays

    def get(self, i: int) -> Arrays:
        a = self.arrays()
        img = np.array(a["images"][i])
        mask = np.array(a["masks"][i]) if self.has_mask[i] else None
        dermo = np.array(a["dermo"][i]) if self.has_dermo[i] else None
        return img, mask, dermo

    def get_artefact(self, i: int) -> np.ndarray | None:
        """Item ``i``'s artefact mask uint8 (R, R), or None."""
        return np.array(self.arrays()["artefacts"][i]) if self.has_artefact[i] else None

    def attributes(self, i: int) -> np.ndarray | None:
        """The packed attribute map (R, R) of item ``i`` (None without attributes)."""
        return np.array(self.arrays()["attributes"][i]) if self.has_attributes[i] else None


def _open_valid(path: Path, key: str) -> PreprocessCache | None:
    """The cache at ``path`` if it is complete and built for ``key``; anything else is not trusted."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("complete") is not True:
            return None
        n, R = int(meta["n"]), int(meta["resize"])
        shapes = {"images": (n, R, R, 3)}
        if any(meta["has_mask"]):
            shapes["masks"] = (n, R, R)
        if any(meta["has_dermo"]):
            shapes["dermo"] = (n, R, R)
        if any(meta.get("has_artefact") or []):
            shapes["artefacts"] = (n, R, R)
        if any(meta.get("has_attributes", [])):
            shapes["attributes"] = (n, R, R)
        for name, shape in shapes.items():
            arr = np.load(path / f"{name}.npy", mmap_mode="r")
            if arr.shape != shape or arr.dtype != np.uint8:
                return None
            del arr
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return PreprocessCache(path, meta, built=False)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold ``path`` (a lock file) exclusively; a read-only cache folder is a one-line error."""
    from filelock import FileLock

    lock = FileLock(path)
    try:
        lock.acquire()
    except OSError as e:
        raise file_error(path.parent, f"data.cache_dir is not writable ({e.strerror or e}); "
                                      "give data.cache_dir=<a writable folder>") from None
    try:
        yield
    finally:
        lock.release()


def _remove_abandoned(cache_dir: Path, prefix: str) -> None:
    """Temporary folders of builds that crashed: every builder holds the family's lock, which we hold now."""
    for p in cache_dir.glob(f".tmp-{prefix}*"):
        shutil.rmtree(p, ignore_errors=True)


def _reserve(path: Path, cache_dir: Path, needed: int) -> None:
    """Allocate ``path``'s blocks now: a memory-mapped file that is still sparse dies of SIGBUS when the
    disk fills up during the build, with no message."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise file_error(cache_dir, f"no space for the preprocessing cache (needs {_mb(needed)} MB; "
                                        "free some space or give data.cache_dir=<another folder>)") from None
        # EOPNOTSUPP and the like: the free-space check before the build has to do.
    except AttributeError:  # pragma: no cover - not POSIX
        pass
    finally:
        os.close(fd)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _check_space(cache_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(cache_dir).free
    if free < needed:
        raise file_error(cache_dir, f"no space for the preprocessing cache (needs {_mb(needed)} MB, "
                                    f"{_mb(free)} MB free; give data.cache_dir=<another folder>)")


T = TypeVar("T")
U = TypeVar("U")


def ordered_map(fn: Callable[[T], U], items: Iterable[T], workers: int) -> Iterator[U]:
    """``map(fn, items)`` on a thread pool, in order, with a bounded number of items in flight
    (PIL releases the GIL while decoding and resizing, so threads use every core)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    it = iter(items)
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attnmel-cache")
    try:
        pending: deque[Future] = deque(ex.submit(fn, x) for x in islice(it, 3 * workers))
        while pending:
            result = pending.popleft().result()
            for x in islice(it, 1):
                pending.append(ex.submit(fn, x))
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    """Decode threads for a cache build."""
    return max(1, min(4, os.cpu_count() or 1))


def _progress(enabled: bool, description: str, total: int):
    """A rich progress bar and its task; ``enabled=False`` gives rich's own silent one."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False, disable=not enabled)
    task = prog.add_task(description, total=total)
    return prog, task


def cache_folder_name(dataset: str, split: str, spec: BaseSpec, ident: str, key: str) -> str:
    return f"{_safe(dataset)}-{_safe(split)}-r{spec.resize}-{ident[:10]}-{key[:16]}"


def ensure_cache(dataset: str, split: str, sources: Sequence[SourceFiles], spec: BaseSpec,
                 cache_dir: str | Path, progress: bool = True, workers: int | None = None) -> PreprocessCache:
    """Open the split's cache, building it first if it is missing or stale.

    The returned cache's ``built`` says whether this call built it. Items are in ``sources`` order.
    """
    sources = list(sources)
    if not sources:
        raise AttnMelError(f"{dataset} {split}: no images to preprocess")
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise file_error(cache_dir, f"data.cache_dir cannot be created ({e.strerror})") from None
    ident, key = cache_keys(dataset, split, sources, spec)
    name = cache_folder_name(dataset, split, spec, ident, key)
    final = cache_dir / name
    found = _open_valid(final, key)
    if found is not None:
        return found
    family = name[: -len(key[:16])]  # same dataset/split/spec/files, any version of their contents
    with _file_lock(cache_dir / f".{family}lock"):
        found = _open_valid(final, key)  # another process may have finished it while we waited
        if found is not None:
            return found
        _warn_changed(cache_dir, family, final)
        _remove_abandoned(cache_dir, family)
        if final.exists():  # incomplete or corrupt, e.g. written by hand or by an older layout
            shutil.rmtree(final, ignore_errors=True)
        tmp = cache_dir / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            meta = _build(tmp, dataset, split, sources, spec, key, progress, workers or default_workers())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in cache_dir.glob(f"{family}*"):  # superseded versions of the same cache
            if old != final and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return PreprocessCache(final, meta, built=True)


def _warn_changed(cache_dir: Path, family: str, final: Path) -> None:
    """One warning naming the first source file whose size or mtime differs from what an older cache of the
    same files recorded (the cache is then rebuilt from the files as they are now)."""
    for old in sorted(cache_dir.glob(f"{family}*")):
        if old == final or not old.is_dir():
            continue
        try:
            recorded = json.loads((old / "meta.json").read_text(encoding="utf-8")).get("sources") or []
        except (OSError, ValueError):
            continue
        for path, size, mtime in recorded:
            st = os.stat(path)  # every source exists: cache_keys has just stat-ed them all
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                what = f"size {size} -> {st.st_size} bytes" if st.st_size != size else "modified"
                log.warning("%s: changed since the cache was built (%s); rebuilding the cache", path, what)
                return


def _build(tmp: Path, dataset: str, split: str, sources: list[SourceFiles], spec: BaseSpec, key: str,
           progress: bool, workers: int) -> dict:
    from numpy.lib.format import open_memmap

    n, R = len(sources), spec.resize
    has_mask = [s.mask is not None for s in sources]
    has_dermo = [s.has_dermo for s in sources]
    has_artefact = [s.artefact is not None for s in sources]
    has_attributes = [s.attributes is not None for s in sources]
    needed = n * R * R * (3 + any(has_mask) + any(has_dermo) + any(has_artefact) + any(has_attributes))
    _check_space(tmp.parent, needed)
    images = open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, R, R, 3))
    masks = open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, R, R)) if any(has_mask) else None
    dermo = open_memmap(tmp / "dermo.npy", mode="w+", dtype=np.uint8, shape=(n, R, R)) if any(has_dermo) else None
    artefacts = (open_memmap(tmp / "artefacts.npy", mode="w+", dtype=np.uint8, shape=(n, R, R))
                 if any(has_artefact) else None)
    attrs = (open_memmap(tmp / "attributes.npy", mode="w+", dtype=np.uint8, shape=(n, R, R))
             if any(has_attributes) else None)
    for name, arr in (("images", images), ("masks", masks), ("dermo", dermo), ("artefacts", artefacts),
                      ("attributes", attrs)):
        if arr is not None:
            _reserve(tmp / f"{name}.npy", tmp.parent, needed)
    t0 = time.perf_counter()
    prog, task = _progress(progress, f"caching {dataset} {split} ({n} images, {R}px)", n)
    with prog:
        results = ordered_map(lambda s: (load_item(s, spec), load_preprocessed_artefact(s, spec)), sources, workers)
        for i, (((img, m, d), a), art) in enumerate(results):
            images[i] = img
            if a is not None:
                attrs[i] = a
            if m is not None:
                masks[i] = m
            if d is not None:
                dermo[i] = d
            if art is not None:
                artefacts[i] = art
            prog.advance(task)
    for arr in (images, masks, dermo, artefacts, attrs):
        if arr is not None:
            arr.flush()
    del images, masks, dermo, artefacts, attrs
    meta = {"version": CACHE_VERSION, "key": key, "dataset": dataset, "split": split, "n": n, "resize": R,
            "spec": spec.as_dict(), "ids": [s.image_id for s in sources], "has_mask": has_mask,
            "has_dermo": has_dermo, "has_artefact": has_artefact, "has_attributes": has_attributes,
            "sources": [[str(p.resolve()), *_stat(p)] for s in sources for p in s.files()],
            "build_seconds": round(time.perf_counter() - t0, 3), "complete": True}
    # meta.json last: a folder without it is never trusted (see _open_valid).
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    log.info("cached %s %s: %d images in %.1fs", dataset, split, n, meta["build_seconds"])
    return meta
