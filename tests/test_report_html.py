"""report.html: rendered from a real run's report.json, self-contained, and opened in real Chromium.

The browser check (tests/html_check.mjs: playwright-core from edge_demo/web/node_modules driving Debian's
/usr/bin/chromium) is not optional: without it this test fails and says how to install it.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
from html import escape
from pathlib import Path

import numpy as np
import pytest

from compress import plots
from compress.errors import CompressError
from compress.html import FIGURE_NAMES, class_labels, write_html
from compress.report import RunReport, fmt_bytes

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "tests" / "html_check.mjs"
CHROMIUM = Path("/usr/bin/chromium")
PLAYWRIGHT = REPO / "edge_demo" / "web" / "node_modules" / "playwright-core"
INSTALL_HINT = "run ./install.sh (it installs Debian's chromium and runs `npm ci --prefix edge_demo/web`)"


def open_in_chromium(page: Path, tmp: Path) -> dict:
    """Open ``page`` from disk in headless Chromium; returns what tests/html_check.mjs recorded.

    Saves a full-page screenshot next to the facts, and copies it to $COMPRESS_SCREENSHOT_DIR when that is set.
    """
    if shutil.which("node") is None:
        pytest.fail(f"node is not installed: {INSTALL_HINT}")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: {INSTALL_HINT}")
    if not PLAYWRIGHT.is_dir():
        pytest.fail(f"playwright-core is missing from {PLAYWRIGHT.parent}: {INSTALL_HINT}")
    shot, out = tmp / f"{page.stem}.png", tmp / f"{page.stem}.json"
    job = tmp / f"{page.stem}.job.json"
    job.write_text(json.dumps({"chromium": str(CHROMIUM), "profileDir": str(tmp / "profile"), "page": str(page),
                               "screenshot": str(shot), "out": str(out)}))
    proc = subprocess.run(["node", str(CHECK), str(job)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"html_check.mjs failed:\n{proc.stderr[-3000:]}"
    assert shot.stat().st_size > 10_000, "the screenshot is (nearly) empty"
    if os.environ.get("COMPRESS_SCREENSHOT_DIR"):
        dest = Path(os.environ["COMPRESS_SCREENSHOT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest / f"{page.stem}.png")
    return json.loads(out.read_text())


def assert_self_contained(html: str) -> list[str]:
    """Every image is a data: URI and nothing else refers outside the file; returns the image sources."""
    srcs = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", html)
    assert srcs, "no images on the page"
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    assert not re.search(r"\b(?:href|src|action|poster)=\"(?!data:)", html), "a reference outside the file"
    for banned in ("<script", "<link", "<iframe", "@import", "url(", "http://", "https://"):
        assert banned not in html, f"{banned!r} in a self-contained page"
    return srcs


def _render_copy(report: RunReport, run_dir: Path, out: Path) -> Path:
    """Render ``report`` into ``out`` with the run's labels.json, as `compress report` would in place."""
    (out / "edge").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "edge" / "labels.json", out / "edge" / "labels.json")
    return write_html(report, out)


@pytest.fixture(scope="module")
def report(smoke_run) -> RunReport:
    return RunReport.load(smoke_run)


@pytest.fixture(scope="module")
def rendered(report, smoke_run, tmp_path_factory) -> Path:
    """The smoke run's report rendered afresh into a folder of its own; returns that folder."""
    out = tmp_path_factory.mktemp("rendered")
    _render_copy(report, smoke_run, out)
    return out


