"""The run's records: a JSON round trip loses nothing, ``deployed()`` follows the typed flag, and a real
version-1 report.json (written by compress 0.1, kept in tests/data) is read, rendered and compared."""

from __future__ import annotations

import dataclasses
import json

import pytest

from compress.cli import main
from compress.errors import CompressError
from compress.records import SCHEMA_VERSION, Metrics, RunReport, StepReport, Work, chance_pct
from tests.helpers import REPORT_V1, reloaded, report_v1, run_folder_v1

V1_STEPS = ["baseline", "prune", "finetune", "export", "quantize"]


def test_a_version_1_report_is_read_as_typed_records():
    raw = json.loads(REPORT_V1.read_text())

    report = RunReport.load(REPORT_V1)

    assert raw["schema_version"] == 1 and report.schema_version == SCHEMA_VERSION == 2
    assert [s.step for s in report.steps] == V1_STEPS
    assert all(isinstance(s, StepReport) and isinstance(s.metrics, Metrics) and isinstance(s.work, Work)
               for s in report.steps)
    for old, new in zip(raw["steps"], report.steps):
        assert new.metrics.top1_pct == old["metrics"]["top1_pct"]
        assert new.metrics.size_bytes == old["metrics"]["size_bytes"]
        assert new.work.seconds == old["work"]["seconds"] and new.work.co2_g == old["work"]["co2_g"]
        assert new.confusion == old["confusion"] and new.artifact == old["artifact"]
    assert [s.metrics.runtime for s in report.steps[3:]] == ["onnxruntime", "onnxruntime"]
    assert report.baseline is report.steps[0] and report.references == {}


def test_version_1_flags_move_out_of_the_notes():
    raw = json.loads(REPORT_V1.read_text())
    int8_warnings = raw["steps"][-1]["notes"]["warnings"]

    report = report_v1()

    q = report.step("quantize")
    assert q.warnings == int8_warnings and len(q.warnings) == 1 and "slower than FP32" in q.warnings[0]
    assert "warnings" not in q.notes and q.notes["calibration_split"] == "train"  # free-form notes stay
    assert report.baseline.cache_hit is raw["steps"][0]["notes"]["cache_hit"] is False
    assert "cache_hit" not in report.baseline.notes
    # version 1 marked no step: the bundle held the last one
    assert [s.deployed for s in report.steps] == [False, False, False, False, True]
    assert report.deployed() is q and not any(s.fallback for s in report.steps)


def test_json_round_trip_loses_nothing(tmp_path):
    report = report_v1()
    report.references["baseline_onnx"] = dataclasses.replace(report.step("export").metrics, size_bytes=1_000_000)
    report.step("export").deployed, report.step("quantize").deployed = True, False
    report.step("quantize").fallback = True
    (tmp_path / "report.json").write_text(report.to_json())

    back = RunReport.load(tmp_path)

    assert back == report
    assert back.deployed().step == "export" and back.step("quantize").fallback
    assert back.references["baseline_onnx"].size_bytes == 1_000_000
    assert "carbon" in json.loads(report.to_json())  # a rendering for scripts, never read back


def test_deployed_is_the_marked_step_else_the_last():
    report = reloaded(report_v1())
    for s in report.steps:
        s.deployed = False
    assert report.deployed().step == "quantize"

    report.step("finetune").deployed = True

    assert report.deployed().step == "finetune"


def test_step_lookup_names_the_steps_there_are():
    report = report_v1()

    assert report.has_step("prune") and not report.has_step("edge_friendly")
    with pytest.raises(CompressError, match=r"the report has no 'edge_friendly' step \(steps: baseline, prune, "
                                            r"finetune, export, quantize\)"):
        report.step("edge_friendly")


def test_chance_is_the_most_common_test_class():
    report = report_v1()

    rows = [sum(r) for r in report.baseline.confusion]
    assert sum(rows) == report.dataset["test_images"] == 450
    assert chance_pct(report.baseline.confusion) == pytest.approx(100 * max(rows) / 450)
    assert chance_pct([]) is None


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=3), r"report schema_version 3 is not one this compress reads \(1, 2\)"),
    (lambda d: d.update(steps=[{"step": "baseline"}]), r"is not a compress report \(KeyError\): re-run the job"),
])
def test_unreadable_reports_are_one_clear_error(tmp_path, change, message):
    d = json.loads(REPORT_V1.read_text())
    change(d)
    (tmp_path / "report.json").write_text(json.dumps(d))

    with pytest.raises(CompressError, match=message):
        RunReport.load(tmp_path)


def test_a_missing_report_says_what_to_give(tmp_path):
    with pytest.raises(CompressError, match="report.json not found: give a run folder written by `compress run`"):
        RunReport.load(tmp_path)


def test_compress_report_renders_a_version_1_run(tmp_path, capsys):
    run = run_folder_v1(tmp_path / "old")
    before = RunReport.load(run)

    assert main(["report", str(run)]) == 0

    assert f"wrote {run / 'report.md'} and {run / 'report.html'}" in capsys.readouterr().out
    md = (run / "report.md").read_text()
    assert md.startswith("# compress run: tiny_mobilenet_v3 on digits\n")
    for step in V1_STEPS:
        assert f"| {step}" in md
    assert "36.00 (-13.33 pt)" in md and "**quantize** (deployed)" in md
    html = (run / "report.html").read_text()
    assert "tiny_mobilenet_v3 on digits" in html and "36.00 %" in html
    # the source is never rewritten: report.json stays version 1, and reads back as the same records
    assert json.loads((run / "report.json").read_text())["schema_version"] == 1
    assert RunReport.load(run) == before


def test_compress_compare_accepts_a_version_1_run(tmp_path, capsys):
    old = run_folder_v1(tmp_path / "v1")
    new = tmp_path / "v2"
    new.mkdir()
    upgraded = report_v1()
    upgraded.step("quantize").deployed, upgraded.step("export").deployed = False, True  # the FP32 model shipped
    (new / "report.json").write_text(upgraded.to_json())

    assert main(["compare", str(old), str(new), "--out", str(tmp_path / "cmp")]) == 0

    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| v")]
    assert len(rows) == 2 and "36.00 (-13.33 pt)" in rows[0] and "36.44 (-12.89 pt)" in rows[1]
    assert (tmp_path / "cmp" / "compare.html").is_file() and (tmp_path / "cmp" / "compare.md").is_file()
