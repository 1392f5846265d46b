"""report.html: rendered from a real run's report.json, self-contained, and opened in real Chromium.

Tests on the recorded version-1 report (tests/data) are quick; those on the smoke run are slow (the fixture runs
a whole pipeline).

The browser check (tests/html_check.mjs: playwright-core from edge_demo/web/node_modules driving Debian's
/usr/bin/chromium) is not optional: without it this test fails and says how to install it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
from html import escape, unescape
from pathlib import Path

import numpy as np
import pytest

from compress import plots
from compress.errors import CompressError
from compress.html import FIGURE_NAMES, class_labels, write_html
from compress.records import RunReport
from compress.render import COLUMNS, REFERENCE_NAMES, carbon_break_even, fmt_bytes, timed_text
from tests.helpers import reloaded, report_v1

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


# ---------------------------------------------------------------------------------------------------
# Slow: the smoke run (every stage, a version-2 report with the ONNX reference)


def test_the_run_writes_report_html_and_plots(smoke_run):
    assert (smoke_run / "report.html").is_file()
    for name in FIGURE_NAMES:  # the smoke run has every step, so every figure
        data = (smoke_run / "plots" / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 600 and height >= 400, (name, width, height)


def test_report_html_shows_the_numbers_of_report_json(report, rendered):
    html = (rendered / "report.html").read_text()
    final = report.deployed()
    base, m, onnx = report.baseline.metrics, final.metrics, report.references["baseline_onnx"]

    assert f"{m.top1_pct:.2f} %" in html  # the headline card
    assert f"{m.top1_pct - base.top1_pct:+.2f} pt" in html
    assert fmt_bytes(m.size_bytes) in html
    assert f"{m.latency_ms_median:.3f} / {m.latency_ms_p90:.3f}" in html
    text = unescape(html)
    assert f"{onnx.size_bytes / m.size_bytes:.2f}× smaller vs {REFERENCE_NAMES['baseline_onnx']}" in text
    assert f"{base.size_bytes / m.size_bytes:.2f}× smaller vs {REFERENCE_NAMES['baseline_eager']}" in text
    latency = next(c for c in COLUMNS if c.key == "latency_ms_median")  # its card: timed in turns with the reference
    assert f"{timed_text(final.notes['speed_vs_reference'], latency)} vs {REFERENCE_NAMES['baseline_onnx']}" in text
    assert escape(m.energy_method) in html
    # against the FP32 ONNX export, INT8 pays back only where it runs cheaper per inference: it depends on the CPU
    be = carbon_break_even(report)["break_even_inferences"]
    assert (f"{be:,.0f}" if be is not None else "never pays back") in html
    for s in report.steps:
        assert f"<th scope=\"row\">{escape(s.step)}" in html
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
    before = np.asarray(report.baseline.confusion, float)
    after = np.asarray(report.deployed().confusion, float)
    change = 100 * (np.diag(after) / after.sum(1) - np.diag(before) / before.sum(1))
    labels = json.loads((smoke_run / "edge" / "labels.json").read_text())

    hurt = re.search(r'<ol class="hurt">(.*?)</ol>', html)
    assert hurt, "no list of hurt classes (the smoke run loses accuracy)"
    named = re.findall(r"<li><strong>(.*?)</strong> ([+-]\d+\.\d) pt", hurt.group(1))
    order = np.argsort(change, kind="stable")
    assert [n for n, _ in named] == [escape(labels[i]) for i in order[:len(named)]]
    assert [float(v) for _, v in named] == [round(change[i], 1) for i in order[:len(named)]]
    assert all(change[i] < 0 for i in order[:len(named)])


def _texts(fig) -> str:
    return " ".join(" ".join(t.get_text().split()) for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def test_energy_figure_carries_the_method_label(report):
    carbon = carbon_break_even(report)

    assert report.deployed().metrics.energy_method in _texts(plots.energy_co2(report.steps))
    texts = _texts(plots.carbon_break_even(carbon))
    assert carbon["energy_method"] in texts
    be = carbon["break_even_inferences"]  # None where INT8 costs more per inference than the FP32 export (CPU-bound)
    assert (f"pays back after {be:,.0f} inferences" if be is not None else "never pays back") in texts


def _without_energy(report: RunReport) -> RunReport:
    d = json.loads(report.to_json())
    for m in [s["metrics"] for s in d["steps"]] + list(d["references"].values()):
        m["energy_per_inference_j"] = m["co2_per_inference_g"] = m["latency_ms_p90"] = None
    for s in d["steps"]:
        s["work"]["co2_g"] = s["work"]["energy_j"] = None
    return RunReport.from_dict(d)


# ---------------------------------------------------------------------------------------------------
# Quick: the recorded version-1 report (a real run of compress 0.1; it names its classes, so no labels.json)


def test_a_version_1_report_renders_self_contained_with_its_numbers(tmp_path):
    old = report_v1()

    page = write_html(old, tmp_path)

    html = page.read_text()
    srcs = assert_self_contained(html)
    q, base = old.deployed().metrics, old.baseline.metrics
    assert len(srcs) == len(FIGURE_NAMES) and sorted(p.stem for p in (tmp_path / "plots").glob("*.png")) == sorted(
        FIGURE_NAMES)
    assert f"{q.top1_pct:.2f} %" in html and f"{q.top1_pct - base.top1_pct:+.2f} pt vs baseline" in html
    assert f"{base.size_bytes / q.size_bytes:.2f}× smaller vs {REFERENCE_NAMES['baseline_eager']}" in html
    table = unescape(re.search(r"<tbody>(.*?)</tbody>", html, re.S).group(1))
    assert REFERENCE_NAMES["baseline_onnx"] not in table  # v1 measured no ONNX reference: no such row
    assert escape(old.step("quantize").warnings[0]) in html  # v1's warning, now a typed one, is on the page
    assert f"{carbon_break_even(old)['break_even_inferences']:,.0f}" in html
    assert "None" not in re.sub(r"<img[^>]*>", "", html)


def test_missing_values_render_as_na(tmp_path):
    broken = _without_energy(report_v1())
    assert carbon_break_even(broken)["break_even_inferences"] is None

    html = write_html(broken, tmp_path).read_text()

    table = re.search(r"<tbody>(.*?)</tbody>", html, re.S).group(1)
    assert table.count(">n/a<") >= 2 * len(broken.steps)  # energy/inf and work CO2 per step
    assert table.count(" / n/a") == len(broken.steps)  # latency keeps its median, marks the missing p90
    assert "no CO₂ per-inference figure" in html
    assert "None" not in re.sub(r"<img[^>]*>", "", html)  # never a Python None leaking into the page


def test_never_pays_back_is_said_on_the_figure(tmp_path):
    worse = reloaded(report_v1())
    final = worse.deployed()
    final.metrics = dataclasses.replace(  # the deployed model costs more per inference than the baseline
        final.metrics, co2_per_inference_g=2 * worse.baseline.metrics.co2_per_inference_g)
    carbon = carbon_break_even(worse)
    assert carbon["saved_co2_g_per_inference"] < 0 and carbon["break_even_inferences"] is None

    html = write_html(worse, tmp_path).read_text()

    assert "never pays back" in html
    assert "never pays back" in _texts(plots.carbon_break_even(carbon))


def test_baseline_only_report_renders_and_drops_the_figures_it_cannot_have(tmp_path):
    write_html(report_v1(), tmp_path)  # an earlier render drew every figure
    only = reloaded(report_v1())
    only.steps = only.steps[:1]

    html = write_html(only, tmp_path).read_text()

    assert f"Baseline only: {only.baseline.metrics.top1_pct:.2f}% top-1." in html
    assert sorted(p.stem for p in (tmp_path / "plots").glob("*.png")) == sorted(
        ["accuracy_latency", "size_macs_latency", "energy_co2", "confusion_final"])


def test_labels_fall_back_to_class_indices(tmp_path):
    d = json.loads(report_v1().to_json())
    d["dataset"].pop("class_names", None)
    bare = RunReport.from_dict(d)
    assert class_labels(bare, tmp_path) == [str(i) for i in range(10)]
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "labels.json").write_text(json.dumps(["only", "two"]))  # wrong length: not trusted
    assert class_labels(bare, tmp_path)[:2] == ["0", "1"]
    (tmp_path / "edge" / "labels.json").write_text(json.dumps([f"class {i}" for i in range(10)]))
    assert class_labels(bare, tmp_path)[9] == "class 9"


def test_report_without_steps_is_a_clear_error(tmp_path):
    empty = reloaded(report_v1())
    empty.steps = []
    with pytest.raises(CompressError, match="no steps"):
        write_html(empty, tmp_path)


# ---------------------------------------------------------------------------------------------------
# In a browser


def test_report_html_in_chromium(smoke_run, tmp_path):
    page = smoke_run / "report.html"
    report = RunReport.load(smoke_run)

    facts = open_in_chromium(page, tmp_path)

    assert all(u.startswith(("file:", "data:")) for u in facts["requests"]), facts["requests"]
    assert facts["blocked"] == []
    assert facts["problems"] == []
    assert len(facts["images"]) == len(FIGURE_NAMES)
    assert all(i["complete"] and i["naturalWidth"] > 0 and i["naturalHeight"] > 0 for i in facts["images"])
    assert f"{report.deployed().metrics.top1_pct:.2f}" in facts["text"]
    assert facts["size"][0] <= 1280, "the page scrolls sideways at 1280 px"
