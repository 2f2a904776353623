"""The jinja2 environment of the report templates (``report/templates/``), shared by the run report
(:mod:`attnmel.report.build`) and the reports index (:mod:`attnmel.report.index`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TEMPLATES = Path(__file__).resolve().parent / "templates"


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: ``—`` for None and non-finite numbers, yes/no for booleans, ``digits`` decimals."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "—" if not np.isfinite(v) else f"{float(v):.{digits}f}"
    return str(v)


def template_env():
    """The jinja2 environment of the report templates; autoescape is on for every template."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env
