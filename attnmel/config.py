"""Run configuration: YAML files validated against ``defaults.yaml``, plus ``key=value`` overrides.

This module is the one config engine: training, resume and sweeps all merge with :func:`merge` (unknown
keys are one-line errors with a suggestion) and check values with :func:`validate` (every key's type, and
its range where it has one).
"""

from __future__ import annotations

import copy
import difflib
import math
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from attnmel.errors import AttnMelError, file_error

Config = dict[str, Any]

# Keys a resumed run may change (a moved folder or dataset, more epochs, other hardware). Every other key
# is the run's identity: the checkpoint's config wins, and asking to change it is refused in one line.
RESUME_MAY_CHANGE = ("out_dir", "name", "data.root", "data.cache", "data.cache_dir", "data.num_workers",
                     "data.eval_batch_size", "data.tta", "data.masks",
                     "data.artefact_flags", "data.artefact_masks", "trainer.max_epochs", "trainer.accelerator",
                     "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.precision",
                     "trainer.progress_bar", "trainer.log_every_n_steps", "trainer.early_stopping_patience")

PRECISIONS = ("auto", "32-true", "32", "64-true", "64", "16-mixed", "16", "bf16-mixed", "bf16", "16-true",
              "bf16-true", "transformer-engine", "transformer-engine-float16")


