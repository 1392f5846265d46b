"""The CLI end to end on a real small run, and one clear line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from compress.cli import main
from compress.config import resolve
from compress.report import RunReport

METRICS = ["top1_pct", "size_bytes", "params", "macs", "latency_ms_median", "latency_ms_p90", "throughput_ips",
           "energy_per_inference_j", "energy_method"]


def test_run_writes_a_complete_run_folder(smoke_run):
    for name in ["config.yaml", "report.json", "report.md", "compress.log", "baseline/model.pt", "prune/model.pt",
                 "finetune/model.pt", "export/model.onnx", "quantize/model.onnx", "edge/model.onnx",
                 "edge/model_fp32.onnx", "edge/labels.json", "edge/preprocess.json", "edge/manifest.json"]:
        assert (smoke_run / name).is_file(), name
    report = RunReport.load(smoke_run)
    assert [s.step for s in report.steps] == ["baseline", "prune", "finetune", "export", "quantize"]
    for s in report.steps:
        for key in METRICS:
            assert key in s.metrics and (s.metrics[key] is not None or key == "energy_per_inference_j"), (s.step, key)
        # Above chance (10 classes) for every step but prune: right after pruning, before recovery,
        # accuracy can fall to chance or below; that is what the fine-tune step is for.
        assert 0.0 <= s.metrics["top1_pct"] <= 100.0 and (s.step == "prune" or s.metrics["top1_pct"] > 10.0)
        assert s.work["seconds"] >= 0 and "energy_method" in s.work
    base, prune, final = report.steps[0], report.steps[1], report.steps[-1]
    assert prune.metrics["params"] < 0.4 * base.metrics["params"]  # achieved pruning shows in the counts
    assert final.metrics["size_bytes"] < report.step("export").metrics["size_bytes"]
    assert report.environment["measure_threads"] == 1 and report.environment["versions"]["onnxruntime"]
    assert report.dataset["test_images"] == 500
    assert report.carbon["compression_co2_g"] > 0
    md = (smoke_run / "report.md").read_text()
    assert "| quantize |" in md and "codecarbon-estimate" in md


def test_config_yaml_replays_the_run(smoke_run):
    cfg = resolve(smoke_run / "config.yaml")
    assert cfg.model == "tiny_mobilenet_v3" and cfg.prune.ratio == 0.5 and cfg.int8
    assert yaml.safe_load((smoke_run / "config.yaml").read_text())["limit_test"] == 500


def test_second_run_reuses_the_cached_baseline(smoke_run, tmp_path):
    from tests.conftest import SMOKE

    out = tmp_path / "again"
    assert main(["run", "--config", str(SMOKE), "--out", str(out), "--quiet"]) == 0
    first, second = RunReport.load(smoke_run), RunReport.load(out)
    assert second.steps[0].notes["cache_hit"] is True
    assert second.steps[0].metrics["top1_pct"] == first.steps[0].metrics["top1_pct"]
    assert second.steps[0].artifact_sha256 == first.steps[0].artifact_sha256


def test_json_flag_prints_the_report(smoke_run, tmp_path, capsys):
    from tests.conftest import SMOKE

    assert main(["run", "--config", str(SMOKE), "--out", str(tmp_path / "j"), "--json", "--prune", "0"]) == 0
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert data["schema_version"] == 1 and [s["step"] for s in data["steps"]] == ["baseline", "export", "quantize"]
    assert out.err == ""  # --json is quiet: no progress, no library chatter


def test_list_names_models_data_and_stages(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_small" in out and "efficientnet_b0" in out and "fashion-mnist" in out and "quantize" in out


def test_bench_measures_a_bundle(edge_bundle, capsys):
    assert main(["bench", str(edge_bundle), "--seconds", "0.2", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["kind"] == "bench" and rec["metrics"]["latency_ms_median"] > 0
    assert rec["metrics"]["latency_ms_p90"] >= rec["metrics"]["latency_ms_median"]


def test_help_answers_without_heavy_imports():
    code = ("import sys; from compress.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'torch_pruning', 'codecarbon') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_efficientnet_on_a_folder_of_photos(tmp_path):
    """The real-world case: a user's image folder (train/ and val/), EfficientNet (SE + residuals), all stages."""
    import numpy as np
    from PIL import Image

    from compress.data import FASHION_MNIST_DEBIAN, FASHION_MNIST_LABELS, read_idx

    images = read_idx(FASHION_MNIST_DEBIAN / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DEBIAN / "t10k-labels-idx1-ubyte.gz")
    for split, lo, hi in (("train", 0, 30), ("val", 30, 40)):
        for c in (0, 1, 7):  # T-shirt, Trouser, Sneaker: three distinct classes
            d = tmp_path / "photos" / split / FASHION_MNIST_LABELS[c].replace("/", "_")
            d.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[lo:hi]:
                Image.fromarray(images[i]).save(d / f"{i}.png")
    out = tmp_path / "run"

    rc = main(["run", "efficientnet_b0", "--prune", "0.3", "--data", str(tmp_path / "photos"), "--epochs", "2",
               "--finetune-epochs", "1", "--int8", "--out", str(out), "--quiet"])

    assert rc == 0
    report = RunReport.load(out)
    assert report.dataset["train_images"] == 90 and report.dataset["test_images"] == 30
    assert report.dataset["class_names"] == ["Sneaker", "T-shirt_top", "Trouser"]
    prune = report.step("prune")
    assert prune.metrics["params"] < 0.7 * report.steps[0].metrics["params"]
    notes = report.step("export").notes
    assert notes["parity_max_abs_diff"] <= notes["parity_limit"]
    assert (out / "edge" / "model.onnx").is_file()


def test_accuracy_budget_deploys_the_most_compressed_step_inside_it(smoke_run, tmp_path):
    from tests.conftest import SMOKE

    report = RunReport.load(smoke_run)
    base = report.steps[0].metrics["top1_pct"]
    drops = {s.step: base - s.metrics["top1_pct"] for s in report.steps if s.kind == "onnx"}
    budget = max(drops.values()) + 0.01  # everything fits: the smallest (INT8) file is deployed
    out = tmp_path / "budget"
    assert main(["run", "--config", str(SMOKE), "--out", str(out), "--quiet", "--max-drop", str(budget)]) == 0
    manifest = json.loads((out / "edge" / "manifest.json").read_text())
    assert manifest["step"] == "quantize" and manifest["precision"] == "int8"

    out2 = tmp_path / "tight"  # nothing fits: the most accurate ONNX step is deployed, with a warning
    assert main(["run", "--config", str(SMOKE), "--out", str(out2), "--quiet", "--max-drop", "0", "--prune", "0.7"]) == 0
    r2 = RunReport.load(out2)
    m2 = json.loads((out2 / "edge" / "manifest.json").read_text())
    best = max((s for s in r2.steps if s.kind == "onnx"), key=lambda s: s.metrics["top1_pct"])
    assert m2["step"] == best.step and r2.step(best.step).notes["deployed"] is True
    headline = (out2 / "report.md").read_text().splitlines()[2]
    assert headline.startswith(f"**{best.step}**: {best.metrics['top1_pct']:.2f}% top-1")  # what the bundle holds
    if best is not r2.steps[-1]:
        assert "Deployed under --max-drop 0 pt" in headline
    if best.metrics["top1_pct"] < r2.steps[0].metrics["top1_pct"]:
        assert any("max-drop" in w for w in r2.step(best.step).notes.get("warnings", []))
