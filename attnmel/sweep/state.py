"""The state of a sweep's run folder, read from ``metrics.json``: what the runner resumes and the summary reads.

Its own module so that :mod:`attnmel.sweep.run` (which writes the summary at the end) and
:mod:`attnmel.sweep.summary` (which reads the runs) both import it and not each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnmel.train.rundir import ERROR_FILE, read_metrics

__all__ = ["ERROR_FILE", "attention_done", "classification_done", "read_metrics", "run_finished"]

# ERROR_FILE (RunDir.error_file): a failed run's one-line reason and traceback, in its run folder.


def classification_done(metrics: dict[str, Any]) -> bool:
    return isinstance(metrics.get("classification"), dict) and bool(metrics["classification"])


def attention_done(metrics: dict[str, Any]) -> bool:
    return bool(metrics.get("attention")) or bool(metrics.get("attention_skipped"))


def run_finished(run_dir: Path) -> bool:
    """Test metrics and attention scores (or the reason there are none) are both in ``metrics.json``."""
    m = read_metrics(run_dir)
    return classification_done(m) and attention_done(m)
