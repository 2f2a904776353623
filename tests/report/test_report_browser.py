"""The report in a real browser: headless chromium opens it from file://, every image displays, no console error.

Run with ``make test-browser`` (installs Debian's chromium when missing). The screenshot is kept in
``reports/test-output/report.png`` (git-ignored) for a human look.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from attnmel.bench.report import make_untrained_run
from attnmel.report.build import build_report

pytestmark = pytest.mark.browser
OUTPUT = Path(__file__).resolve().parents[2] / "reports" / "test-output"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium not installed (make test-browser installs it)")


def _open(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--hide-scrollbars", *extra,
           page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


class _Imgs(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.n = 0
        self.body: dict[str, str | None] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.n += 1
        elif tag == "body":
            self.body = dict(attrs)


def _console_errors(stderr: str) -> list[str]:
    # The page logs nothing; any console line (CSP violation, script error) is a failure.
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]


@pytest.fixture(scope="module")
def report(synthetic_factory, tmp_path_factory) -> Path:
    root = synthetic_factory(n=48, size=64)
    out = tmp_path_factory.mktemp("browser")
    run_dir = make_untrained_run(out / "runs" / "untrained <b>", root, image_size=64, width=0.125,
                                 cache_dir=out / "cache")
    return build_report(run_dir, reports_root=out / "reports", runs_roots=(out / "runs",))


def test_report_opens_offline_and_every_image_displays(report, tmp_path):
    result = _open(report, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = _Imgs(result.stdout)
    source = _Imgs(report.read_text(encoding="utf-8"))
    assert source.n > 10 and dom.n == source.n
    assert dom.body.get("data-images-broken") == "0", dom.body
    assert dom.body.get("data-images-ok") == str(source.n)
    assert not _console_errors(result.stderr), _console_errors(result.stderr)

    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = OUTPUT / "report.png"
    shot.unlink(missing_ok=True)
    result = _open(report, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2000")
    assert result.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000


def test_reports_index_opens_and_links_resolve(report, tmp_path):
    index = report.parents[3] / "reports" / "index.html"
    result = _open(index, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0
    assert "untrained &lt;b&gt;" in result.stdout  # the run's name, escaped
    assert not _console_errors(result.stderr)
    shot = OUTPUT / "index.png"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    _open(index, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,600")
    assert shot.is_file()
