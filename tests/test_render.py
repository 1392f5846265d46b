"""The one rendering layer, on a real run's records (the recorded version-1 report) with a known reference: units,
ratios that name what they compare with, the headline, the Markdown table and the carbon break-even."""

from __future__ import annotations

import dataclasses

import pytest

from compress.records import RunReport
from compress.render import (COLUMNS, REFERENCE_NAMES, TABLE_HEADERS, carbon_break_even, carbon_sentence, cell, fmt,
                             fmt_bytes, fmt_co2, fmt_count, fmt_energy, headline, markdown_table, ratio, ratio_text,
                             reference_for, step_cells, table_rows)
from tests.helpers import reloaded, report_v1

COL = {c.key: c for c in COLUMNS}


@pytest.fixture
def report() -> RunReport:
    """The v1 run, with the baseline's FP32 ONNX export measured as a version-2 run measures it (round numbers)."""
    r = reloaded(report_v1())
    r.references["baseline_onnx"] = dataclasses.replace(
        r.step("export").metrics, top1_pct=49.0, size_bytes=1_000_000, params=250_000, macs=1_000_000,
        latency_ms_median=0.25, latency_ms_p90=0.3, throughput_ips=4000.0, energy_per_inference_j=2e-3,
        co2_per_inference_g=2e-6)
    return r


@pytest.mark.parametrize("fn, value, text", [
    (fmt_bytes, 999, "999 B"), (fmt_bytes, 1500, "1.50 KB"), (fmt_bytes, 2_500_000, "2.50 MB"),
    (fmt_bytes, 3e12, "3000.00 GB"), (fmt_count, 999, "999"), (fmt_count, 307_568, "307.57k"),
    (fmt_count, 5.5e9, "5.50G"), (fmt_energy, 2.0, "2.00 J"), (fmt_energy, 0.0123, "12.30 mJ"),
    (fmt_energy, 5e-6, "5.00 µJ"), (fmt_energy, None, "n/a"), (fmt_co2, 0.0264, "26.4 mg"), (fmt_co2, 1.5, "1.5 g"),
    (fmt_co2, 9.2e-7, "0.92 µg"), (fmt_co2, None, "n/a"),
])
def test_each_unit_has_one_house_format(fn, value, text):
    assert fn(value) == text


def test_missing_values_are_na_never_zero(report):
    m = dataclasses.replace(report.baseline.metrics, latency_ms_p90=None, throughput_ips=None)

    assert fmt(None, "bytes") == fmt(None, "pct") == "n/a"
    assert cell(m, COL["latency_ms_median"]) == f"{m.latency_ms_median:.3f} / n/a"
    assert cell(m, COL["throughput_ips"]) == "n/a"
    assert ratio(None, 1.0, COL["size_bytes"]) is None and ratio(1.0, 0, COL["size_bytes"]) is None
    assert ratio_text(None, COL["size_bytes"]) == ""


def test_ratios_say_better_or_worse_in_the_column_s_words():
    assert ratio_text(ratio(250, 1000, COL["size_bytes"]), COL["size_bytes"]) == "4.00× smaller"
    assert ratio_text(ratio(2.0, 1.0, COL["latency_ms_median"]), COL["latency_ms_median"]) == "2.00× slower"
    assert ratio_text(ratio(300, 100, COL["throughput_ips"]), COL["throughput_ips"]) == "3.00× faster"


def test_onnx_steps_compare_with_the_onnx_reference_and_torch_steps_with_eager(report):
    ref, base = report.references["baseline_onnx"], report.baseline.metrics
    q, ft = report.step("quantize"), report.step("finetune")

    assert reference_for(report, report.baseline) is None
    assert reference_for(report, q) == ("baseline_onnx", ref)
    assert reference_for(report, ft) == ("baseline_eager", base)
    cells = dict(zip([c.key for c in COLUMNS], step_cells(report, q)))
    assert cells["top1_pct"].delta == f"{q.metrics.top1_pct - base.top1_pct:+.2f} pt" == "-13.33 pt"
    assert cells["top1_pct"].tone == "bad"
    assert cells["size_bytes"].delta == f"{1_000_000 / q.metrics.size_bytes:.2f}× smaller" == "5.09× smaller"
    assert cells["latency_ms_median"].delta == f"{0.25 / q.metrics.latency_ms_median:.2f}× faster"
    ft_cells = dict(zip([c.key for c in COLUMNS], step_cells(report, ft)))
    assert ft_cells["size_bytes"].delta == f"{base.size_bytes / ft.metrics.size_bytes:.2f}× smaller"
    assert all(c.delta == "" for c in step_cells(report, report.baseline))


def test_without_an_onnx_reference_onnx_steps_fall_back_to_eager(report):
    report.references.clear()

    assert reference_for(report, report.step("export")) == ("baseline_eager", report.baseline.metrics)


def test_the_markdown_table_is_complete(report):
    rows = table_rows(report)

    table = markdown_table(TABLE_HEADERS, rows)

    lines = table.splitlines()
    assert len(lines) == 2 + len(report.steps) + 1  # header, rule, one row per step, the reference row
    assert all(line.count(" | ") == len(TABLE_HEADERS) - 1 for line in lines[2:])
    assert [r[0] for r in rows] == ["baseline", "prune", "finetune", "export", "quantize (deployed)",
                                    f"reference: {REFERENCE_NAMES['baseline_onnx']}"]
    assert all(c.strip() for r in rows[:-1] for c in r)  # no empty cell: missing values say n/a
    assert rows[-1][1] == "49.00" and rows[-1][2] == "1.00 MB"
    assert rows[0][-2] == "26.0 s" and rows[4][1] == "36.00 (-13.33 pt)"
    assert markdown_table(["a", "b"], [["x|y", "1"]]).splitlines()[-1] == "| x\\|y | 1 |"


