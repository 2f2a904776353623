"""Run configuration: YAML files validated against ``defaults.yaml``, plus ``key=value`` overrides."""

from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from attnmel.errors import AttnMelError, file_error

Config = dict[str, Any]


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
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise file_error(path, "a config must be a YAML mapping of keys to values")
    return data


def parse_overrides(items: Iterable[str]) -> Config:
    """Turn ``["a.b=1", "c=x"]`` into a nested mapping (values parsed as YAML scalars/lists)."""
    out: Config = {}
    for item in items:
        if "=" not in item:
            raise AttnMelError(f"override '{item}' is not of the form key=value")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def merge(base: Config, update: Config, *, schema: Config | None = None, source: str = "config",
          prefix: str = "") -> Config:
    """Deep-merge ``update`` into a copy of ``base``; keys absent from ``schema`` are an error."""
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


def validate(cfg: Config) -> None:
    """Checks across keys that the schema alone cannot express."""
    size = cfg["data"]["image_size"]
    if not isinstance(size, int) or size <= 0 or size % 32:
        raise AttnMelError(f"config: data.image_size must be a positive multiple of 32, got {size!r}")
    if cfg["data"]["resize"] < size:
        raise AttnMelError(f"config: data.resize ({cfg['data']['resize']}) is smaller than data.image_size ({size})")
    if cfg["data"]["num_classes"] not in (1, 2, 3, 7, 8):  # 1: segmentation-only sets; 8: isic2019
        raise AttnMelError(f"config: data.num_classes must be 1, 2, 3, 7 or 8, got {cfg['data']['num_classes']!r}")


def dump(cfg: Config) -> str:
    """YAML text of a config (the run folder's ``config.yaml``)."""
    return yaml.safe_dump(cfg, sort_keys=False)
