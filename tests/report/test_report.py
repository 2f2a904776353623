"""The HTML report: a real tiny run (trained one epoch), its page, metrics.json section, index and bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnmel import config as config_mod
from attnmel.errors import AttnMelError
from attnmel.explain import overlay as O
from attnmel.explain.maps import ORDER_RULE
from attnmel.report import figures as F
from attnmel.report.build import build_report
from attnmel.report.index import rebuild_index

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
XSS = "<script>alert(1)</script>"


class Page(HTMLParser):
    """What the tests read from a page: images, scripts, links, table rows by data-method, text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[str] = []
        self.scripts: list[dict] = []
        self.links: list[str] = []
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.rows: dict[str, dict[str, str]] = {}
        self._row: str | None = None
        self._cell: str | None = None
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "script":
            self.scripts.append(a)
        elif tag == "link":
            self.links.append(a.get("href", ""))
        elif tag == "a":
            self.hrefs.append(a.get("href", ""))
        elif tag == "tr" and "data-method" in a:
            self._row = a["data-method"]
            self.rows[self._row] = {}
        elif tag == "td" and self._row and "data-score" in a:
            self._cell = a["data-score"]

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row and self._cell:
            self.rows[self._row][self._cell] = self.rows[self._row].get(self._cell, "") + data.strip()

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def _synthetic(request, tmp_path_factory) -> Path:
    try:
        return request.getfixturevalue("synthetic_factory")(n=96, size=64)
    except pytest.FixtureLookupError:
        from attnmel.data.synthetic import generate

        return generate(tmp_path_factory.mktemp("syn"), n=96, size=64, progress=False)


@pytest.fixture(scope="module")
def tiny_run(request, tmp_path_factory) -> Path:
    """A run trained for one epoch on 96 synthetic 64-px lesions (19 test images), with its report built."""
    from attnmel.train.run import train

    root = _synthetic(request, tmp_path_factory)
    out = tmp_path_factory.mktemp("report_runs")
    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml", [
        f"data.root={root}", f"out_dir={out / 'runs'}", "name=tiny", "data.image_size=64", "data.resize=64",
        "data.batch_size=16", "data.num_workers=0", f"data.cache_dir={out / 'cache'}", "trainer.max_epochs=1",
        "trainer.progress_bar=false", "model.width=0.25"])
    run_dir = train(cfg)
    build_report(run_dir, split="test", reports_root=out / "reports", runs_roots=(out / "runs",))
    return run_dir


def _copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("report", "logs"))
    return dest


def _patch_split(monkeypatch, change) -> None:
    """Make the readers return the test split with ``change(samples)`` applied."""
    import attnmel.data.readers as readers

    real = readers.read_split

    def read_split(dataset, root, split, *args, **kwargs):
        index = real(dataset, root, split, *args, **kwargs)
        if split == "test":
            index = dataclasses.replace(index, samples=change(list(index.samples)))
        return index

    monkeypatch.setattr(readers, "read_split", read_split)


def _check_images(report: Path, page: Page) -> None:
    assert page.imgs
    for src in page.imgs:
        assert not src.startswith(("http:", "https:", "//", "/", "data:")), src
        f = report.parent / src
        assert f.is_file(), src
        head = f.read_bytes()[:8]
        assert head == PNG_MAGIC or head.startswith(JPEG_MAGIC), src


