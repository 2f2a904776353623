"""The LightningDataModule: readers -> preprocessing cache -> joint transforms -> batch dicts.

Batches (see docs/DESIGN.md): ``image`` float (B, 3, H, W) normalised; ``label`` long (B,); ``mask`` float
(B, 1, H, W) in {0, 1} when every image of the split has a lesion mask (the dataset's, or a predicted one
from ``data.masks``); ``dermo`` likewise for dermoscopic-feature masks (ISIC 2017 Part 2, or the union of
the ISIC 2018 Task 2 attribute masks); ``artefact`` likewise for artefact masks (synthetic sets,
:attr:`DatasetIndex.has_artefacts`); ``attributes`` float (B, 5, H, W) in {0, 1}, the Task 2 masks in
``ATTRIBUTES`` order, for segmentation on an attribute dataset; ``image_id`` list[str]; ``index``
long (B,) into the split's samples. Prediction batches (:meth:`AttnMelDataModule.predict_dataset`) have no
``label``.

Reproducibility: every DataLoader gets a ``torch.Generator`` seeded from the config's ``seed`` (shuffling
and the per-worker base seeds come from it) and :func:`seed_worker` seeds numpy and ``random`` in each
worker from its torch seed. Augmentation draws use the worker's torch RNG, or, with ``num_workers: 0``, a
generator the dataset owns (seeded from ``seed``), so a run does not depend on what else used torch's
global RNG.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from attnmel.data.cache import (
    DecodeSource,
    PreprocessCache,
    SourceFiles,
    ensure_cache,
    load_preprocessed,
    predicted_masks,
    resolve_sources,
    unpack_attributes,
)
from attnmel.data.samples import DatasetIndex
from attnmel.data.transforms import Augment, BaseSpec, EvalTransform, TrainTransform, normalization_from_cfg
from attnmel.errors import AttnMelError, file_error, missing_masks
from attnmel.losses.regularisers import needs_masks
from attnmel.ranks import process_rank

log = logging.getLogger("attnmel.data")

DEFAULT_CLASS_NAMES = {
    2: ["other", "melanoma"],
    3: ["nevus", "melanoma", "seborrheic_keratosis"],
    7: ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"],
}


# ------------------------------------------------------------------------------------------ seeding


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    The DataLoader already gives each worker ``base_seed + worker_id`` (``base_seed`` drawn from the loader's
    generator); under DDP the rank is folded in so ranks do not repeat each other's augmentations.
    """
    seed = torch.initial_seed()
    rank = process_rank()
    if rank:
        seed = (seed + 1_000_003 * rank) % (2**63)
        torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class EpochSampler(Sampler):
    """Yields ``(position, item_seed)`` pairs; the order and every item's augmentation seed are functions of
    ``(seed, epoch, position)`` only, so a run resumed at an epoch boundary repeats an uninterrupted one,
    whatever the number of workers. Lightning calls :meth:`set_epoch` before each epoch."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), bool(shuffle), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        gen = torch.Generator()
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen).tolist() if self.shuffle else range(self.n)
        item_seeds = torch.randint(0, 2**62, (self.n,), generator=gen).tolist()
        for k, j in enumerate(order):
            yield (j, item_seeds[k])


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int,
                drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentations are seeded from ``seed`` and the epoch (see EpochSampler)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=2)
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), seed, shuffle),
                      num_workers=num_workers, worker_init_fn=seed_worker, generator=gen, drop_last=drop_last,
                      pin_memory=pin_memory, **kwargs)


# ------------------------------------------------------------------------------------------ datasets


class AttnMelDataset(Dataset):
    """Items of one split: ``rows[j]`` is the sample position behind dataset item ``j`` (repeats allowed,
    for oversampling and several passes per epoch)."""

    def __init__(self, index: DatasetIndex, source: PreprocessCache | DecodeSource,
                 transform: TrainTransform | EvalTransform, rows: Sequence[int] | None = None,
                 with_mask: bool = False, with_dermo: bool = False, seed: int = 0,
                 with_artefact: bool = False, with_attributes: int = 0, paster: Any = None) -> None:
        self.index, self.source, self.transform = index, source, transform
        self.paster = paster  # attnmel.data.artefacts.ArtefactPaster (data.artefact_augment) or None
        self.rows = np.asarray(rows if rows is not None else range(len(index.samples)), dtype=np.int64)
        self.with_mask, self.with_dermo, self.with_artefact = with_mask, with_dermo, with_artefact
        self.with_attributes = int(with_attributes)  # how many attribute masks the batch carries (0: none)
        self.seed = int(seed)
        self._gen: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_gen"] = None
        return state

    def _generator(self) -> torch.Generator | None:
        if get_worker_info() is not None:
            return None  # the worker's torch RNG, seeded by the DataLoader
        if self._gen is None:
            self._gen = torch.Generator()
            self._gen.manual_seed(self.seed)
        return self._gen

    def __getitem__(self, j: int | tuple[int, int]) -> dict[str, Any]:
        gen = self._generator()
        if isinstance(j, (tuple, list)):  # from EpochSampler: this item's own augmentation seed
            j, item_seed = j
            gen = torch.Generator()
            gen.manual_seed(int(item_seed))
        i = int(self.rows[j])
        img, mask, dermo = self.source.get(i)
        masks = {}
        if self.with_mask:
            masks["mask"] = mask
        if self.with_dermo:
            masks["dermo"] = dermo
        if self.with_artefact:
            masks["artefact"] = self.source.get_artefact(i)
        if self.with_attributes:
            masks["attributes"] = unpack_attributes(self.source.attributes(i), self.with_attributes)
        out = self.transform(img, masks, generator=gen)
        if self.paster is not None:
            lesion = out["mask"][0] > 0.5 if "mask" in out else None
            out["image"] = self.paster(out["image"], lesion, gen)
        sample = self.index.samples[i]
        out["label"] = torch.tensor(sample.label, dtype=torch.long)
        out["image_id"] = sample.image_id
        out["index"] = torch.tensor(i, dtype=torch.long)
        return out


class PredictDataset(Dataset):
    """Arbitrary image files with the eval transform and no labels (``attnmel predict``)."""

    def __init__(self, paths: Sequence[Path], spec: BaseSpec, transform: EvalTransform,
                 masks_dir: str | Path | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.spec, self.transform = spec, transform
        pred = predicted_masks(masks_dir) if masks_dir else {}
        self.sources = []
        for p in self.paths:
            m = pred.get(p.stem)
            if spec.crop_to_mask and m is None:
                where = f"in {masks_dir}" if masks_dir else "(give data.masks=<folder of predicted masks>)"
                raise file_error(p, f"data.crop_to_mask={spec.crop_to_mask} needs a mask for {p.stem}, "
                                    f"none found {where}")
            self.sources.append(SourceFiles(p.stem, p, crop_mask=m if spec.crop_to_mask else None,
                                            crop_mask_predicted=True))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, _, _ = load_preprocessed(self.sources[i], self.spec)
        out = self.transform(img, {})
        out["image_id"] = self.sources[i].image_id
        out["index"] = torch.tensor(i, dtype=torch.long)
        return out


def oversample_rows(labels: Sequence[int], positive: int, factor: int | Mapping[int, int],
                    repeats: int = 1) -> list[int]:
    """Sample positions with minority rows repeated, the whole list ``repeats`` times.

    ``factor``: how often each ``positive``-class row appears (the paper's 4x for melanoma), or a mapping
    class index -> factor (the DenseNet seed augments both melanoma and seborrheic keratosis).
    """
    factors = ({int(k): max(1, int(v)) for k, v in factor.items()} if isinstance(factor, Mapping)
               else {positive: max(1, int(factor))})
    repeats = max(1, int(repeats))
    rows = [i for i, y in enumerate(labels) for _ in range(factors.get(int(y), 1))]
    return rows * repeats


def _oversample_factors(setting: Any, class_names: Sequence[str]) -> int | dict[int, int]:
    """``data.oversample`` as given: an int (melanoma), or a mapping of class name -> factor."""
    if not isinstance(setting, Mapping):
        return int(setting or 1)
    unknown = [k for k in setting if k not in class_names]
    if unknown:
        raise AttnMelError(f"config: data.oversample names unknown class(es) {', '.join(map(str, unknown))} "
                           f"(classes: {', '.join(class_names)})")
    return {class_names.index(k): int(v) for k, v in setting.items()}


# ------------------------------------------------------------------------------------------ module


class AttnMelDataModule(pl.LightningDataModule):
    """Train/val/test data for one config.

    ``need_masks`` / ``need_dermo``: the training split must provide lesion / dermoscopic-feature masks
    (an attention regulariser reads them); None derives them from ``loss.regulariser``. With
    ``task: segmentation`` every split needs lesion masks. ``indexes`` injects ready-made
    :class:`DatasetIndex` objects by split (tests, callers that filtered a split) instead of the readers.
    ``generate``: make a configured synthetic set that is missing (training); the commands that read a trained
    run pass False, so that a deleted dataset folder is a one-line error rather than a new set scored silently.
    """

    def __init__(self, cfg: Mapping[str, Any], need_masks: bool | None = None, need_dermo: bool | None = None,
                 indexes: Mapping[str, DatasetIndex] | None = None, progress: bool = True,
                 generate: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.data_cfg: Mapping[str, Any] = cfg["data"]
        self.dataset_name: str = self.data_cfg["dataset"]
        self.root = Path(self.data_cfg["root"])
        self.seed = int(cfg.get("seed", 0) or 0)
        self.progress = progress
        self.generate = generate
        self.regulariser = (cfg.get("loss") or {}).get("regulariser") or "none"
        key = needs_masks(self.regulariser)  # the mask the regulariser class declares
        self.need_masks = key == "mask" if need_masks is None else bool(need_masks)
        self.need_dermo = key == "dermo" if need_dermo is None else bool(need_dermo)
        self.segmentation = cfg.get("task") == "segmentation"
        from attnmel.data.readers import dataset_info

        # Segmentation on an attribute dataset learns the five Task 2 masks, not the lesion mask.
        self.attribute_target = self.segmentation and dataset_info(self.dataset_name).attributes
        self.spec = BaseSpec.from_cfg(self.data_cfg)
        self.augment = Augment.from_cfg(self.data_cfg)
        self.mean, self.std = normalization_from_cfg(self.data_cfg)
        self.image_size = int(self.data_cfg["image_size"])
        # A folder of masks: ``data.masks`` naming a segmentation run is resolved to its masks folder once, by
        # the train layer (attnmel.train.masks.resolve_mask_source), before any DataModule is built.
        self.masks_dir = Path(self.data_cfg["masks"]) if self.data_cfg.get("masks") else None
        self._indexes: dict[str, DatasetIndex] = dict(indexes or {})
        self._datasets: dict[str, AttnMelDataset] = {}
        self._loaders: dict[str, DataLoader] = {}

    # -------------------------------------------------------------------------------- reading
    def prepare_data(self) -> None:
        """Generate the synthetic set if it is configured and missing (rank 0 only under Lightning)."""
        self._ensure_synthetic()

    def _ensure_synthetic(self) -> None:
        if (self.dataset_name not in ("synthetic", "synthetic_attributes") or self.root.exists() or self._indexes
                or not self.generate):
            return
        syn = self.data_cfg.get("synthetic") or {}
        if self.dataset_name == "synthetic_attributes":
            from attnmel.data.synthetic_attributes import generate_attributes

            log.info("generating the synthetic attribute set in %s", self.root)
            generate_attributes(self.root, n=int(syn.get("n", 600)), size=int(syn.get("size", 96)),
                                seed=int(syn.get("seed", 0)), progress=self.progress)
            return
        from attnmel.data.synthetic import generate, options_from_config

        log.info("generating the synthetic set in %s", self.root)
        generate(self.root, **options_from_config(self.data_cfg.get("synthetic")), progress=self.progress)

    def index(self, split: str) -> DatasetIndex:
        """The split's samples (read once)."""
        from attnmel.data.readers import known_splits

        known = known_splits(self.dataset_name)
        if split not in known:
            raise AttnMelError(f"unknown split '{split}' (known: {', '.join(known)})")
        if split not in self._indexes:
            self._ensure_synthetic()
            holdout = self.data_cfg.get("holdout")
            if holdout and split in ("train", "val"):
                self._read_with_holdout(float(holdout))
            else:
                self._indexes[split] = self._read(split)
        return self._indexes[split]

    def _read(self, split: str) -> DatasetIndex:
        from attnmel.data.readers import read_split

        # The reader's own `seed` (of a drawn validation split) is left at its default on purpose: the
        # split is shared by every run, whatever the run's seed.
        return read_split(self.dataset_name, self.root, split, num_classes=int(self.data_cfg["num_classes"]),
                          cache_dir=self.data_cfg.get("cache_dir") or ".cache/attnmel",
                          labels_optional=self.segmentation, **self._reader_options())

    def _reader_options(self) -> dict[str, Any]:
        """The reader options the config sets (``data.val_fraction``, ``data.split_file``, ...); one set for a
        dataset it does not apply to is refused by ``read_split`` in one line naming the key."""
        from attnmel.config import defaults
        from attnmel.data.readers import options_from_config

        return options_from_config(self.dataset_name, dict(self.data_cfg), defaults()["data"])

    def _read_with_holdout(self, fraction: float) -> None:
        """``data.holdout``: a stratified share of the training images moves to validation, beside the
        dataset's own validation images (model selection on more, and more test-like, images than a small
        official validation split). The draw is kept in the cache folder, never in the dataset folder."""
        from attnmel.data.readers.splits import holdout_split

        train, val = self._read("train"), self._read("val")
        moved = holdout_split(self.root, self.dataset_name, train, fraction,
                              self.data_cfg.get("cache_dir") or ".cache/attnmel")
        self._indexes["train"] = DatasetIndex(train.dataset, "train",
                                              [s for s in train.samples if s.image_id not in moved],
                                              train.class_names, train.skipped)
        self._indexes["val"] = DatasetIndex(val.dataset, "val",
                                            val.samples + [s for s in train.samples if s.image_id in moved],
                                            val.class_names, val.skipped)

    @property
    def class_names(self) -> list[str]:
        """Class names of the data (from a read split; before any is read, the standard list for K)."""
        for idx in self._indexes.values():
            return list(idx.class_names)
        k = int(self.data_cfg["num_classes"])
        return list(DEFAULT_CLASS_NAMES.get(k, [str(i) for i in range(k)]))

    @property
    def melanoma_index(self) -> int:
        """Column of the melanoma class (the positive class of the binary metrics)."""
        return DatasetIndex(self.dataset_name, "", [], self.class_names).melanoma_index

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -------------------------------------------------------------------------------- datasets
    def _source(self, split: str, sources: list[SourceFiles]) -> PreprocessCache | DecodeSource:
        if self.data_cfg.get("cache", True):
            return ensure_cache(self.dataset_name, split, sources, self.spec, self.data_cfg.get("cache_dir") or
                                ".cache/attnmel", progress=self.progress)
        return DecodeSource(sources, self.spec)

    def _check_masks(self, split: str, index: DatasetIndex, sources: list[SourceFiles], what: str) -> bool:
        """Whether every item has the mask ``what`` ("mask" / "dermo"); raise if it is needed and missing."""
        have = [s.mask is not None if what == "mask" else s.has_dermo for s in sources]
        complete = bool(have) and all(have)
        lesion_target = self.segmentation and not self.attribute_target
        needed = (what == "mask" and (lesion_target or (self.need_masks and split == "train"))) or \
                 (what == "dermo" and self.need_dermo and split == "train")
        if needed and not complete:
            missing = len(have) - sum(have)
            kind = "lesion masks" if what == "mask" else "dermoscopic-feature masks (ISIC 2017 Part 2)"
            user = ("task segmentation" if (what == "mask" and self.segmentation)
                    else f"regulariser '{self.regulariser}'")
            hint = ("; give data.masks=<folder of predicted masks> or set loss.regulariser=none" if what == "mask"
                    else "; use isic2017 (Part 2) or isic2018_task2 (attribute masks), or another regulariser")
            if what == "mask" and self.masks_dir is not None:
                hint = f"; {self.masks_dir} does not have them all either"
            raise missing_masks(self.root, f"dataset '{self.dataset_name}' has no {kind} for {missing} of {len(have)} "
                                        f"{split} images, and {user} needs them{hint}")
        return complete

    def dataset(self, split: str, train: bool | None = None) -> AttnMelDataset:
        """The split's dataset. ``train`` (default: ``split == "train"``): oversampling, repeats and the random
        transform; otherwise the eval transform, one item per sample (``dataset("train", train=False)`` scores
        the training images)."""
        train = (split == "train") if train is None else bool(train)
        name = split if train == (split == "train") else f"{split}:{'train' if train else 'eval'}"
        if name in self._datasets:
            return self._datasets[name]
        index = self.index(split)
        sources = resolve_sources(index.samples, self.masks_dir, self.spec)
        with_mask = self._check_masks(split, index, sources, "mask")
        with_dermo = self._check_masks(split, index, sources, "dermo")
        with_artefact = bool(sources) and all(s.artefact is not None for s in sources)
        source = self._source(split, sources)
        if train:
            factors = _oversample_factors(self.data_cfg.get("oversample", 1), index.class_names)
            rows = oversample_rows(index.labels(), index.melanoma_index, factors,
                                   self.data_cfg.get("epoch_repeats", 1))
            transform: TrainTransform | EvalTransform = TrainTransform(self.image_size, self.mean, self.std,
                                                                       self.augment)
        else:
            rows = None
            transform = EvalTransform(self.image_size, self.mean, self.std)
        with_attributes = 0
        if self.attribute_target:
            if not index.has_attributes:
                raise file_error(self.root, f"dataset '{self.dataset_name}' {split}: every image needs its "
                                            "attribute masks for attribute segmentation")
            with_attributes = len(index.samples[0].attributes)
        paster = self._artefact_paster(split) if train and float(self.data_cfg.get("artefact_augment") or 0) else None
        ds = AttnMelDataset(index, source, transform, rows, with_mask=with_mask, with_dermo=with_dermo,
                            seed=self.seed + (0 if train else 1), with_artefact=with_artefact,
                            with_attributes=with_attributes, paster=paster)
        self._datasets[name] = ds
        return ds

    def _artefact_paster(self, split: str) -> Any:
        """``data.artefact_augment``: the cut-outs of every ``split`` image with a (non-empty) artefact mask in
        ``data.artefact_masks``, cut through the eval geometry (:class:`~attnmel.data.artefacts.ArtefactPaster`)."""
        from attnmel.data.artefacts import ArtefactPaster, cutout, list_artefact_masks, network_mask

        folder = self.data_cfg.get("artefact_masks")
        if not folder:
            raise AttnMelError("config: data.artefact_augment needs data.artefact_masks (the artefacts to paste)")
        index = self.index(split)
        masks = list_artefact_masks(folder, [s.image_id for s in index.samples])
        plain = self.dataset(split, train=False)
        cuts = []
        for k, s in enumerate(index.samples):
            if s.image_id in masks:
                cut = cutout(plain[k]["image"], network_mask(masks[s.image_id], s.image, self.spec, self.image_size),
                             s.image_id)
                if cut is not None:
                    cuts.append(cut)
        if not cuts:
            raise file_error(Path(folder), f"no artefact to paste: every mask of a {split} image is empty")
        log.info("artefact augmentation: %d cut-outs from %s, on %.0f %% of training images", len(cuts), folder,
                 100 * float(self.data_cfg["artefact_augment"]))
        return ArtefactPaster(cuts, float(self.data_cfg["artefact_augment"]))

    def setup(self, stage: str | None = None) -> None:
        """Read and cache the splits the stage needs (fit: train + val; validate: val; test: test)."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}.get(
            stage or "", ("train", "val", "test"))
        for split in splits:
            self.dataset(split)

    def predict_dataset(self, paths: Sequence[str | Path]) -> PredictDataset:
        """Arbitrary image files with the eval transform (no labels); ``image_id`` is the file stem."""
        return PredictDataset([Path(p) for p in paths], self.spec, EvalTransform(self.image_size, self.mean, self.std),
                              self.masks_dir)

    # -------------------------------------------------------------------------------- loaders
    def loader(self, dataset: Dataset, train: bool = False) -> DataLoader:
        """A seeded DataLoader over ``dataset`` with this config's batch size and workers."""
        bs = int(self.data_cfg["batch_size"] if train else self.data_cfg.get("eval_batch_size") or
                 self.data_cfg["batch_size"])
        # A last training batch of one image breaks BatchNorm; drop the remainder when there is a full batch.
        drop_last = train and len(dataset) > bs
        return make_loader(dataset, bs, shuffle=train, seed=self.seed, num_workers=int(self.data_cfg["num_workers"]),
                           drop_last=drop_last)

    def _split_loader(self, split: str) -> DataLoader:
        # Kept so persistent workers survive across epochs (Lightning asks for loaders more than once).
        if split not in self._loaders:
            self._loaders[split] = self.loader(self.dataset(split), train=split == "train")
        return self._loaders[split]

    def eval_dataloader(self, split: str) -> DataLoader:
        """Deterministic loader over ``split`` (eval transform, no oversampling, in sample order)."""
        return self.loader(self.dataset(split, train=False), train=False)

    def train_dataloader(self) -> DataLoader:
        return self._split_loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._split_loader("val")

