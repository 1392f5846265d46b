"""compress compare: three real runs side by side, the Pareto frontier checked against its definition, bad input
refused with one clear line, and the page opened in real Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from compress.cli import main
from compress.compare import FIGURE, FRONTIER_MARK, compare, labels, pareto
from compress.errors import CompressError
from compress.records import RunReport
from compress.render import fmt_bytes

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def runs(smoke_run, unpruned_run, tmp_path_factory) -> list[Path]:
    """Three real runs of the smoke config: the shared smoke run (prune 0.5, INT8), no pruning with INT8 (the shared
    unpruned run), and no pruning in FP32. They share the session's cached baseline: the last costs an export."""
    root = tmp_path_factory.mktemp("compare-runs")
    fp32 = root / "fp32.yaml"
    fp32.write_text(yaml.safe_dump({**yaml.safe_load(SMOKE.read_text()), "quantize": None}))
    assert main(["run", "--config", str(fp32), "--out", str(root / "p0_fp32"), "--quiet", "--prune", "0"]) == 0
    return [smoke_run, unpruned_run["dir"], root / "p0_fp32"]


def assert_self_contained(page: str) -> None:
    from tests.test_html import assert_self_contained as check

    check(page)


def open_in_chromium(html: Path, tmp: Path) -> dict:
    from tests.test_html import open_in_chromium as open_page

    return open_page(html, tmp)


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

    html, md, table = compare(runs, tmp_path / "cmp")

    assert table in md.read_text()
    assert html == tmp_path / "cmp" / "compare.html" and md == tmp_path / "cmp" / "compare.md"
    assert (tmp_path / "cmp" / FIGURE).read_bytes()[:4] == b"\x89PNG"
    rows = table_rows(md.read_text())
    assert len(rows) == 3
    points = [(r.deployed().metrics.top1_pct, r.deployed().metrics.latency_ms_median) for r in reports]
    for i, (row, report) in enumerate(zip(rows, reports)):
        m = report.deployed().metrics
        run, frontier, model, data, prune, int8, top1, size, _, latency, *_ = row
        assert run == runs[i].name
        assert (frontier == FRONTIER_MARK) == (not dominated(i, points))
        assert (model, data) == ("tiny_mobilenet_v3", "fashion-mnist")
        assert prune == ("0.5" if i == 0 else "none")
        assert int8 == ("no" if i == 2 else "yes")
        assert top1.startswith(f"{m.top1_pct:.2f}")
        assert size == fmt_bytes(m.size_bytes)
        assert latency == f"{m.latency_ms_median:.3f}"
    assert [r.deployed().step for r in reports] == ["quantize", "quantize", "export"]
    assert "Warning" not in md.read_text()  # same data set, same machine, same method

    page = html.read_text()
    assert_self_contained(page)
    frontier_runs = [runs[i].name for i in range(3) if not dominated(i, points)]
    assert re.findall(r'<tr class="final"><th scope="row">([^<]+)</th>', page) == frontier_runs


@pytest.mark.slow
def test_compare_page_in_chromium(runs, tmp_path):
    html, _, _ = compare(runs, tmp_path / "cmp")

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

    html, md, _ = compare([smoke_run, other], tmp_path / "cmp")

    assert "different data sets (digits, fashion-mnist)" in md.read_text()
    rows = table_rows(md.read_text())
    assert rows[0][1] == rows[1][1] == FRONTIER_MARK  # each is the frontier of its own data set
    assert "different data sets (digits, fashion-mnist)" in html.read_text()


def test_one_run_is_its_own_frontier(smoke_run, tmp_path):
    _, md, _ = compare([smoke_run], tmp_path / "cmp")
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


# ------------------------------------------------------------------------------------------------ fast, from records

def _metrics(top1: float, latency_ms: float, size: int = 1_000_000):
    from compress.records import Metrics

    return Metrics(top1_pct=top1, size_bytes=size, params=size // 4, macs=10 * size, latency_ms_median=latency_ms,
                   latency_ms_p90=latency_ms * 1.1, latency_batch=1, latency_runs=100, threads=1, throughput_ips=1000.0,
                   throughput_batch=32, energy_per_inference_j=1e-3, co2_per_inference_g=1e-4,
                   energy_method="rapl: test", runtime="onnxruntime")


def _run_folder(root: Path, name: str, *, data: str, fingerprint: str, top1: float, latency_ms: float) -> Path:
    """A finished run folder as compress writes it: report.json from the real records (baseline, export)."""
    from compress.records import RunReport, StepReport, Work

    steps = [StepReport(step=s, kind=k, stage={}, artifact=f"{s}/model", artifact_sha256="0" * 64,
                        metrics=_metrics(a, lat), work=Work(seconds=1.0, co2_g=0.01, energy_method="rapl: test"),
                        deployed=(s == "export"))
             for s, k, a, lat in (("baseline", "torch", top1 + 1, latency_ms * 2), ("export", "onnx", top1, latency_ms))]
    report = RunReport(config={"prune": None, "quantize": None}, environment={"cpu": "test CPU"},
                       dataset={"name": data, "fingerprint": fingerprint, "test_images": 100}, model="tiny_mobilenet_v3",
                       steps=steps)
    path = root / name
    path.mkdir(parents=True)
    (path / "report.json").write_text(report.to_json())
    return path


