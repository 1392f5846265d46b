"""compress sweep: a real 4-trial Ray Tune sweep on local Ray (this machine's 2 CPUs), one trial failing once and
retried into its resumed run folder, a second sweep through the CLI that reuses every finished trial, and the
report's frontier and recommendation checked against their definitions; plus the grid, the flags and the errors.

Nothing is mocked: the trials are real runs (tiny MobileNetV3 on digits, one epoch each), and the failure is the
documented test hook ``COMPRESS_SWEEP_FAIL_ONCE``, which makes a trial's first attempt raise after its first step.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compress.config import dump_yaml, resolve
from compress.errors import CompressError
from compress.sweep import INSTALL, TRIAL_MEASURE, add_parser, grid_from_args, main, plan, run_sweep
from compress.sweep_report import SAME_SPEED, pareto, recommend
from tests.helpers import SWEEP_FLAKY as FLAKY, SWEEP_GRID as GRID, SWEEP_RUNS as RUNS  # conftest.py's `swept`

NAMES = ["tiny_mobilenet_v3_prune0_fp32", "tiny_mobilenet_v3_prune0_int8-minmax", "tiny_mobilenet_v3_prune0.5_fp32",
         "tiny_mobilenet_v3_prune0.5_int8-minmax"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="compress")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sweep", *argv])


# ------------------------------------------------------------------------------------------------ the grid

def test_the_grid_is_every_combination_with_readable_names(tmp_path):
    trials = plan(GRID, tmp_path)

    assert [t.name for t in trials] == NAMES
    assert all(t.run_dir == tmp_path / "trials" / t.name for t in trials)
    by_name = {t.name: t.cfg for t in trials}
    assert by_name[NAMES[0]].prune is None and by_name[NAMES[0]].quantize is None
    assert by_name[NAMES[0]].finetune is None  # nothing to recover without pruning
    assert by_name[NAMES[3]].prune.ratio == 0.5 and by_name[NAMES[3]].quantize.calibration_size == 256
    assert by_name[NAMES[3]].quantize.speed_check_runs == 0  # the sweep re-measures; no speed check inside a trial
    assert by_name[NAMES[3]].measure.min_runs == 20  # the base config's measure keys win ...
    assert by_name[NAMES[3]].measure.eval_batch == 500  # ... and the rest keeps its default
    assert by_name[NAMES[3]].train_threads == 0  # threads are set per trial, never written into the config


def test_calibrations_are_int8_options_and_duplicates_collapse(tmp_path):
    grid = {"model": "tiny_mobilenet_v3", "data": "digits",
            "sweep": {"int8": [True, "minmax", "entropy"], "edge_friendly": [False, True]}}

    trials = plan(grid, tmp_path)

    assert [t.name for t in trials] == [
        "tiny_mobilenet_v3_prune0_int8-minmax", "tiny_mobilenet_v3_prune0_int8-minmax_edge",
        "tiny_mobilenet_v3_prune0_int8-entropy", "tiny_mobilenet_v3_prune0_int8-entropy_edge"]
    assert trials[2].cfg.quantize.calibration == "entropy" and trials[1].cfg.edge_friendly is not None
    assert trials[0].cfg.measure.min_runs == TRIAL_MEASURE["min_runs"]  # no measure in the base: short


def test_flags_translate_into_the_grid(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"data": "digits", "seed": 3, "sweep": {"prune": [0.25], "int8": [True]}}))

    grid = grid_from_args(parse(["tiny_mobilenet_v3", "mobilenet_v3", "--config", str(config), "--prune", "0",
                                 "0.5", "--edge-friendly", "--epochs", "2", "--finetune-epochs", "1"]))
    both = grid_from_args(parse(["tiny_mobilenet_v3", "--int8", "both"]))
    calibrations = grid_from_args(parse(["tiny_mobilenet_v3", "--int8", "off", "entropy", "percentile"]))

    assert grid == {"data": "digits", "seed": 3, "train": {"epochs": 2}, "finetune": {"epochs": 1},
                    "sweep": {"prune": [0.0, 0.5], "int8": [True], "model": ["tiny_mobilenet_v3", "mobilenet_v3"],
                              "edge_friendly": [True]}}
    assert both["sweep"]["int8"] == [False, True]
    assert calibrations["sweep"]["int8"] == [False, "entropy", "percentile"]
    assert len(plan(grid, tmp_path)) == 2 * 2 * 1 * 1


@pytest.mark.parametrize("sweep, expected", [
    ({"prun": [0, 0.5]}, "unknown key sweep.prun: valid keys in sweep are model, prune, int8, edge_friendly"),
    ({"int8": ["fast"]}, "sweep.int8 values are false, true or a calibration (minmax, entropy, percentile), got "
                         "'fast'"),
    ({"prune": [1.5]}, "prune.ratio"),
    ({"model": []}, "sweep.model is empty: give at least one value"),
])
def test_a_bad_grid_is_one_line_naming_the_file_before_any_work(sweep, expected, tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"model": "tiny_mobilenet_v3", "data": "digits", "sweep": sweep}))

    code = main(["--config", str(config), "--out", str(tmp_path / "out"), "--quiet"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"compress: error: {config}: ") and expected in err[0]
    assert not (tmp_path / "out").exists()


def test_a_trial_folder_holding_another_config_is_refused_before_any_work(tmp_path):
    trial = plan(GRID, tmp_path)[0]
    trial.run_dir.mkdir(parents=True)
    other = dataclasses.replace(trial.cfg, train=dataclasses.replace(trial.cfg.train, epochs=3))
    (trial.run_dir / "config.yaml").write_text(dump_yaml(other))
    (trial.run_dir / "report.json").write_text("{}")

    with pytest.raises(CompressError, match=r"holds a finished run with another config \(train.epochs 3 there, 1 "
                                            r"now\): choose another --out for this grid, or delete that trial folder"):
        run_sweep(GRID, tmp_path)
    assert not (tmp_path / "ray").exists()  # Ray never started


def test_without_ray_the_sweep_says_in_one_line_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None  # as if the extra were not installed\n"
            "from compress.sweep import main\n"
            f"sys.exit(main(['tiny_mobilenet_v3', '--data', 'digits', '--out', {str(tmp_path / 'out')!r}]))")

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"compress: error: compress sweep runs trials with Ray Tune, which is not installed: {INSTALL}"]


def test_the_main_job_never_imports_ray():
    code = ("import sys, compress, compress.cli, compress.pipeline, compress.sweep, compress.sweep_report\n"
            "print('ray' in sys.modules)")

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert out.strip() == "False"


def test_help_ends_with_an_example(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])

    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("example"))
    assert lines[start + 1].strip().startswith("compress sweep tiny_mobilenet_v3 ")


# ------------------------------------------------------------------------------------------------ frontier, rule

def test_pareto_counts_accuracy_latency_and_size():
    points = [(90.0, 2.0, 100), (89.0, 1.0, 100), (89.0, 1.0, 50), (88.0, 3.0, 200), (90.0, 2.0, 100)]

    assert pareto(points) == [True, False, True, False, True]  # equal points are both on it


def row(name, top1, base, ms, size):
    return {"name": name, "top1_pct": top1, "baseline_top1_pct": base, "latency_ms_median": ms, "size_bytes": size}


def test_the_recommendation_is_the_fastest_inside_the_budget_and_the_smallest_of_equally_fast():
    rows = [row("base", 90.0, 90.0, 2.0, 1000), row("fast_bad", 80.0, 90.0, 0.5, 100),
            row("fast", 89.2, 90.0, 1.0, 400), row("fast_small", 89.15, 90.0, 1.0 * (1 + SAME_SPEED / 2), 200),
            row("other_model", 90.05, 90.1, 3.0, 2000), {"name": "failed", "status": "failed"}]
    done = rows[:-1]

    name, why = recommend(rows, 1.0)  # best baseline 90.1 (other_model's): at least 89.1 top-1
    strict, _ = recommend(rows, 0.08)  # at least 90.02: only other_model
    none, why_none = recommend(rows[1:2], 1.0)

    assert name == "fast_small"  # as fast as "fast" within noise, half the size; fast_bad is outside the budget
    assert why.startswith("fast_small: 89.15% top-1 (at least 89.10%: the best baseline's 90.10% minus 1 point)")
    assert pareto([(r["top1_pct"], r["latency_ms_median"], r["size_bytes"]) for r in done])[3]
    assert strict == "other_model"
    assert none is None and why_none.startswith("no trial reaches 89.00% top-1")


# ------------------------------------------------------------------------------------------------ a real sweep

@pytest.mark.slow
def test_every_trial_is_an_ordinary_run_folder_that_replays(swept):
    sweep_dir, summary = swept["dir"], swept["summary"]
    planned = {t.name: t.cfg for t in plan(GRID, sweep_dir)}

    rows = {r["name"]: r for r in summary["trials"]}
    assert list(rows) == NAMES and summary["failed"] == []
    for name, cfg in planned.items():
        run_dir = sweep_dir / "trials" / name
        assert rows[name]["status"] == "ran" and rows[name]["run_dir"] == f"trials/{name}"
        assert resolve(run_dir / "config.yaml") == cfg  # `compress run --config` replays exactly this trial
        report = json.loads((run_dir / "report.json").read_text())
        steps = [s["step"] for s in report["steps"]]
        assert steps == ["baseline"] + (["prune", "finetune"] if cfg.prune else []) + ["export"] \
            + (["quantize"] if cfg.quantize else [])
        assert (run_dir / "edge" / "model.onnx").is_file() and not (run_dir / "progress.json").exists()
    hits = [json.loads((sweep_dir / "trials" / n / "report.json").read_text())["steps"][0]["cache_hit"] for n in NAMES]
    assert sorted(hits) == [False, True, True, True]  # trials sharing a baseline trained it once
    ray = summary["ray"]
    assert ray["address"] == "local" and ray["cluster_cpus"] >= 1 and ray["max_concurrent"] == 2
    assert ray["cpus_per_trial"] == max(1, ray["cluster_cpus"] // 2)
    assert Path(ray["experiment"]).parent == sweep_dir / "ray" and (sweep_dir / "ray" / "tmp").is_dir()
    assert all(line.startswith("compress sweep: ") for line in swept["stderr"])  # Ray's own output: in its logs
    assert "Traceback" not in swept["stdout"] and f"Recommended: {summary['recommended']}" in swept["stdout"]


@pytest.mark.slow
def test_a_trial_that_failed_once_was_retried_and_resumed_its_run_folder(swept):
    sweep_dir, summary = swept["dir"], swept["summary"]
    attempts_log = Path(summary["ray"]["experiment"]) / "attempts" / f"{FLAKY}.txt"

    attempts = {r["name"]: r["attempts"] for r in summary["trials"]}
    assert attempts == {**{n: 1 for n in NAMES}, FLAKY: 2}
    second_start = dt.datetime.fromisoformat(attempts_log.read_text().splitlines()[1].split()[0])
    baseline = sweep_dir / "trials" / FLAKY / "baseline" / "model.pt"
    written = dt.datetime.fromtimestamp(baseline.stat().st_mtime, dt.timezone.utc)
    assert written < second_start  # the retry resumed after the baseline step instead of redoing it
    assert f"compress sweep: trial {FLAKY}: failed, retrying (the retry resumes its run folder)" in swept["stderr"]


@pytest.mark.slow
def test_latency_is_remeasured_serially_on_the_driver(swept):
    from compress.host import cpu_record

    summary = swept["summary"]

    m = summary["remeasured"]
    assert (m["batch"], m["threads"], m["runs"]) == (1, 1, RUNS) and m["cpu"]["cpu"] == cpu_record()["cpu"]
    for r in summary["trials"]:
        assert r["latency_runs"] == RUNS and 0 < r["latency_ms_median"] <= r["latency_ms_p90"]
        assert r["latency_ms_in_trial"] > 0  # kept for reference, never used to rank
        assert r["energy_method"].split(":")[0] in ("rapl", "codecarbon-estimate", "user-power")


@pytest.mark.slow
def test_the_report_names_the_frontier_and_the_recommendation_by_their_rules(swept):
    sweep_dir, summary = swept["dir"], swept["summary"]
    rows = summary["trials"]
    points = [(r["top1_pct"], r["latency_ms_median"], r["size_bytes"]) for r in rows]

    assert [r["frontier"] for r in rows] == pareto(points)
    assert summary["frontier"] == [r["name"] for r in rows if r["frontier"]]
    best = max(r["baseline_top1_pct"] for r in rows)
    eligible = [r for r in rows if r["top1_pct"] >= best - 1.0]
    fastest = min(r["latency_ms_median"] for r in eligible)
    expected = min((r for r in eligible if r["latency_ms_median"] <= fastest * (1 + SAME_SPEED)),
                   key=lambda r: (r["size_bytes"], -r["top1_pct"]))
    assert summary["max_drop"] == 1.0 and summary["recommended"] == expected["name"]
    assert summary["recommended"] in summary["frontier"]
    md = (sweep_dir / "sweep.md").read_text()
    assert f"**Recommended:** {expected['name']}: {expected['top1_pct']:.2f}% top-1" in md
    assert f"**Pareto frontier:** {', '.join(summary['frontier'])}" in md
    assert summary["rule"] in md
    html = (sweep_dir / "sweep.html").read_text()
    assert f"Recommended: {expected['name']}" in html and all(r["name"] in html for r in rows)
    assert re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', html)[0].startswith("data:image/png;base64,")
    assert not re.search(r'\b(?:href|src)="(?!data:)', html)  # self-contained, like every compress page
    assert (sweep_dir / "compare" / "compare.html").is_file() and "compare/compare.html" in html


@pytest.mark.slow
def test_a_second_sweep_through_the_cli_reuses_every_finished_trial(swept, tmp_path, monkeypatch, capsys):
    sweep_dir = swept["dir"]
    reports = {n: sweep_dir / "trials" / n / "report.json" for n in NAMES}
    before = {n: p.stat().st_mtime_ns for n, p in reports.items()}
    experiments = sorted((sweep_dir / "ray").glob("tune-*"))
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(GRID))
    monkeypatch.setenv("COMPRESS_CACHE", str(sweep_dir.parent / "cache"))

    code = main(["--config", str(config), "--out", str(sweep_dir), "--runs", str(RUNS), "--energy-seconds", "0",
                 "--quiet"])

    out = capsys.readouterr().out
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert code == 0
    assert [(r["status"], r["attempts"]) for r in summary["trials"]] == [("reused", 0)] * 4
    assert {n: p.stat().st_mtime_ns for n, p in reports.items()} == before  # no trial ran again
    assert sorted((sweep_dir / "ray").glob("tune-*")) == experiments and summary["ray"] is None  # Ray never started
    assert f"Recommended: {summary['recommended']}" in out and f"Sweep folder: {sweep_dir}" in out