def test_headline_names_the_deployed_step_and_both_references(report):
    q = report.step("quantize").metrics
    report.step("quantize").warnings.clear()

    line = headline(report)

    assert line == (f"**quantize** (deployed): 36.00% top-1 (-13.33 pt vs the baseline), "
                    f"{1_000_000 / q.size_bytes:.2f}× smaller and {0.25 / q.latency_ms_median:.2f}× faster "
                    "at batch 1 "
                    f"than the baseline's FP32 ONNX export; "
                    f"{report.baseline.metrics.latency_ms_median / q.latency_ms_median:.2f}× faster than the baseline "
                    "in PyTorch eager.")


def test_headline_quotes_the_ratio_timed_in_turns_when_there_is_one(report):
    report.step("quantize").notes["speed_vs_reference"] = {"speedup": 2.0, "speedup_low": 1.8, "speedup_high": 2.25}

    assert ("× smaller and 2.00× faster at batch 1 (95% interval 1.80–2.25×, timed in turns) than the baseline's "
            "FP32 ONNX export;") in headline(report)


def test_headline_says_when_int8_was_made_but_not_deployed(report):
    report.step("quantize").deployed, report.step("quantize").fallback = False, True
    report.step("export").deployed = True

    line = headline(report)

    assert line.startswith("**export** (deployed): 36.44% top-1 (-12.89 pt vs the baseline)")
    assert line.endswith("quantize was made but not deployed: it ran slower than export on this CPU.")


def test_headline_of_a_baseline_only_run(report):
    report.steps = report.steps[:1]

    assert headline(report) == "Baseline only: 49.33% top-1."
    assert carbon_break_even(report) == {}


def test_carbon_break_even_against_the_deployed_step_and_both_references(report):
    spent = sum(s.work.co2_g for s in report.steps[1:])
    eager_co2 = report.baseline.metrics.co2_per_inference_g

    for deployed in ("quantize", "export"):
        for s in report.steps:
            s.deployed = s.step == deployed
        final = report.step(deployed).metrics.co2_per_inference_g

        c = carbon_break_even(report)

        assert c["deployed_step"] == deployed and c["compression_co2_g"] == pytest.approx(spent)
        assert c["baseline_training_co2_g"] == report.baseline.work.co2_g  # reported apart, not in compression
        onnx, eager = c["against"]["baseline_onnx"], c["against"]["baseline_eager"]
        assert onnx["reference"] == REFERENCE_NAMES["baseline_onnx"]
        assert onnx["saved_co2_g_per_inference"] == pytest.approx(2e-6 - final)
        assert onnx["break_even_inferences"] == pytest.approx(spent / (2e-6 - final))
        assert eager["break_even_inferences"] == pytest.approx(spent / (eager_co2 - final))
        assert c["break_even_inferences"] == onnx["break_even_inferences"]  # the fair reference comes first
        assert c["co2_per_inference_g_final"] == final


def test_a_model_that_costs_more_per_inference_never_pays_back(report):
    report.references["baseline_onnx"] = dataclasses.replace(report.references["baseline_onnx"],
                                                             co2_per_inference_g=1e-7)  # below the INT8 model's

    c = carbon_break_even(report)

    assert c["against"]["baseline_onnx"]["saved_co2_g_per_inference"] < 0
    assert c["break_even_inferences"] is None and c["against"]["baseline_eager"]["break_even_inferences"] > 0
    sentence = carbon_sentence(report)
    never = f"Against {REFERENCE_NAMES['baseline_onnx']}, it saves no CO2 per inference, so it never pays back"
    assert never in sentence
    assert f"Against {REFERENCE_NAMES['baseline_eager']}, the deployed model pays for itself after " in sentence


def test_a_cached_baseline_reports_its_original_training(report):
    report.baseline.cache_hit = True
    report.baseline.notes["original_training"] = {"co2_g": 0.5}

    assert carbon_break_even(report)["baseline_training_co2_g"] == 0.5
    assert table_rows(report)[0][-2] == "cached"


def test_the_mixed_precision_sentence_names_both_calibrations_when_minmax_lost_held_out_images(report):
    from compress.render import mixed_precision

    record = {"budget_pt": 1.0, "held_out_images": 316, "fp32_top1_pct": 99.68, "plain_int8_top1_pct": 97.15,
              "int8_top1_pct": 99.05, "worst_nodes": [{"node": "Mul_12", "op": "Mul", "sqnr_db": -3.6, "harm_db": 21.4}],
              "attempts": [{"harmful_nodes": 1, "kept_fp32": 2, "top1_pct": 99.05, "drop_pt": 0.63}],
              "kept_fp32": ["Mul_12", "Conv_13"], "outcome": "the 1 most harmful node(s) and their readers (2 nodes) "
                                                             "kept in FP32: INT8 within the budget on held-out images",
              "calibration": {"held_out_images": 316, "fp32_top1_pct": 99.68, "minmax_top1_pct": 81.33,
                              "percentile_top1_pct": 97.15, "chosen": "percentile",
                              "outcome": "more held-out images right, so the INT8 model uses them"}}
    report.step("quantize").notes["mixed_precision"] = record

    text, rows = mixed_precision(report)

    assert ("plain INT8 97.15%, shipped INT8 99.05%. INT8 from minmax ranges got 81.33% there, from percentile "
            "ranges 97.15%: more held-out images right, so the INT8 model uses them. Tried: 2 node(s) FP32 → "
            "+0.63 pt. The 1 most harmful") in text
    assert rows == [["Mul_12", "Mul", "-3.6", "21.40", "yes"]]
    del record["calibration"]
    assert "minmax" not in mixed_precision(report)[0]
