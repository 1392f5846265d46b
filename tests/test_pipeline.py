"""The pipeline: the chain is checked before any work, then model → stage → measure, one step at a time, and the
run folder holds what the records say. End-to-end tests are slow (each runs a whole pipeline)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from compress.chain import STAGE_NAMES, build_chain, check_chain
from compress.config import resolve
from compress.core import sha256_file
from compress.errors import CompressError
from compress.pipeline import PROGRESS, REFERENCE, run
from compress.records import RunReport
from tests.helpers import DIGITS_TRAIN

TINY_NET = Path(__file__).resolve().parent / "fixtures" / "tiny_net.py"
QUICK_MEASURE = {"warmup_runs": 2, "min_runs": 20, "min_seconds": 0.05, "throughput_seconds": 0.05}


def test_the_chain_follows_the_config():
    chain = build_chain(resolve(overrides={"quantize": {}, "prune": {"ratio": 0.5}}))

    assert [s.name for s in chain] == ["baseline", "prune", "finetune", "export", "quantize"]
    check_chain(chain)
    assert [s.name for s in build_chain(resolve())] == ["baseline", "export"]


def test_a_bad_chain_stops_the_run_before_any_work(tmp_path):
    cfg = resolve(overrides={"quantize": {}})
    chain = build_chain(cfg)

    with pytest.raises(CompressError, match="quantize needs an ONNX model but gets a torch model: put export before "
                                            "it"):
        run(cfg, tmp_path / "run", chain=[chain[0], chain[-1]])

    assert not (tmp_path / "run").exists()  # no data loaded, no folder made


class Recorder:
    """A progress sink that keeps every call the pipeline makes, in order."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


@pytest.mark.slow
def test_the_smoke_run_folder_holds_what_its_records_say(smoke_run):
    report = RunReport.load(smoke_run)
    cfg = resolve(smoke_run / "config.yaml")

    assert [s.step for s in report.steps] == [n for n in STAGE_NAMES if n == "baseline" or getattr(cfg, n)]
    assert [s.kind for s in report.steps] == ["torch", "torch", "torch", "onnx", "onnx"]
    for s in report.steps:
        assert s.artifact.startswith(f"{s.step}/")
        assert sha256_file(smoke_run / s.artifact) == s.artifact_sha256
        assert s.work.seconds > 0 or s.cache_hit
        if s.step != "baseline":
            assert s.stage == dataclasses.asdict(getattr(cfg, s.step))  # a stage is its config
    assert [s.step for s in report.steps if s.deployed] == [report.deployed().step]
    assert (smoke_run / REFERENCE / "model.onnx").is_file()
    ref = report.references["baseline_onnx"]
    assert ref.params < report.baseline.metrics.params * 1.02 and ref.macs == report.baseline.metrics.macs
    assert not (smoke_run / PROGRESS).exists()
    assert yaml.safe_load((smoke_run / "config.yaml").read_text())["prune"]["ratio"] == 0.5


def test_the_smoke_run_reports_where_pruning_spent_its_budget(smoke_run):
    """The default sensitivity allocation: the records hold the budget and the scan, and both renderings show them."""
    report = RunReport.load(smoke_run)
    note = report.step("prune").notes
    pruned = report.step("prune").metrics

    assert note["allocation"] == "sensitivity" and note["budget_ratio"] == 0.5
    assert note["macs"] <= note["budget_macs"] and note["params"] <= note["budget_params"]
    assert pruned.macs <= note["budget_macs"] * 1.01  # the report's own MAC count, not only the stage's
    assert len(note["most_sensitive"]) == min(10, note["groups_scanned"])
    drops = [g["drop_pt"] for g in note["most_sensitive"]]
    assert drops == sorted(drops, reverse=True)
    md = (smoke_run / "report.md").read_text()
    assert "## Where pruning spent its budget" in md and f"each of {note['groups_scanned']} layer groups" in md
    assert "| layer group | channels | top-1 lost alone (pt) |" in md
    assert note["most_sensitive"][0]["group"] in md
    html = (smoke_run / "report.html").read_text()
    assert 'id="pruning"' in html and note["most_sensitive"][0]["group"] in html


