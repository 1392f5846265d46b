"""Small builders shared by tests: real data, a real trained tiny model, a real Context, and reports read from
real runs. Everything is cached per test session where it is expensive, and never mutated by the tests."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from compress.core import Context
from compress.data import load_dataset
from compress.energy import EnergyMeter
from compress.measure import MeasureConfig
from compress.records import RunReport

if TYPE_CHECKING:
    import torch.nn as nn

DATA = Path(__file__).resolve().parent / "data"
REPORT_V1 = DATA / "report_v1.json"  # a real report.json written by compress 0.1 (schema version 1); see test_records

QUICK = MeasureConfig(warmup_runs=3, min_runs=30, min_seconds=0.05, throughput_seconds=0.05)
QUICK_MEASURE = Path(__file__).resolve().parent / "fixtures" / "quick_measure.yaml"  # about QUICK, for the CLI
_CACHE: dict = {}

# The session's real sweep (conftest.py's `swept`, checked in test_sweep.py and reused by test_benchmarks.py)
SWEEP_GRID = {"model": "tiny_mobilenet_v3", "data": "digits", "train": {"epochs": 1}, "finetune": {"epochs": 1},
              "quantize": {"calibration_size": 256},
              "measure": {"min_runs": 20, "min_seconds": 0.05, "throughput_seconds": 0.05, "warmup_runs": 2},
              "sweep": {"prune": [0, 0.5], "int8": [False, True]}}
SWEEP_FLAKY = "tiny_mobilenet_v3_prune0.5_int8-minmax"  # its first attempt fails once its baseline step is recorded
SWEEP_RUNS = 40  # interleaved timings per model in the re-measurement: enough for a median in a test
# The tiny digits baseline that test_architecture, test_litert and test_pipeline train: one recipe, so
# the session's baseline cache trains it once (its key is the model, data and effective recipe)
DIGITS_TRAIN = {"epochs": 3, "batch_size": 64, "lr": 0.1}


def fmnist_subset(limit_train: int = 1500, limit_test: int = 300):
    key = ("fashion-mnist", limit_train, limit_test)
    if key not in _CACHE:
        _CACHE[key] = load_dataset("fashion-mnist", input_size=32, limit_train=limit_train, limit_test=limit_test)
    return _CACHE[key]


def digits():
    """scikit-learn's 8×8 digits at 32×32: 1,347 training and 450 test images, bundled with scikit-learn."""
    if "digits" not in _CACHE:
        _CACHE["digits"] = load_dataset("digits", input_size=32)
    return _CACHE["digits"]


@contextmanager
def context(run_dir: Path, data=None, teacher=None, measure: MeasureConfig = QUICK) -> Iterator[Context]:
    with EnergyMeter(country="USA") as meter:
        yield Context(data=data or fmnist_subset(), run_dir=run_dir, seed=0, device="cpu", measure=measure,
                      meter=meter, teacher=teacher)


def trained_tiny(tmp_root: Path) -> "nn.Module":
    """A real tiny MobileNetV3 (SE blocks, hardswish, depthwise convs) trained 3 epochs on a Fashion-MNIST subset
    (about 65% top-1), once per session. Stages never mutate their input, so tests share it."""
    if "trained_tiny" not in _CACHE:
        from compress.baseline import Baseline
        from compress.recipe import Recipe

        with context(tmp_root) as ctx:
            _CACHE["trained_tiny"] = Baseline(model="tiny_mobilenet_v3", weights="none",
                                              recipe=Recipe(epochs=3, batch_size=64, lr=0.2))(None, ctx)
    return _CACHE["trained_tiny"]


def params(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())


def same_weights(a: "nn.Module", b: "nn.Module") -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def report_v1() -> RunReport:
    """The recorded version-1 report, read (and upgraded) as this compress reads it."""
    return RunReport.load(REPORT_V1)


def run_folder_v1(where: Path) -> Path:
    """A run folder holding only the recorded version-1 report.json, as `compress report` and `compare` take it."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPORT_V1, where / "report.json")
    return where


def reloaded(report: RunReport) -> RunReport:
    """A fresh copy of ``report`` through its JSON form, so a test may change it freely."""
    return RunReport.from_dict(json.loads(report.to_json()))


def measured_steps(tmp_root: Path) -> tuple[RunReport, Context]:
    """A real small run without the pipeline, once per session: the trained tiny model, its FP32 ONNX export and
    the INT8 model, each saved and measured as the pipeline does (same ``measure``, same records). The report has
    no step marked deployed and no speed check yet: that is what :func:`compress.deploy.choose` adds. Tests that
    change the report or the folder work on copies (:func:`reloaded`, ``copy_of``)."""
    if "measured_steps" not in _CACHE:
        _CACHE["measured_steps"] = _measure_steps(tmp_root)
    return _CACHE["measured_steps"]


def _measure_steps(run_dir: Path) -> tuple[RunReport, Context]:
    import dataclasses

    from compress import checkpoint as ckpt
    from compress.core import OnnxModel, sha256_file
    from compress.export import Export
    from compress.host import environment
    from compress.measure import measure
    from compress.quantize import Quantize
    from compress.records import StepReport, Work

    model = trained_tiny(run_dir / "cache")
    data = fmnist_subset()
    report = RunReport(config={}, environment=environment("cpu", QUICK.threads), dataset=data.summary(),
                       model="tiny_mobilenet_v3")
    with context(run_dir) as ctx:
        ckpt.save(ckpt.model_record(model), ctx.artifact("baseline", "model.pt"))
        steps = [("baseline", {"model": "tiny_mobilenet_v3"}, model)]
        fp32 = Export()(model, ctx)
        steps.append(("export", dataclasses.asdict(Export()), fp32))
        steps.append(("quantize", dataclasses.asdict(Quantize(calibration_size=256)),
                      Quantize(calibration_size=256)(fp32, ctx)))
        for name, stage, made in steps:
            artifact = made.path if isinstance(made, OnnxModel) else run_dir / "baseline" / "model.pt"
            m = measure(made, ctx, step=name)
            report.steps.append(StepReport(
                step=name, kind="onnx" if isinstance(made, OnnxModel) else "torch", stage=stage,
                artifact=str(artifact.relative_to(run_dir)), artifact_sha256=sha256_file(artifact),
                metrics=m.metrics, confusion=m.confusion, work=Work(seconds=0.0),
                warnings=list(ctx.warnings.get(name, [])), notes=dict(ctx.notes.get(name, {}))))
    return report, ctx


def fresh_context(ctx: Context) -> Context:
    """The same run folder, data and settings with no notes or warnings yet: one per test."""
    import dataclasses

    return dataclasses.replace(ctx, notes={}, warnings={})