def test_the_run_writes_report_html_and_plots(smoke_run):
    assert (smoke_run / "report.html").is_file()
    for name in FIGURE_NAMES:  # the smoke run has every step, so every figure
        data = (smoke_run / "plots" / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 600 and height >= 400, (name, width, height)


def test_report_html_shows_the_numbers_of_report_json(report, rendered):
    html = (rendered / "report.html").read_text()
    base, final = report.steps[0].metrics, report.steps[-1].metrics

    assert f"{final['top1_pct']:.2f} %" in html  # the headline card
    assert f"{final['top1_pct'] - base['top1_pct']:+.2f} pt" in html
    assert fmt_bytes(final["size_bytes"]) in html
    assert f"{final['latency_ms_median']:.3f} / {final['latency_ms_p90']:.3f}" in html
    assert f"{base['size_bytes'] / final['size_bytes']:.2f}× smaller" in html
    assert escape(final["energy_method"]) in html
    be = report.carbon["break_even_inferences"]
    assert be is not None and f"{be:,.0f}" in html
    for s in report.steps:
        assert f"<th scope=\"row\">{s.step}<" in html
    assert f"{report.dataset['test_images']:,} images" in html  # how measured: the accuracy split
    assert report.environment["cpu"] in html and f"torch {report.environment['versions']['torch']}" in html


def test_report_html_embeds_exactly_the_png_files(rendered):
    srcs = assert_self_contained((rendered / "report.html").read_text())

    files = {p.name: p.read_bytes() for p in sorted((rendered / "plots").glob("*.png"))}
    assert sorted(files) == sorted(f"{n}.png" for n in FIGURE_NAMES)
    embedded = [base64.b64decode(s.split(",", 1)[1]) for s in srcs]
    assert sorted(embedded) == sorted(files.values())


def test_classes_hurt_most_are_named(report, smoke_run, rendered):
    html = (rendered / "report.html").read_text()
    before = np.asarray(report.steps[0].confusion, float)
    after = np.asarray(report.steps[-1].confusion, float)
    change = 100 * (np.diag(after) / after.sum(1) - np.diag(before) / before.sum(1))
    labels = json.loads((smoke_run / "edge" / "labels.json").read_text())

    hurt = re.search(r'<ol class="hurt">(.*?)</ol>', html)
    assert hurt, "no list of hurt classes (the smoke run loses accuracy)"
    named = re.findall(r"<li><strong>(.*?)</strong> ([+-]\d+\.\d) pt", hurt.group(1))
    order = np.argsort(change, kind="stable")
    assert [n for n, _ in named] == [escape(labels[i]) for i in order[:len(named)]]
    assert [float(v) for _, v in named] == [round(change[i], 1) for i in order[:len(named)]]
    assert all(change[i] < 0 for i in order[:len(named)])


def test_energy_figure_carries_the_method_label(report):
    fig = plots.energy_co2(report.steps)
    texts = " ".join(" ".join(t.get_text().split()) for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert report.steps[-1].metrics["energy_method"] in texts
    fig = plots.carbon_break_even(report.carbon)
    texts = " ".join(" ".join(t.get_text().split()) for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert report.carbon["energy_method"] in texts
    assert f"pays back after {report.carbon['break_even_inferences']:,.0f} inferences" in texts


def test_missing_values_render_as_na(report, smoke_run, tmp_path):
    d = json.loads(report.to_json())
    for s in d["steps"]:
        s["metrics"]["energy_per_inference_j"] = s["metrics"]["co2_per_inference_g"] = None
        s["work"]["co2_g"] = s["work"]["energy_j"] = None
        s["metrics"]["latency_ms_p90"] = None
    broken = RunReport.from_dict(d)
    broken.finish()  # recompute the carbon record from the now-missing figures
    assert broken.carbon["break_even_inferences"] is None

    html = _render_copy(broken, smoke_run, tmp_path).read_text()
    table = re.search(r"<tbody>(.*?)</tbody>", html).group(1)
    assert table.count(">n/a<") >= 2 * len(broken.steps)  # energy/inf and work CO2 per step
    assert table.count(" / n/a") == len(broken.steps)  # latency keeps its median, marks the missing p90
    assert "no CO₂ per-inference figure" in html
    assert "None" not in re.sub(r"<img[^>]*>", "", html)  # never a Python None leaking into the page


def test_never_pays_back_is_said_on_the_figure(report, smoke_run, tmp_path):
    d = json.loads(report.to_json())
    base = d["steps"][0]["metrics"]
    d["steps"][-1]["metrics"]["co2_per_inference_g"] = base["co2_per_inference_g"] * 2  # the final model costs more
    worse = RunReport.from_dict(d)
    worse.finish()
    assert worse.carbon["saved_co2_g_per_inference"] < 0 and worse.carbon["break_even_inferences"] is None

    html = _render_copy(worse, smoke_run, tmp_path).read_text()
    assert "never pays back" in html
    fig = plots.carbon_break_even(worse.carbon)
    texts = " ".join(" ".join(t.get_text().split()) for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "never pays back" in texts


def test_baseline_only_report_renders(report, smoke_run, tmp_path):
    d = json.loads(report.to_json())
    d["steps"] = d["steps"][:1]
    only = RunReport.from_dict(d)
    only.finish()

    html = _render_copy(only, smoke_run, tmp_path).read_text()
    assert f"Baseline only: {only.steps[0].metrics['top1_pct']:.2f}% top-1." in html
    assert sorted(p.stem for p in (tmp_path / "plots").glob("*.png")) == sorted(
        ["accuracy_latency", "size_macs_latency", "energy_co2", "confusion_final"])


def test_labels_fall_back_to_class_indices(report, tmp_path):
    d = json.loads(report.to_json())
    d["dataset"].pop("class_names", None)
    bare = RunReport.from_dict(d)
    assert class_labels(bare, tmp_path) == [str(i) for i in range(len(report.steps[-1].confusion))]
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "labels.json").write_text(json.dumps(["only", "two"]))  # wrong length: not trusted
    assert class_labels(bare, tmp_path)[:2] == ["0", "1"]


def test_report_without_steps_is_a_clear_error(report, tmp_path):
    empty = copy.copy(report)
    empty.steps = []
    with pytest.raises(CompressError, match="no steps"):
        write_html(empty, tmp_path)


def test_report_html_in_chromium(smoke_run, tmp_path):
    page = smoke_run / "report.html"
    report = RunReport.load(smoke_run)

    facts = open_in_chromium(page, tmp_path)

    assert all(u.startswith(("file:", "data:")) for u in facts["requests"]), facts["requests"]
    assert facts["blocked"] == []
    assert facts["problems"] == []
    assert len(facts["images"]) == len(FIGURE_NAMES)
    assert all(i["complete"] and i["naturalWidth"] > 0 and i["naturalHeight"] > 0 for i in facts["images"])
    assert f"{report.steps[-1].metrics['top1_pct']:.2f}" in facts["text"]
    assert facts["size"][0] <= 1280, "the page scrolls sideways at 1280 px"
