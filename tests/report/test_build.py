"""``attnmel report`` swaps in a whole new report or nothing: every figure, the page and metrics.json's update are
built beside the previous ones, so a report that fails or is killed half-way through drawing leaves the previous
report and metrics byte for byte as they were."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from attnmel.bench.report import make_untrained_run
from attnmel.report import build

# The checks at their smallest (as tests/report/test_report_checks.py runs them): this is about the files.
SMALL = {"faithfulness_images": 2, "faithfulness_steps": 2, "randomisation_images": 2, "randomisation_stages": 2}
KW = dict(limit=6, reports_root=None, gallery_size=2, checks_options=SMALL)


def _files(run: Path) -> dict[str, bytes]:
    """Every visible file of the run folder (the lock aside) with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run).parts)}


@pytest.fixture
def reported(synthetic_factory, tmp_path) -> Path:
    """An untrained run over the shared synthetic set, with a first report (and its metrics.json) built."""
    run = make_untrained_run(tmp_path / "runs" / "r", synthetic_factory(), image_size=32, width=0.125,
                             cache_dir=tmp_path / "cache")
    build.build_report(run, overlay_size=64, **KW)
    assert (run / "metrics.json").is_file() and len(list((run / "report" / "figures").iterdir())) > 4
    return run


def test_a_report_failing_mid_drawing_leaves_the_previous_report_and_metrics(reported, monkeypatch):
    before = _files(reported)
    calls = []
    real = build._draw_case

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk gone mid-drawing")
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "_draw_case", fail_on_second)
    with pytest.raises(RuntimeError, match="mid-drawing"):
        build.build_report(reported, overlay_size=32, **KW)
    assert _files(reported) == before
    assert not [p for p in reported.iterdir() if p.name.startswith((".report", ".metrics"))]  # no leftovers


KILL_MID_DRAWING = """
import os, signal, sys
from attnmel.report import build
real, calls = build._draw_case, []
def kill_on_second(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
build._draw_case = kill_on_second
build.build_report(sys.argv[1], overlay_size=32, limit=6, reports_root=None, gallery_size=2,
                   checks_options=dict(faithfulness_images=2, faithfulness_steps=2, randomisation_images=2,
                                       randomisation_stages=2))
"""


@pytest.mark.slow  # a second interpreter and two reports: seconds
def test_a_report_killed_mid_drawing_leaves_the_previous_report_and_metrics(reported):
    before = _files(reported)
    proc = subprocess.run([sys.executable, "-c", KILL_MID_DRAWING, str(reported)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _files(reported) == before  # figures, page and metrics.json: all the previous report's
    # The next report is built whole (the killed build's hidden folder is left alone: it could be a live build of
    # another process; atomic_dir clears such leftovers after a day).
    build.build_report(reported, overlay_size=32, **KW)
    assert _files(reported) != before
