"""Sweep files: parsing, validation and the list of runs (arm x seed) they describe.

A sweep file (``experiments/sweeps/<name>.yaml``)::

    description: one line
    base: {synthetic: ../synthetic.yaml, isic2017: ../isic2017.yaml}   # experiment config per dataset
    default_dataset: synthetic          # optional; default: the first key of ``base``
    overrides: {trainer.progress_bar: false}   # every dataset and arm
    seeds: [0, 1, 2]
    jobs: 1                             # optional: runs in parallel when the caller does not say (--jobs)
    slurm: {partition: gpu, gpus_per_run: 1, cpus_per_run: 8, mem_gb: 32, time_min: 240}   # --launcher slurm
    datasets:                           # optional, per dataset: more overrides, other seeds, other jobs
      synthetic: {overrides: {trainer.max_epochs: 8}, seeds: [0, 1], jobs: 2}
    baseline: none                      # the arm the paired tests compare against
    paper_numbers: paper_numbers.yaml   # optional; default: that file beside the sweep file, if any
    arms:
      - name: none                      # folder name: [A-Za-z0-9_.-]+
        label: AttnMel-CNN              # optional display name
        paper: attnmel                  # optional row of paper_numbers.yaml
        overrides: {loss.regulariser: none}
        datasets: {synthetic: {loss.weights: {pool3: 0.1}}}   # optional per-dataset arm overrides
        only: [synthetic, isic2017]     # optional: the datasets this arm runs on (e.g. needs Dermo masks)

Override mappings take nested or dotted keys and are checked against ``defaults.yaml`` (an unknown key
is a one-line error naming the file and key). A run's config is, later winning: defaults <- base file
<- ``overrides`` <- ``datasets.<d>.overrides`` <- arm ``overrides`` <- arm ``datasets.<d>`` <-
command-line ``key=value`` <- ``seed``, ``out_dir``, ``name`` (set by the sweep).

Runs live in ``<out_root>/<name>/<arm>/seed<k>/``. The folder's ``sweep.json`` records the dataset, and a
folder made for another dataset is refused (so a synthetic and an ISIC sweep of one file never resume each
other's runs): pass ``--out`` to keep both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from attnmel import config as config_mod
from attnmel.errors import AttnMelError, file_error
from attnmel.train.rundir import run_dir_of

TOP_KEYS = ("name", "description", "base", "default_dataset", "overrides", "seeds", "jobs", "datasets", "baseline",
            "paper_numbers", "arms", "slurm")
DATASET_KEYS = ("overrides", "seeds", "jobs", "slurm")
ARM_KEYS = ("name", "label", "paper", "description", "overrides", "datasets", "only")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
PAPER_NUMBERS = "paper_numbers.yaml"


@dataclass
class ArmSpec:
    """One arm of a sweep: its overrides for the chosen dataset, already merged and validated."""

    name: str
    label: str
    paper: str | None
    overrides: dict[str, Any]
    description: str = ""


@dataclass
class SweepSpec:
    """A parsed sweep file resolved for one dataset."""

    path: Path
    name: str
    dataset: str
    base: Path
    arms: list[ArmSpec]
    seeds: list[int]
    baseline: str
    description: str = ""
    paper_numbers: dict[str, Any] = field(default_factory=dict)
    jobs: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)  # ``slurm:`` <- ``datasets.<d>.slurm`` (checked by sweep.slurm)

    @property
    def folder_name(self) -> str:
        """``<name>``: the sweep folder under the output root."""
        return self.name

    def arm(self, name: str) -> ArmSpec:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)


@dataclass
class RunPlan:
    """One arm x seed: the resolved config and its run folder."""

    arm: str
    seed: int
    cfg: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.cfg)


# -- helpers (dotted keys and merging are attnmel.config's: one config engine) -----------------------
def _check_keys(path: Path, where: str, data: dict[str, Any], known: Iterable[str]) -> None:
    known = tuple(known)
    for key in data:
        if key not in known:
            raise file_error(path, f"unknown sweep key '{where}{key}' (known: {', '.join(known)})")


def _mapping(path: Path, where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise file_error(path, f"'{where}' must be a mapping, got {type(value).__name__}")
    return value


def _overrides(path: Path, where: str, value: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """Expand and check one override mapping against the config schema (unknown key -> one line)."""
    nested = config_mod.expand_dotted(_mapping(path, where, value))
    config_mod.merge(schema, nested, source=f"{path}: {where}")
    return nested


def _seeds(path: Path, where: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in value):
        raise file_error(path, f"'{where}' must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise file_error(path, f"'{where}' lists a seed twice: {value!r}")
    return list(value)


# -- loading ---------------------------------------------------------------------------------------
def load_sweep(path: str | Path, dataset: str | None = None) -> SweepSpec:
    """Parse and validate a sweep file for ``dataset`` (default: the file's ``default_dataset``)."""
    path = Path(path)
    raw = config_mod.read_yaml(path)
    _check_keys(path, "", raw, TOP_KEYS)
    schema = config_mod.defaults()
    base, dataset, base_path = _base_config(path, raw, dataset)
    shared, ds_over, seeds, jobs = _dataset_settings(path, raw, base, dataset, schema)
    arms, seen = _arms(path, raw, base, dataset, shared, ds_over, schema)
    baseline = raw.get("baseline", arms[0].name)
    if baseline not in seen:
        raise file_error(path, f"baseline '{baseline}' is not an arm (arms: {', '.join(sorted(seen))})")
    if baseline not in {a.name for a in arms}:
        raise file_error(path, f"baseline arm '{baseline}' does not run on dataset '{dataset}'")
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise file_error(path, f"'name' must be a folder-safe string, got {name!r}")
    return SweepSpec(path=path, name=name, dataset=dataset, base=base_path, arms=arms, seeds=seeds,
                     baseline=str(baseline), description=str(raw.get("description") or ""),
                     paper_numbers=_paper_numbers(path, raw, dataset), jobs=jobs, slurm=_slurm(path, raw, dataset))


def _slurm(path: Path, raw: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The ``slurm`` resources: the file's, updated by the dataset's own block."""
    ds_block = _mapping(path, f"datasets.{dataset}", _mapping(path, "datasets", raw.get("datasets")).get(dataset))
    return {**_mapping(path, "slurm", raw.get("slurm")),
            **_mapping(path, f"datasets.{dataset}.slurm", ds_block.get("slurm"))}


def _base_config(path: Path, raw: dict[str, Any], dataset: str | None) -> tuple[dict[str, Any], str, Path]:
    """``base`` (dataset -> experiment config), the dataset chosen and its experiment config's path."""
    base = _mapping(path, "base", raw.get("base"))
    if not base:
        raise file_error(path, "'base' must map each dataset to an experiment config, "
                               "e.g. {synthetic: ../synthetic.yaml}")
    dataset = dataset or raw.get("default_dataset") or next(iter(base))
    if dataset not in base:
        raise file_error(path, f"no base config for dataset '{dataset}' (this sweep has: {', '.join(base)})")
    base_path = (path.parent / str(base[dataset])).resolve()
    if not base_path.is_file():
        raise file_error(path, f"base config for '{dataset}' not found: {base_path}")
    return base, dataset, base_path


def _dataset_settings(path: Path, raw: dict[str, Any], base: dict[str, Any], dataset: str,
                      schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[int], int]:
    """The shared overrides, the dataset's own overrides, seeds and jobs; every ``datasets`` block is checked."""
    datasets_raw = _mapping(path, "datasets", raw.get("datasets"))
    for ds, block in datasets_raw.items():
        if ds not in base:
            raise file_error(path, f"'datasets.{ds}' has no base config (base lists: {', '.join(base)})")
        _check_keys(path, f"datasets.{ds}.", _mapping(path, f"datasets.{ds}", block), DATASET_KEYS)
    shared = _overrides(path, "overrides", raw.get("overrides"), schema)
    ds_block = _mapping(path, f"datasets.{dataset}", datasets_raw.get(dataset))
    ds_over = _overrides(path, f"datasets.{dataset}.overrides", ds_block.get("overrides"), schema)
    for ds, block in datasets_raw.items():  # catch typos in the other datasets' blocks too
        _overrides(path, f"datasets.{ds}.overrides", (block or {}).get("overrides"), schema)
        if (block or {}).get("seeds") is not None:
            _seeds(path, f"datasets.{ds}.seeds", block["seeds"])
    seeds_raw = ds_block.get("seeds", raw.get("seeds", [0]))
    seeds = _seeds(path, f"datasets.{dataset}.seeds" if "seeds" in ds_block else "seeds", seeds_raw)
    jobs = ds_block.get("jobs", raw.get("jobs", 1))
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise file_error(path, f"'jobs' must be an integer >= 1, got {jobs!r}")
    return shared, ds_over, seeds, jobs


def _arms(path: Path, raw: dict[str, Any], base: dict[str, Any], dataset: str, shared: dict[str, Any],
          ds_over: dict[str, Any], schema: dict[str, Any]) -> tuple[list[ArmSpec], set[str]]:
    """The arms that run on ``dataset`` (overrides merged: shared, dataset, arm, arm x dataset) and every
    arm name of the file."""
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise file_error(path, "'arms' must be a non-empty list of {name, overrides}")
    arms: list[ArmSpec] = []
    seen: set[str] = set()
    for i, arm in enumerate(arms_raw):
        if not isinstance(arm, dict):
            raise file_error(path, f"arms[{i}] must be a mapping with a name, got {arm!r}")
        name = arm.get("name")
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            raise file_error(path, f"arms[{i}]: 'name' must be a folder-safe string ([A-Za-z0-9_.-]+), got {name!r}")
        _check_keys(path, f"arms[{name}].", arm, ARM_KEYS)
        if name in seen:
            raise file_error(path, f"duplicate arm name '{name}'")
        seen.add(name)
        spec = _arm(path, name, arm, base, dataset, shared, ds_over, schema)
        if spec is not None:
            arms.append(spec)
    if not arms:
        raise file_error(path, f"no arm runs on dataset '{dataset}'")
    return arms, seen


def _arm(path: Path, name: str, arm: dict[str, Any], base: dict[str, Any], dataset: str, shared: dict[str, Any],
         ds_over: dict[str, Any], schema: dict[str, Any]) -> ArmSpec | None:
    """One arm on ``dataset``, or None when its ``only`` leaves that dataset out."""
    over = _overrides(path, f"arms[{name}].overrides", arm.get("overrides"), schema)
    per_ds = _mapping(path, f"arms[{name}].datasets", arm.get("datasets"))
    for ds, block in per_ds.items():
        if ds not in base:
            raise file_error(path, f"arms[{name}].datasets.{ds}: no base config for that dataset")
        _overrides(path, f"arms[{name}].datasets.{ds}", block, schema)
    arm_ds = _overrides(path, f"arms[{name}].datasets.{dataset}", per_ds.get(dataset), schema)
    only = arm.get("only")
    if only is not None:
        if isinstance(only, str):
            only = [only]
        if not isinstance(only, list) or any(ds not in base for ds in only):
            raise file_error(path, f"arms[{name}].only must list datasets of 'base' ({', '.join(base)}), "
                                   f"got {only!r}")
        if dataset not in only:
            return None
    merged = shared
    for layer in (ds_over, over, arm_ds):
        merged = config_mod.merge(merged, layer, schema=schema, source=f"{path}: arms[{name}]")
    paper = arm.get("paper")
    return ArmSpec(name=name, label=str(arm.get("label") or name), paper=str(paper) if paper is not None else None,
                   overrides=merged, description=str(arm.get("description") or ""))


def _paper_numbers(path: Path, raw: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The paper's numbers for ``dataset`` from ``paper_numbers`` (default: the file beside the sweep)."""
    numbers_file = raw.get("paper_numbers")
    numbers_path = path.parent / (str(numbers_file) if numbers_file else PAPER_NUMBERS)
    if numbers_path.is_file():
        return _mapping(numbers_path, "paper numbers", config_mod.read_yaml(numbers_path)).get(dataset) or {}
    if numbers_file:
        raise file_error(path, f"paper_numbers file not found: {numbers_path}")
    return {}


def plan_runs(spec: SweepSpec, out_root: str | Path = "sweeps", overrides: Iterable[str] = ()) -> list[RunPlan]:
    """Resolve every arm x seed into a validated config (runs ordered arm by arm, seeds inside).

    Every arm is checked before any run is planned (each value's type and range, and the names the registries
    know: model, loss, regulariser, optimiser), and all bad arms are reported at once, one line each naming the
    sweep file, the arm and the key: a sweep with a bad arm trains nothing."""
    sweep_dir = Path(out_root) / spec.folder_name
    overrides = list(overrides)
    plans: list[RunPlan] = []
    bad: list[str] = []
    for arm in spec.arms:
        for seed in spec.seeds:
            extra = {"seed": seed, "out_dir": str(sweep_dir / arm.name), "name": f"seed{seed}"}
            try:
                cfg = config_mod.load_config(spec.base, overrides, extra=arm.overrides)
                check_names(cfg)
            except AttnMelError as e:
                message = str(e).removeprefix("config: ")
                bad.append(f"{spec.path}: arms[{arm.name}]: {message}")
                break  # the seeds share the arm's config: one line per arm
            # The sweep owns where a run goes and its seed; a command-line seed/name would collide runs.
            cfg.update(extra)
            plans.append(RunPlan(arm=arm.name, seed=seed, cfg=cfg))
    if bad:
        raise AttnMelError(f"{spec.path}: {len(bad)} bad arm(s), nothing trained:\n" + "\n".join(bad))
    return plans


def check_names(cfg: dict[str, Any]) -> None:
    """The names a config gives to the registries (``model.name``, ``loss.name``, ``loss.regulariser``,
    ``optim.name``) are registered; else the registry's one-line error naming the key."""
    from attnmel.losses.base import LOSSES
    from attnmel.losses.regularisers import REGULARISERS
    from attnmel.models.registry import MODELS
    from attnmel.train.optim import OPTIMISERS

    for registry, key in ((MODELS, "model.name"), (LOSSES, "loss.name"), (REGULARISERS, "loss.regulariser"),
                          (OPTIMISERS, "optim.name")):
        name = config_mod.get(cfg, key)
        if name is not None:
            registry.get(name)


def sweep_dir_of(spec: SweepSpec, out_root: str | Path = "sweeps") -> Path:
    """The sweep folder: ``<out_root>/<name>``."""
    return Path(out_root) / spec.folder_name