@pytest.mark.slow
def test_a_callers_own_network_runs_through_the_python_api(tmp_path):
    """``run(cfg, dir, model=..., data=...)``: the caller's nn.Module and data set instead of names."""
    import importlib.util

    from compress.data import load_dataset

    spec = importlib.util.spec_from_file_location("tiny_net_fixture", TINY_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.TinyNet(num_classes=1000)  # the head is refitted to the data's 10 classes
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = resolve(overrides={"data": "digits", "train": {"epochs": 3, "batch_size": 64, "lr": 0.1},
                             "prune": {"ratio": 0.25}, "finetune": {"epochs": 1, "batch_size": 64, "lr": 0.02},
                             "measure": QUICK_MEASURE, "allow_chance": True})
    progress = Recorder()

    report = run(cfg, tmp_path / "run", progress=progress, model=net, data=load_dataset("digits", input_size=32))

    assert [s.step for s in report.steps] == ["baseline", "prune", "finetune", "export"]
    assert report.baseline.notes["init"].startswith("given by the caller (TinyNet)")
    assert "classifier fc replaced for 10 classes" in report.baseline.notes["init"]
    assert report.step("prune").metrics.params < report.baseline.metrics.params
    assert all(v.equal(net.state_dict()[k]) for k, v in before.items())  # the caller's model is untouched
    started = [c[1] for c in progress.calls if c[0] == "step_started"]
    done = [c[1].step for c in progress.calls if c[0] == "step_done"]
    assert done == ["baseline", "prune", "finetune", "export"]
    assert set(done) | {REFERENCE} <= set(started)
    assert any(c[0] == "epoch" for c in progress.calls)
    assert (tmp_path / "run" / "edge" / "model.onnx").is_file() and (tmp_path / "run" / "report.html").is_file()
    assert RunReport.load(tmp_path / "run") == report


def test_no_mixed_precision_search_once_the_steps_before_int8_spent_the_budget(smoke_run, tmp_path):
    """The smoke run's records up to its FP32 export, that export made 2 points worse than the baseline: under a
    1-point --max-drop, INT8 gets no budget and no search (it could only climb back to the export's accuracy),
    and the report says why in one sentence."""
    from compress.pipeline import _with_budget
    from compress.quantize import Quantize
    from compress.render import mixed_precision
    from tests.helpers import context

    report = RunReport.load(smoke_run)
    report.steps = [s for s in report.steps if s.step != "quantize"]
    report.steps[-1].metrics = dataclasses.replace(report.steps[-1].metrics,
                                                   top1_pct=report.baseline.metrics.top1_pct - 2.0)
    cfg = resolve(overrides={"max_drop": 1.0})

    with context(tmp_path) as ctx:
        over = _with_budget(Quantize(), cfg, report, ctx)
        within = _with_budget(Quantize(), resolve(overrides={"max_drop": 2.5}), report, ctx)

    assert over.max_drop_pt is None and within.max_drop_pt == pytest.approx(0.5)
    record = ctx.notes["quantize"]["mixed_precision"]
    assert record["outcome"].startswith("not tried: the steps before it already lost 2.00 points of the 1-point")
    report.steps.append(dataclasses.replace(report.steps[-1], step="quantize", notes={"mixed_precision": record}))
    text, rows = mixed_precision(report)
    assert text == f"Mixed precision {record['outcome']}." and rows == []


def test_max_drop_gives_int8_what_is_left_of_the_budget_and_the_report_shows_its_search(tmp_path):
    """--max-drop with --int8: the quantize stage gets the budget minus what the steps before it lost, searches
    mixed precision with it, and report.md/report.html show the ten most harmful nodes."""
    cfg = resolve(overrides={"model": "tiny_mobilenet_v3", "data": "digits", "max_drop": 0.5, "allow_chance": True,
                             "train": DIGITS_TRAIN, "measure": QUICK_MEASURE,
                             "quantize": {"calibration_size": 64, "speed_check_runs": 0}})

    report = run(cfg, tmp_path / "run")

    spent = report.baseline.metrics.top1_pct - report.step("export").metrics.top1_pct
    q = report.step("quantize")
    assert q.stage["max_drop_pt"] == pytest.approx(max(0.0, 0.5 - spent), abs=1e-3)
    record = q.notes["mixed_precision"]
    assert record["budget_pt"] == q.stage["max_drop_pt"] and record["held_out_images"] == 1347 - 64
    md = (tmp_path / "run" / "report.md").read_text()
    section = md.split("## INT8 mixed precision", 1)[1]
    assert f"{record['held_out_images']:,} held-out training images" in section
    assert section.count(record["worst_nodes"][0]["node"]) >= 1 and len(record["worst_nodes"]) == 10
    assert ("INT8 from minmax ranges got" in section) == ("calibration" in record)
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'id="mixed"' in html and 'id="energy-batch"' in html
    assert RunReport.load(tmp_path / "run") == report
    # energy per inference at batch 1, 8 and 32: the deployed model and both references
    e = report.energy_by_batch
    assert set(e) == {"deployed", "baseline_onnx", "baseline_eager"}
    assert all(list(v) == ["1", "8", "32"] for v in e.values())
    assert e["deployed"]["1"]["energy_per_inference_j"] == report.deployed().metrics.energy_per_inference_j
    for batch in ("8", "32"):
        m = e["deployed"][batch]
        assert m["images"] >= QUICK_MEASURE["min_runs"] and m["images"] % int(batch) == 0 and m["ms_per_image"] > 0
        assert m["energy_per_inference_j"] is None or m["energy_per_inference_j"] > 0
    assert md.count("\n| 32 |") == 1 and "deployed vs baseline eager" in md
