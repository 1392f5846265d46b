"""Your own network through the whole pipeline: an nn.Module from Python, a file.py:factory from the command line,
and a timm architecture. Each run is real (training, pruning, export, INT8, bundle) on scikit-learn's digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import QUICK_MEASURE

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny_net.py"
QUICK = {"min_runs": 20, "min_seconds": 0.05, "throughput_seconds": 0.05, "warmup_runs": 2}


def _assert_complete(out: Path, report) -> None:
    steps = [s.step for s in report.steps]
    assert steps == ["baseline", "prune", "finetune", "export", "quantize"]
    assert report.step("prune").metrics.params < 0.9 * report.baseline.metrics.params  # pruning really removed channels
    export = report.step("export")
    assert export.notes["parity_max_abs_diff"] <= export.notes["parity_limit"]  # ORT matches torch after pruning
    manifest = json.loads((out / "edge" / "manifest.json").read_text())
    assert manifest["models"]["int8"] is not None and (out / "edge" / "model.onnx").is_file()
    assert report.baseline.metrics.top1_pct > 40 and report.deployed().metrics.top1_pct > 25  # 10 classes: chance 10%


@pytest.mark.slow
def test_a_python_nn_module_goes_through_every_stage(tmp_path):
    import torch.nn as nn

    from compress import run_model

    net = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),  # 16x16 at 32 px
                        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 7))  # 7 outputs: the head gets resized

    report = run_model(net, data="digits", out=tmp_path / "run", train={"epochs": 6},
                       prune={"ratio": 0.3}, finetune={"epochs": 2, "quant_aware_epochs": 1}, quantize={},
                       measure=QUICK)

    _assert_complete(tmp_path / "run", report)
    assert report.model == "python:Sequential"
    assert "given by the caller" in report.baseline.notes["init"] and "replaced for 10 classes" in report.baseline.notes["init"]
    assert net[-1].out_features == 7  # the caller's module is never changed


@pytest.mark.slow
def test_a_file_factory_goes_through_every_stage_from_the_command_line(tmp_path):
    from compress.cli import main
    from compress.records import RunReport

    out = tmp_path / "run"
    code = main(["run", f"{FIXTURE}:build", "--data", "digits", "--epochs", "6", "--prune", "0.5", "--int8",
                 "--finetune-epochs", "2", "--config", str(QUICK_MEASURE), "--out", str(out), "--quiet"])

    assert code == 0
    _assert_complete(out, RunReport.load(out))


@pytest.mark.slow
def test_timm_mobilenetv4_goes_through_every_stage(tmp_path):
    from compress.config import resolve
    from compress.pipeline import run

    cfg = resolve(overrides={"model": "timm:mobilenetv4_conv_small", "data": "digits", "train": {"epochs": 4},
                             "prune": {"ratio": 0.5, "allocation": "uniform"},
                             "finetune": {"epochs": 1, "quant_aware_epochs": 0},
                             "quantize": {}, "measure": QUICK})

    report = run(cfg, tmp_path / "run")

    _assert_complete(tmp_path / "run", report)