# -- the page of a real run ---------------------------------------------------------------------------
def test_report_page_holds_tables_images_and_matches_metrics_json(tiny_run):
    report = tiny_run / "report" / "index.html"
    html = report.read_text(encoding="utf-8")
    page = Page(html)
    _check_images(report, page)
    # Self-contained: no external script, stylesheet or font; one inline script (the image check).
    assert not page.links and all("src" not in s for s in page.scripts) and len(page.scripts) == 1
    assert "http://" not in html and "https://" not in html
    m = json.loads((tiny_run / "metrics.json").read_text())
    att = m["attention"]
    assert att["available"] is True
    for method in ("attention:pool3", "attention:pool4", "gradcam", "blob"):
        assert method in page.rows, method
        for key in ("jaccard", "dice", "pointing_game", "energy_inside"):
            assert float(page.rows[method][key]) == pytest.approx(round(att["mean"][method][key], 4), abs=1e-9)
    assert "ig" not in page.rows and "cam" not in page.rows  # no --ig; attnmel has no CAM
    assert ORDER_RULE in page.all_text
    assert {"classification", "attention", "gallery", "right-outside", "gallery-best", "gallery-worst",
            "gallery-random", "attention-table"} <= page.ids
    # Classification recomputed on the split equals what evaluate wrote after training.
    auc_cell = html.split('data-key="auc"')[1].split("</tr>")[0]
    assert f"{m['classification']['auc']:.4f}" in auc_cell
    for fig in ("roc.png", "pr.png", "confusion.png", "jaccard_curve.png", "jaccard_hist.png"):
        assert f"figures/{fig}" in page.imgs
    # The rule of the "right but outside" list is stated, and its ids are in metrics.json.
    assert "energy inside <" in page.all_text
    assert isinstance(att["right_but_outside"]["image_ids"], list)


def test_metrics_json_gets_the_attention_section_with_per_image_rows(tiny_run):
    m = json.loads((tiny_run / "metrics.json").read_text())
    att = m["attention"]
    n = att["n_images"]
    assert n == m["classification"]["n_images"] == 19
    methods = set(att["mean"])
    assert methods == {"attention:pool3", "attention:pool4", "gradcam", "blob", "random"}
    assert len(att["per_image"]) == n * len(methods)
    ids = {r["image_id"] for r in att["per_image"]}
    assert len(ids) == n
    for method in methods:
        assert len(att["mean"][method]["jaccard_curve"]) == len(att["thresholds"])
    # The attention maps' Jaccard, computed here by hand from the model's own maps (the rule of ORDER_RULE:
    # bilinear to the mask's size, min-max, >= 0.5) at the run's precision; a few pixels at the threshold may
    # flip between the report's BatchNorm-folded copy and this plain model, hence the tolerance.
    import torch
    import torch.nn.functional as F

    from attnmel.train.inference import open_run

    run = open_run(tiny_run, "cpu")
    ds = run.data().dataset("test", train=False)
    x = torch.stack([ds[k]["image"] for k in range(len(ds))])
    masks = torch.stack([ds[k]["mask"] for k in range(len(ds))])[:, 0] > 0.5
    with torch.no_grad(), run.autocast():
        maps = run.model(x).maps
    ids = [str(s.image_id) for s in ds.index.samples]
    for layer in ("pool3", "pool4"):
        up = F.interpolate(maps[layer].float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
        pred = (up - lo) / (hi - lo) >= 0.5
        inter, union = (pred & masks).sum(dim=(1, 2)), (pred | masks).sum(dim=(1, 2))
        by_hand = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union, dtype=torch.float))
        rows = {r["image_id"]: r["jaccard"] for r in att["per_image"] if r["method"] == f"attention:{layer}"}
        got = np.array([rows[i] for i in ids])
        assert np.abs(got - by_hand.numpy()).mean() < 0.02, layer
        assert att["mean"][f"attention:{layer}"]["jaccard"] == pytest.approx(float(by_hand.mean()), abs=0.02)
    assert att["order_rule"] == ORDER_RULE
    t = m["report"]["timings_s"]
    assert {"inference", "attributions", "drawing", "total"} <= set(t)


def test_reports_index_lists_the_run_with_relative_links(tiny_run):
    index = tiny_run.parents[1] / "reports" / "index.html"
    page = Page(index.read_text(encoding="utf-8"))
    targets = [index.parent / h for h in page.hrefs]
    assert tiny_run / "report" / "index.html" in [t.resolve() for t in targets]
    assert all(t.exists() for t in targets)


