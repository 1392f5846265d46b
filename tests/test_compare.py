"""compress compare: three real runs side by side, the Pareto frontier checked against its definition, bad input
refused with one clear line, and the page opened in real Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from compress.cli import main
from compress.compare import FIGURE, FRONTIER_MARK, compare, labels, pareto
from compress.errors import CompressError
from compress.report import RunReport, fmt_bytes
from tests.test_report_html import assert_self_contained, open_in_chromium

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def runs(smoke_run, tmp_path_factory) -> list[Path]:
    """Three real runs of the smoke config: the shared smoke run (prune 0.5, INT8), no pruning with INT8, and no
    pruning in FP32. The last two reuse the session's cached baseline, so each costs an export (and INT8) only."""
    root = tmp_path_factory.mktemp("compare-runs")
    fp32 = root / "fp32.yaml"
    fp32.write_text(yaml.safe_dump({**yaml.safe_load(SMOKE.read_text()), "int8": False}))
    for name, config in (("p0_int8", SMOKE), ("p0_fp32", fp32)):
        assert main(["run", "--config", str(config), "--out", str(root / name), "--quiet", "--prune", "0"]) == 0
    return [smoke_run, root / "p0_int8", root / "p0_fp32"]


def table_rows(md: str) -> list[list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header, *rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    assert header[:2] == ["run", "Pareto"]
    return rows


def dominated(i: int, points: list[tuple[float, float]]) -> bool:
    a, lat = points[i]
    return any(a2 >= a and l2 <= lat and (a2, l2) != (a, lat) for a2, l2 in points)


@pytest.mark.slow
def test_compare_three_real_runs(runs, tmp_path):
    reports = [RunReport.load(r) for r in runs]

    html, md = compare(runs, tmp_path / "cmp")

    assert html == tmp_path / "cmp" / "compare.html" and md == tmp_path / "cmp" / "compare.md"
    assert (tmp_path / "cmp" / FIGURE).read_bytes()[:4] == b"\x89PNG"
    rows = table_rows(md.read_text())
    assert len(rows) == 3
    points = [(r.steps[-1].metrics["top1_pct"], r.steps[-1].metrics["latency_ms_median"]) for r in reports]
    for i, (row, report) in enumerate(zip(rows, reports)):
        m = report.steps[-1].metrics
        run, frontier, model, data, prune, int8, top1, size, _, latency, *_ = row
        assert run == runs[i].name
        assert (frontier == FRONTIER_MARK) == (not dominated(i, points))
        assert (model, data) == ("tiny_mobilenet_v3", "fashion-mnist")
        assert prune == ("0.5" if i == 0 else "none")
        assert int8 == ("no" if i == 2 else "yes")
        assert top1.startswith(f"{m['top1_pct']:.2f}")
        assert size == fmt_bytes(m["size_bytes"])
        assert latency == f"{m['latency_ms_median']:.3f}"
    assert [r.steps[-1].step for r in reports] == ["quantize", "quantize", "export"]
    assert "Warning" not in md.read_text()  # same data set, same machine, same method

    page = html.read_text()
    assert_self_contained(page)
    frontier_runs = [runs[i].name for i in range(3) if not dominated(i, points)]
    assert re.findall(r'<tr class="final"><th scope="row">([^<]+)</th>', page) == frontier_runs


@pytest.mark.slow
def test_compare_page_in_chromium(runs, tmp_path):
    html, _ = compare(runs, tmp_path / "cmp")

    facts = open_in_chromium(html, tmp_path)

    assert all(u.startswith(("file:", "data:")) for u in facts["requests"]), facts["requests"]
    assert facts["blocked"] == [] and facts["problems"] == []
    assert len(facts["images"]) == 1 and facts["images"][0]["naturalWidth"] > 0
    assert all(r.name in facts["text"] for r in runs)
    assert facts["size"][0] <= 1280, "the page scrolls sideways at 1280 px"


def test_different_data_sets_are_allowed_with_a_warning(smoke_run, tmp_path):
    other = tmp_path / "digits_run"
    other.mkdir()
    d = json.loads((smoke_run / "report.json").read_text())
    d["dataset"].update(name="digits", fingerprint="0" * 16)
    (other / "report.json").write_text(json.dumps(d))

    html, md = compare([smoke_run, other], tmp_path / "cmp")

    assert "different data sets (digits, fashion-mnist)" in md.read_text()
    assert "different data sets (digits, fashion-mnist)" in html.read_text()


def test_one_run_is_its_own_frontier(smoke_run, tmp_path):
    _, md = compare([smoke_run], tmp_path / "cmp")
    (row,) = table_rows(md.read_text())
    assert row[1] == FRONTIER_MARK


def _write(path: Path, text: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(text)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp, run: [], "at least one run folder"),
    (lambda tmp, run: [run, tmp / "missing"], "is not a folder"),
    (lambda tmp, run: [run, (tmp / "empty").mkdir() or tmp / "empty"], "report.json not found"),
    (lambda tmp, run: [run, _write(tmp / "cut", (run / "report.json").read_text()[:500])], "not a compress report"),
    (lambda tmp, run: [_write(tmp / "list", "[1, 2]")], "not a compress report"),
    (lambda tmp, run: [_write(tmp / "v0", json.dumps({"schema_version": 0}))], "schema_version 0"),
    (lambda tmp, run: [_write(tmp / "nosteps", json.dumps({**json.loads((run / "report.json").read_text()),
                                                           "steps": []}))], "has no steps"),
])
def test_bad_input_is_one_clear_error(smoke_run, tmp_path, make, message):
    with pytest.raises(CompressError, match=message) as e:
        compare(make(tmp_path, smoke_run), tmp_path / "cmp")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "cmp").exists(), "nothing is written for bad input"


def test_output_folder_that_is_a_file_is_refused(smoke_run, tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(CompressError, match="is a file"):
        compare([smoke_run], tmp_path / "out")


def test_pareto_frontier():
    # (top-1 %, latency ms): b is dominated by a (as accurate, slower); d ties c exactly, so both stay.
    points = {"a": (80.0, 1.0), "b": (80.0, 2.0), "c": (70.0, 0.5), "d": (70.0, 0.5), "e": (60.0, 0.6),
              "f": (90.0, 5.0)}
    assert dict(zip(points, pareto(list(points.values())))) == {
        "a": True, "b": False, "c": True, "d": True, "e": False, "f": True}


def test_labels_are_folder_names_made_unique(tmp_path):
    paths = [tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "solo"]
    assert labels(paths) == ["x/run", "y/run", "solo"]