def test_the_frontier_is_computed_per_data_set(tmp_path):
    # On fashion-mnist, slow_fm is dominated by fast_fm. The digits run is more accurate and faster than slow_fm but
    # measured on other images, so it must not push slow_fm (or anything) off its frontier.
    fast_fm = _run_folder(tmp_path, "fast_fm", data="fashion-mnist", fingerprint="f" * 16, top1=85, latency_ms=1.0)
    slow_fm = _run_folder(tmp_path, "slow_fm", data="fashion-mnist", fingerprint="f" * 16, top1=84, latency_ms=2.0)
    odd_fm = _run_folder(tmp_path, "odd_fm", data="fashion-mnist", fingerprint="f" * 16, top1=90, latency_ms=3.0)
    digits = _run_folder(tmp_path, "digits", data="digits", fingerprint="d" * 16, top1=99, latency_ms=0.5)

    result = compare([fast_fm, slow_fm, odd_fm, digits], tmp_path / "cmp")

    marks = {row[0]: row[1] for row in table_rows(result.md.read_text())}
    assert marks == {"fast_fm": FRONTIER_MARK, "slow_fm": "", "odd_fm": FRONTIER_MARK, "digits": FRONTIER_MARK}
    assert "frontier of its data set" in result.table
    for name in ("compare_accuracy_latency_fashion-mnist.png", "compare_accuracy_latency_digits.png"):
        assert (tmp_path / "cmp" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"({name})" in result.md.read_text()
    assert not (tmp_path / "cmp" / FIGURE).exists()
    page = result.html.read_text()
    (img,) = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)  # the panels, stacked, inline
    heights = [Image.open(tmp_path / "cmp" / n).height for n in ("compare_accuracy_latency_fashion-mnist.png",
                                                                   "compare_accuracy_latency_digits.png")]
    assert Image.open(io.BytesIO(base64.b64decode(img))).height == sum(heights)
    assert "Panels top to bottom: fashion-mnist, digits." in page


def test_same_name_other_fingerprint_is_another_data_set(tmp_path):
    a = _run_folder(tmp_path, "a", data="fashion-mnist", fingerprint="1" * 16, top1=80, latency_ms=1.0)
    b = _run_folder(tmp_path, "b", data="fashion-mnist", fingerprint="2" * 16, top1=90, latency_ms=0.5)

    result = compare([a, b], tmp_path / "cmp")

    assert [row[1] for row in table_rows(result.md.read_text())] == [FRONTIER_MARK, FRONTIER_MARK]
    assert "different subsets or splits of fashion-mnist" in result.table


def test_the_same_run_twice_is_refused(tmp_path):
    a = _run_folder(tmp_path, "a", data="digits", fingerprint="d" * 16, top1=80, latency_ms=1.0)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "report.json").write_bytes((a / "report.json").read_bytes())

    with pytest.raises(CompressError, match="is given twice"):
        compare([a, tmp_path / "." / "a"], tmp_path / "cmp")
    with pytest.raises(CompressError, match=r"a and .*copy hold the same run \(identical report.json\)"):
        compare([a, copy], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_an_unfinished_run_says_how_to_finish_it(tmp_path):
    a = _run_folder(tmp_path, "a", data="digits", fingerprint="d" * 16, top1=80, latency_ms=1.0)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "progress.json").write_text("{}")

    with pytest.raises(CompressError) as e:
        compare([a, busy], tmp_path / "cmp")

    assert str(e.value) == (f"{busy} is an unfinished run (it has progress.json but no report.json yet): finish it "
                            f"with `compress run --out {busy} --resume`, then compare")


def test_compare_prints_the_table(tmp_path, capsys):
    a = _run_folder(tmp_path, "a", data="digits", fingerprint="d" * 16, top1=80, latency_ms=1.0)
    b = _run_folder(tmp_path, "b", data="digits", fingerprint="d" * 16, top1=70, latency_ms=2.0)

    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0

    out = capsys.readouterr().out
    rows = table_rows(out)
    assert [r[:2] for r in rows] == [["a", FRONTIER_MARK], ["b", ""]]
    assert rows[0][6] == "80.00 (-1.00 pt)" and rows[0][4] == "none" and rows[0][5] == "no"
    assert out.rstrip().endswith(f"wrote {tmp_path / 'cmp' / 'compare.html'} and {tmp_path / 'cmp' / 'compare.md'}")