def defaults() -> Config:
    """The full default config (every known key)."""
    text = resources.files("attnmel").joinpath("defaults.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def read_yaml(path: str | Path) -> Config:
    """Read a YAML mapping, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise file_error(path, f"not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, f"cannot read ({getattr(e, 'strerror', None) or e.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise file_error(path, "a config must be a YAML mapping of keys to values")
    return data


def expand_dotted(mapping: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": {"d.e": 2}}`` -> ``{"a": {"b": 1}, "c": {"d": {"e": 2}}}`` (deep-merging)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        parts = str(key).strip().split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = node[p] = {}
            node = nxt
        leaf = parts[-1]
        if isinstance(value, dict) and value:
            value = expand_dotted(value)
            if isinstance(node.get(leaf), dict):
                value = {**node[leaf], **value}
        node[leaf] = value
    return out


def parse_overrides(items: Iterable[str]) -> Config:
    """Turn ``["a.b=1", "c=x"]`` into a nested mapping (values parsed as YAML scalars/lists)."""
    flat: Config = {}
    for item in items:
        if "=" not in item:
            raise AttnMelError(f"override '{item}' is not of the form key=value")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        flat[key.strip()] = value
    return expand_dotted(flat)


def merge(base: Config, update: Config, *, schema: Config | None = None, source: str = "config",
          prefix: str = "") -> Config:
    """Deep-merge ``update`` into a copy of ``base``; keys absent from ``schema`` are an error.

    Free-form mappings of the schema (``{}`` in ``defaults.yaml``, e.g. ``loss.weights``) are replaced
    whole, so two layers' weights never mix.
    """
    schema = base if schema is None else schema
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            raise AttnMelError(_unknown_key_message(source, dotted, key, schema))
        sub = schema[key]
        if isinstance(sub, dict) and sub and isinstance(value, dict):
            out[key] = merge(out.get(key) or {}, value, schema=sub, source=source, prefix=f"{dotted}.")
        elif isinstance(sub, dict) and sub and value is not None:
            raise AttnMelError(f"{source}: '{dotted}' must be a mapping, got {value!r}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _unknown_key_message(source: str, dotted: str, key: str, schema: Config) -> str:
    close = difflib.get_close_matches(key, list(schema), n=1)
    hint = f" (did you mean '{dotted[: -len(key)]}{close[0]}'?)" if close else ""
    return f"{source}: unknown config key '{dotted}'{hint}"


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                extra: Config | None = None) -> Config:
    """Defaults <- YAML file <- ``extra`` mapping <- ``key=value`` overrides, validated."""
    cfg = defaults()
    if path is not None:
        cfg = merge(cfg, read_yaml(path), source=str(path))
        if cfg.get("name") is None:
            cfg["name"] = Path(path).stem
    if extra:
        cfg = merge(cfg, extra, source="sweep arm")
    cfg = merge(cfg, parse_overrides(overrides), source="command line")
    if cfg.get("name") is None:
        cfg["name"] = "run"
    validate(cfg)
    return cfg


# -- value checks ------------------------------------------------------------------------------
# A check returns the (possibly normalised) value, or raises ValueError with what the key must be.
Check = Callable[[Any], Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(lo: int | None = None, none: bool = False) -> Check:
    what = "an integer" + (f" >= {lo}" if lo is not None else "") + (" or null" if none else "")

    def check(v: Any) -> Any:
        if v is None and none:
            return v
        if not _is_int(v) or (lo is not None and v < lo):
            raise ValueError(what)
        return v
    return check


def _num(lo: float | None = None, hi: float | None = None, lo_open: bool = False, none: bool = False) -> Check:
    rng = ""
    if lo is not None:
        rng = f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        rng += f"{' and' if rng else ''} <= {hi:g}"
    what = "a number" + rng + (" or null" if none else "")

    def check(v: Any) -> Any:
        if v is None and none:
            return v
        if isinstance(v, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                v = float(v)
            except ValueError:
                raise ValueError(what) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(what)
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise ValueError(what)
        if hi is not None and v > hi:
            raise ValueError(what)
        return v
    return check


def _str(choices: Iterable[str] | None = None, none: bool = False, empty: bool = False) -> Check:
    choices = tuple(choices) if choices is not None else None
    what = (f"one of {', '.join(choices)}" if choices else "a non-empty string" if not empty else "a string") \
        + (" or null" if none else "")

    def check(v: Any) -> Any:
        if v is None and none:
            return v
        if choices is not None:
            if str(v) not in choices or isinstance(v, (bool, list, dict)) or v is None:
                raise ValueError(what)
            return str(v) if not isinstance(v, str) else v
        if not isinstance(v, (str, int, float)) or isinstance(v, bool) or (not empty and str(v).strip() == ""):
            raise ValueError(what)
        return str(v)
    return check


def _bool(v: Any) -> Any:
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _either(*checks: Check, what: str) -> Check:
    def check(v: Any) -> Any:
        for c in checks:
            try:
                return c(v)
            except ValueError:
                continue
        raise ValueError(what)
    return check


def _list(item: Check, what: str, length: int | None = None, none: bool = False) -> Check:
    def check(v: Any) -> Any:
        if v is None and none:
            return v
        if not isinstance(v, list) or (length is not None and len(v) != length):
            raise ValueError(what)
        try:
            return [item(x) for x in v]
        except ValueError:
            raise ValueError(what) from None
    return check


def _oversample(v: Any) -> Any:
    what = "an integer >= 1, null (off), or a mapping of class name -> integer >= 1"
    if v is None:  # off; also the only way to clear a mapping from the command line (merge keeps mappings)
        return v
    if _is_int(v) and v >= 1:
        return v
    if isinstance(v, dict) and v and all(_is_int(x) and x >= 1 for x in v.values()):
        return v
    raise ValueError(what)


def _limit(v: Any) -> Any:
    # Lightning: an int counts batches, a float in [0, 1] is a fraction of them.
    if v is None or (_is_int(v) and v >= 0):
        return v
    if isinstance(v, float) and 0.0 <= v <= 1.0:
        return v
    raise ValueError("an integer >= 0 (batches), a fraction in [0, 1], or null")


def _devices(v: Any) -> Any:
    if (_is_int(v) and v >= -1 and v != 0) or v == "auto":
        return v
    if isinstance(v, str) and v.strip():
        return v  # "0,1" and the like: Lightning parses those
    if isinstance(v, list) and v and all(_is_int(x) and x >= 0 for x in v):
        return v
    raise ValueError("a positive integer, -1, 'auto', or a list of device indices")


def _path_or_null(v: Any) -> Any:
    if v is None:
        return v
    if not isinstance(v, str) or not v.strip():
        raise ValueError("a folder path or null")
    return v


def _pos_weight(v: Any) -> Any:
    # Its per-output form (a mapping of output names) is checked where the outputs are known
    # (attnmel.losses.segmentation.positive_weights); here only its type.
    if v is None or isinstance(v, dict):
        return v
    if isinstance(v, str):
        v = _num(0.0, lo_open=True)(v)
    if isinstance(v, (list, tuple)) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return v
    raise ValueError("a positive number, a list of them, or a mapping of output name to weight")


def _none(v: Any) -> Any:
    if v is not None:
        raise ValueError("null")
    return v


def _fraction_below_1(v: Any) -> Any:
    v = _num(0.0)(v)
    if v >= 1:
        raise ValueError("a number >= 0 and < 1")
    return v


def _crop_scale(v: Any) -> Any:
    what = "null or [lo, hi] with 0 < lo <= hi <= 1"
    if v is None:
        return v
    v = _list(_num(0.0, 1.0, lo_open=True), what, 2)(v)
    if v[0] > v[1]:
        raise ValueError(what)
    return v


_NONNEG = _num(0.0)
CHECKS: dict[str, Check] = {
    "name": _str(none=True), "out_dir": _str(), "seed": _int(0), "task": _str(("classification", "segmentation")),
    "data.dataset": _str(), "data.root": _str(), "data.num_classes": _int(),
    "data.center_crop": _num(0.0, 1.0, lo_open=True, none=True), "data.resize": _int(1), "data.image_size": _int(32),
    "data.mean": _list(_num(), "a list of 3 numbers or null", 3, none=True),
    "data.std": _list(_num(0.0, lo_open=True), "a list of 3 positive numbers or null", 3, none=True),
    "data.oversample": _oversample, "data.epoch_repeats": _int(1), "data.batch_size": _int(1),
    "data.eval_batch_size": _int(1), "data.num_workers": _int(0), "data.cache": _bool, "data.cache_dir": _str(),
    "data.val_fraction": _num(0.0, 1.0, lo_open=True), "data.masks": _path_or_null,
    "data.holdout": _either(_none, _num(0.0, 0.9, lo_open=True), what="a fraction in (0, 0.9] or null"),
    "data.color_constancy": _str(("shades_of_gray",), none=True),
    "data.crop_scale": _crop_scale, "data.rotation": _num(0.0, 180.0), "data.color_jitter": _fraction_below_1,
    "data.tta": _bool,
    "data.crop_to_mask": _str(("crop", "masked"), none=True), "data.crop_margin": _NONNEG,
    "data.synthetic.n": _int(10), "data.synthetic.size": _int(32), "data.synthetic.spurious": _bool,
    "data.synthetic.seed": _int(0), "data.split_file": _path_or_null,
    "data.label_column": _str(none=True), "data.positive_class": _str(none=True),
    "data.artefact_flags": _path_or_null, "data.artefact_masks": _path_or_null,
    "data.artefact_augment": _num(0.0, 1.0),
    # The generator (attnmel.data.synthetic) checks these again against its own tables when it runs.
    "data.synthetic.artefact": _str(("sticker", "ruler", "ink", "lens", "bubbles")),
    "data.synthetic.melanoma_rate": _num(0.0, 1.0), "data.synthetic.benign_rate": _num(0.0, 1.0),
    "data.synthetic.train": _str(("shortcut", "balanced", "reversed", "absent")),
    "data.synthetic.val": _str(("shortcut", "balanced", "reversed", "absent")),
    "data.synthetic.test": _str(("shortcut", "balanced", "reversed", "absent")),
    "data.synthetic.extra_tests": _list(_str(("shortcut", "balanced", "reversed", "absent")),
                                        "a list of test conditions"),
    "data.synthetic.difficulty": _num(0.0, 1.0), "data.synthetic.clutter": _bool,
    "model.gap_path": _str(("keep", "remove", "gated")),
    "model.name": _str(), "model.pretrained": _str(), "model.attention": _str(("sigmoid", "softmax")),
    "model.attention_layers": _list(_str(), "a list of layer names"), "model.width": _num(0.0, lo_open=True),
    "model.svm": _bool,
    "loss.name": _str(), "loss.gamma": _NONNEG, "loss.label_smoothing": _fraction_below_1,
    "loss.pos_weight": _pos_weight, "loss.regulariser": _str(none=True),
    "optim.name": _str(), "optim.lr": _num(0.0, lo_open=True), "optim.momentum": _num(0.0, 1.0),
    "optim.nesterov": _bool, "optim.weight_decay": _NONNEG, "optim.step_size": _int(1),
    "optim.schedule": _str(("step", "cosine")), "optim.warmup_epochs": _int(0),
    "optim.gamma": _num(0.0, lo_open=True), "optim.ema": _fraction_below_1,
    "trainer.max_epochs": _int(1), "trainer.accelerator": _str(), "trainer.devices": _devices,
    "trainer.num_nodes": _int(1), "trainer.strategy": _str(), "trainer.precision": _str(PRECISIONS),
    "trainer.channels_last": _bool, "trainer.early_stopping_patience": _int(1, none=True),
    "trainer.limit_train_batches": _limit, "trainer.limit_val_batches": _limit,
    "trainer.log_every_n_steps": _int(1), "trainer.progress_bar": _bool, "trainer.deterministic": _bool,
}


def leaf_keys(schema: Config, prefix: str = "") -> list[str]:
    """Every dotted key of a schema; free-form mappings (``{}``) count as one key."""
    out: list[str] = []
    for k, v in schema.items():
        if isinstance(v, dict) and v:
            out += leaf_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def get(cfg: Config, dotted: str, default: Any = None) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"`` (``default`` where a level is missing)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _set(cfg: Config, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def validate(cfg: Config) -> None:
    """Check every key's type and range (one line naming the key), then the checks across keys.

    Values are normalised in place where that is unambiguous (a number YAML read as a string, e.g. ``1e-3``).
    """
    for key in leaf_keys(defaults()):
        check = CHECKS.get(key)
        if check is None:
            continue  # free-form mappings: their readers check them
        value = get(cfg, key)
        try:
            _set(cfg, key, check(value))
        except ValueError as e:
            raise AttnMelError(f"config: {key} must be {e}, got {value!r}") from None
    size = cfg["data"]["image_size"]
    if size % 32:
        raise AttnMelError(f"config: data.image_size must be a positive multiple of 32, got {size!r}")
    if cfg["data"]["resize"] < size:
        raise AttnMelError(f"config: data.resize ({cfg['data']['resize']}) is smaller than data.image_size ({size})")
    if cfg["data"]["num_classes"] not in (1, 2, 3, 7, 8):  # 1: segmentation-only sets; 8: isic2019
        raise AttnMelError(f"config: data.num_classes must be 1, 2, 3, 7 or 8, got {cfg['data']['num_classes']!r}")


def changed_keys(old: Config, new: Config) -> list[str]:
    """The schema keys whose value differs between two configs (free-form mappings compared whole). A key
    missing from a config (one saved before the key existed) counts as its default, so adding a key to
    ``defaults.yaml`` does not make older runs differ from themselves."""
    base = defaults()
    return [k for k in leaf_keys(base) if get(old, k, get(base, k)) != get(new, k, get(base, k))]


def frozen_changes(saved: Config, asked: Config) -> list[str]:
    """The keys outside ``RESUME_MAY_CHANGE`` whose value differs between a run's config and ``asked``."""
    return [k for k in changed_keys(saved, asked) if k not in RESUME_MAY_CHANGE]


def frozen_change_message(where: str, key: str, saved: Config, asked: Config) -> str:
    return (f"{where}: {key} cannot change when resuming (the run was trained with {get(saved, key)!r}, "
            f"now {get(asked, key)!r}); keys that may change: {', '.join(RESUME_MAY_CHANGE)}")


def check_resume_changes(saved: Config, asked: Config, where: str) -> None:
    """Refuse, in one line, any change to a key that a resumed run cannot change (see ``RESUME_MAY_CHANGE``)."""
    for key in frozen_changes(saved, asked):
        raise AttnMelError(frozen_change_message(where, key, saved, asked))


def dump(cfg: Config) -> str:
    """YAML text of a config (the run folder's ``config.yaml``)."""
    return yaml.safe_dump(cfg, sort_keys=False)