# -- bad input ------------------------------------------------------------------------------------------
@pytest.mark.slow  # seconds each: make test stays under 2 minutes; make test-slow (CI) runs it
def test_html_in_an_image_id_is_escaped_and_ig_is_scored_like_the_rest(tiny_run, tmp_path, monkeypatch):
    run_dir = _copy_run(tiny_run, tmp_path / "xss")
    _patch_split(monkeypatch, lambda s: [dataclasses.replace(s[0], image_id=XSS), *s[1:]])
    report = build_report(run_dir, limit=6, integrated_gradients=True, reports_root=None, gallery_size=6)
    html = report.read_text(encoding="utf-8")
    assert XSS not in html and "alert(1)" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = Page(html)
    assert len(page.scripts) == 1  # only the page's own inline script
    _check_images(report, page)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert XSS in {r["image_id"] for r in m["attention"]["per_image"]}
    assert m["attention"]["n_images"] == 6  # --limit
    assert "ig" in page.rows and "ig" in m["attention"]["mean"]
    assert float(page.rows["ig"]["jaccard"]) == pytest.approx(round(m["attention"]["mean"]["ig"]["jaccard"], 4))
    # IG's completeness error is measured per image and printed (median and share within 5 %).
    q = m["attention"]["ig_completeness"]
    assert q["median"] >= 0 and 0 <= q["share_within_5_percent"] <= 1 and q["n_steps"] == 16
    assert f"median {100 * q['median']:.1f} %" in html


def test_split_without_masks_gets_a_report_that_says_why(tiny_run, tmp_path, monkeypatch):
    run_dir = _copy_run(tiny_run, tmp_path / "nomask")
    _patch_split(monkeypatch, lambda s: [dataclasses.replace(x, mask=None) for x in s])
    report = build_report(run_dir, limit=5, reports_root=None, gallery_size=3)
    page = Page(report.read_text(encoding="utf-8"))
    _check_images(report, page)
    assert "no-masks" in page.ids and "attention-table" not in page.ids
    assert "has no lesion mask" in page.all_text and "left out" in page.all_text
    assert not any("jaccard" in s for s in page.imgs)
    att = json.loads((run_dir / "metrics.json").read_text())["attention"]
    assert att["available"] is False and "no lesion mask" in att["reason"] and att["per_image"] == []


def test_mask_of_another_size_than_its_image_is_a_one_line_error(tiny_run, tmp_path, monkeypatch):
    run_dir = _copy_run(tiny_run, tmp_path / "badmask")

    def shrink(samples):
        bad = tmp_path / "bad_segmentation.png"
        Image.open(samples[0].mask).resize((40, 30)).save(bad)
        return [dataclasses.replace(samples[0], mask=bad), *samples[1:]]

    _patch_split(monkeypatch, shrink)
    with pytest.raises(AttnMelError) as e:
        build_report(run_dir, reports_root=None)
    assert "\n" not in str(e.value) and "bad_segmentation.png" in str(e.value)
    assert not (run_dir / "report" / "index.html").exists()


def test_run_without_checkpoint_is_a_one_line_error(tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path / "nockpt")
    shutil.rmtree(run_dir / "checkpoints")
    with pytest.raises(AttnMelError, match="checkpoint not found") as e:
        build_report(run_dir, reports_root=None)
    assert "\n" not in str(e.value)
    with pytest.raises(AttnMelError, match="run folder not found"):
        build_report(tmp_path / "nowhere", reports_root=None)
    with pytest.raises(AttnMelError, match="limit"):
        build_report(tiny_run, limit=0, reports_root=None)


# -- the index on fabricated runs -------------------------------------------------------------------------
def test_rebuild_index_lists_runs_and_sweeps_and_escapes_names(tmp_path):
    runs, sweeps, reports = tmp_path / "runs", tmp_path / "sweeps", tmp_path / "reports"
    good = runs / "a <b> run"
    (good / "report").mkdir(parents=True)
    (good / "report" / "index.html").write_text("<html></html>")
    (good / "config.yaml").write_text("model: {name: attnmel}\ndata: {dataset: synthetic}\n")
    (good / "metrics.json").write_text(json.dumps({
        "classification": {"auc": 0.8771, "average_precision": 0.6541},
        "attention": {"mean": {"attention:pool3": {"jaccard": 0.3105}, "attention:pool4": {"jaccard": 0.3186}}}}))
    broken = runs / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    (broken / "checkpoints").mkdir()
    arm = sweeps / "regularisers" / "lesion" / "seed0"
    arm.mkdir(parents=True)
    (arm / "metrics.json").write_text(json.dumps({"classification": {"auc": 0.5}}))
    (sweeps / "regularisers" / "summary.html").write_text("<html></html>")
    path = rebuild_index(reports, (runs, sweeps, tmp_path / "absent"))
    html = path.read_text(encoding="utf-8")
    assert "a <b> run" not in html and "a &lt;b&gt; run" in html
    page = Page(html)
    assert all((reports / h.replace("%20", " ").replace("%3C", "<").replace("%3E", ">")).exists()
               for h in page.hrefs), page.hrefs
    assert any(h.endswith("summary.html") for h in page.hrefs)
    text = page.all_text
    for v in ("0.877", "0.654", "0.310", "0.319", "sweeps/regularisers/lesion/seed0", "metrics.json unreadable"):
        assert v in text, v


