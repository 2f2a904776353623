"""``reports/index.html``: every run's report and every sweep summary, with headline numbers.

Rebuilt by every :func:`attnmel.report.build.build_report` and by sweeps (:func:`rebuild_index`). It reads
only what runs already wrote (``metrics.json``, ``config.yaml``), so rebuilding it is cheap and safe to do
from several processes: each write is atomic and each rebuild scans everything present at that moment.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote

from attnmel.explain.methods import compact_label
from attnmel.io import write_text
from attnmel.report.render import template_env
from attnmel.train.rundir import CHECKPOINTS, LOGS, METRICS, REPORT, RunDir, read_metrics_file

log = logging.getLogger("attnmel.report")

# Folders inside a run that never hold another run: not descended into (a run's logs can be large).
_SKIP_DIRS = frozenset({CHECKPOINTS, LOGS, REPORT, "cache", ".cache", "lightning_logs", "__pycache__",
                        "figures", "overlays"})
# Headline Jaccard columns: metrics.json attention method keys, in display order.
HEADLINE_METHODS: tuple[tuple[str, str], ...] = tuple(
    (m, f"Jaccard {compact_label(m)}") for m in ("attention:pool3", "attention:pool4", "gradcam", "cam"))


@dataclass
class RunEntry:
    """One run folder as the index shows it."""

    name: str
    report_href: str | None
    metrics_href: str | None
    model: str = ""
    dataset: str = ""
    split: str = ""
    auc: float | None = None
    ap: float | None = None
    jaccard: dict[str, float | None] = field(default_factory=dict)
    note: str = ""


@dataclass
class SweepEntry:
    """One sweep folder with a ``summary.html``."""

    name: str
    href: str
    n_runs: int = 0


def _href(target: Path, base: Path) -> str:
    # Relative, URL-quoted (a run name may hold spaces or '#'), so the index works from file:// anywhere.
    return quote(Path(os.path.relpath(target, base)).as_posix())


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def read_run_entry(run_dir: Path, reports_root: Path, name: str) -> RunEntry:
    """Headline numbers of one run folder (missing or unreadable parts are left empty with a note)."""
    folder = RunDir(run_dir)
    report, metrics_path = folder.report_page, folder.metrics_file
    entry = RunEntry(name=name, report_href=_href(report, reports_root) if report.is_file() else None,
                     metrics_href=_href(metrics_path, reports_root) if metrics_path.is_file() else None)
    cfg = folder.saved_config_summary()
    if cfg:
        entry.model = str((cfg.get("model") or {}).get("name", ""))
        entry.dataset = str((cfg.get("data") or {}).get("dataset", ""))
    if not metrics_path.is_file():
        entry.note = f"no {METRICS} yet"
        return entry
    metrics, problem = read_metrics_file(metrics_path)
    if metrics is None:
        entry.note = problem
        return entry
    # A run scored only by `attnmel report` (no `evaluate`) still has the report's headline numbers.
    cls = metrics.get("classification") or (metrics.get("report") or {}).get("classification") or {}
    entry.auc, entry.ap = _num(cls.get("auc")), _num(cls.get("average_precision"))
    entry.split = str(metrics.get("split", "") or "")
    att = metrics.get("attention") or {}
    means = att.get("mean") or {}
    entry.jaccard = {k: _num((means.get(k) or {}).get("jaccard")) for k, _ in HEADLINE_METHODS}
    if att and not att.get("available", True):
        entry.note = "no lesion masks: no Jaccard"
    return entry


def _walk(roots: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Run folders (holding metrics.json or a report) and sweep folders (holding summary.html)."""
    runs: list[Path] = []
    sweeps: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            if "summary.html" in filenames:
                sweeps.append(here)
            is_run = METRICS in filenames or RunDir(here).report_page.is_file()
            if is_run and "summary.html" not in filenames:
                runs.append(here)
                dirnames[:] = []  # a run folder holds no further runs
                continue
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
    return sorted(set(runs)), sorted(set(sweeps))


def collect(reports_root: Path, runs_roots: Sequence[Path]) -> tuple[list[RunEntry], list[SweepEntry]]:
    """Every run and sweep under ``runs_roots``, with links relative to ``reports_root``."""
    reports_root = reports_root.resolve()
    roots = [Path(r).resolve() for r in runs_roots]
    run_dirs, sweep_dirs = _walk(roots)
    runs: list[RunEntry] = []
    for d in run_dirs:
        root = next((r for r in roots if d == r or r in d.parents), d.parent)
        name = d.relative_to(root.parent).as_posix() if d != root else d.name
        runs.append(read_run_entry(d, reports_root, name))
    sweeps: list[SweepEntry] = []
    for d in sweep_dirs:
        root = next((r for r in roots if d == r or r in d.parents), d.parent)
        name = d.relative_to(root.parent).as_posix() if d != root else d.name
        n = sum(1 for r in run_dirs if d in r.parents)
        sweeps.append(SweepEntry(name=name, href=_href(d / "summary.html", reports_root), n_runs=n))
    return runs, sweeps


def rebuild_index(reports_root: Path = Path("reports"),
                  runs_roots: Sequence[Path] = (Path("runs"), Path("sweeps"))) -> Path:
    """Write ``reports_root/index.html`` listing every run report and sweep summary; return its path."""
    reports_root = Path(reports_root)
    reports_root.mkdir(parents=True, exist_ok=True)
    runs, sweeps = collect(reports_root, [Path(r) for r in runs_roots])
    html = template_env().get_template("index.html").render(
        runs=runs, sweeps=sweeps, headline_methods=HEADLINE_METHODS,
        roots=[str(r) for r in runs_roots],
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    path = reports_root / "index.html"
    write_text(path, html)
    return path