# -- pieces ---------------------------------------------------------------------------------------------
def test_overlay_panel_draws_truth_contour_and_map(tmp_path):
    img = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 20:40] = 1.0
    panel = O.overlay_panel(img, heat, mask)
    s = O.display_scale(64)
    assert panel.shape == (64 * s, 64 * s, 3) and s * 64 >= O.MIN_PANEL_SIDE
    green = np.all(panel == O.TRUTH_RGB, axis=-1)
    assert green.any() and not green[: 15 * s].any()  # the contour hugs the square, not the top rows
    assert np.all(panel == O.REGION_RGB, axis=-1).any()
    # The heat is blended at HEAT_ALPHA: a pixel at heat 1 (jet's dark red) away from every contour.
    red = O.heat_rgb(np.ones((1, 1)))[0, 0]
    np.testing.assert_allclose(panel[30 * s, 30 * s], np.rint(0.5 * 128 + 0.5 * red), atol=1)
    p = O.write_panel(tmp_path / "p.png", panel)
    assert p.read_bytes()[:8] == PNG_MAGIC
    # Curves on fabricated numbers, and the single-class case that has none.
    F.roc_figure({"fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1]}, tmp_path / "roc.png", 0.7)
    F.pr_figure(None, tmp_path / "pr.png", reason="y_true holds a single class")
    F.jaccard_curve_figure([0.25, 0.5, 0.75], {"blob": [0.5, 0.4, 0.2]}, {}, tmp_path / "jc.png")
    assert all((tmp_path / f).read_bytes()[:8] == PNG_MAGIC for f in ("roc.png", "pr.png", "jc.png"))


def test_page_says_what_the_maps_explain_and_documents_the_colours(tiny_run):
    report = tiny_run / "report" / "index.html"
    page = Page(report.read_text(encoding="utf-8"))
    assert "explain the predicted class" in page.all_text
    assert "50% opacity" in page.all_text and "jet colour map" in page.all_text
    assert "figures/colourbar.png" in page.imgs
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert m["attention"]["target"] == "predicted"


@pytest.mark.slow  # seconds each: make test stays under 2 minutes; make test-slow (CI) runs it
def test_a_report_that_fails_half_way_leaves_the_previous_one_whole(tiny_run, tmp_path, monkeypatch):
    import attnmel.report.build as B

    run_dir = tmp_path / "killed"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("logs"))
    report = run_dir / "report"
    before = {p.relative_to(report): p.read_bytes() for p in report.rglob("*") if p.is_file()}
    assert (report / "index.html") in [report / k for k in before] and len(before) > 10
    real = B._draw_case
    drawn = []

    def draw_then_die(*args, **kwargs):
        if len(drawn) == 3:  # some panels of the new build are on disk by now
            raise KeyboardInterrupt
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(B, "_draw_case", draw_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_report(run_dir, limit=12, reports_root=None)
    after = {p.relative_to(report): p.read_bytes() for p in report.rglob("*") if p.is_file()}
    assert after == before  # the same files, byte for byte: no figure of the killed build
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".report")]  # its temporary folder is gone
    # A build that finishes replaces the report whole: no file of the old one is left.
    monkeypatch.setattr(B, "_draw_case", real)
    build_report(run_dir, limit=4, reports_root=None, gallery_size=2)
    new = {p.relative_to(report) for p in report.rglob("*") if p.is_file()}
    assert "--limit 4" in (report / "index.html").read_text(encoding="utf-8")
    assert len(new) < len(before) and not any(n.name.startswith("case00012") for n in new)
