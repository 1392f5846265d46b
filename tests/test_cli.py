"""The CLI end to end on a real small run, and one clear line for every bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compress.cli import EXAMPLES, main
from compress.config import dump_yaml, resolve
from compress.records import SCHEMA_VERSION, RunReport
from compress.render import carbon_break_even
from tests.conftest import SMOKE
from tests.helpers import QUICK_MEASURE

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
        metrics = dataclasses.asdict(s.metrics)
        for key in METRICS:
            assert key in metrics and (metrics[key] is not None or key == "energy_per_inference_j"), (s.step, key)
        # Above chance (10 classes) for every step but prune: right after pruning, before recovery,
        # accuracy can fall to chance or below; that is what the fine-tune step is for.
        assert 0.0 <= s.metrics.top1_pct <= 100.0 and (s.step == "prune" or s.metrics.top1_pct > 10.0)
        assert s.work.seconds >= 0 and s.work.energy_method
    base, prune, final = report.steps[0], report.steps[1], report.steps[-1]
    assert prune.metrics.params < 0.4 * base.metrics.params  # achieved pruning shows in the counts
    assert final.metrics.size_bytes < report.step("export").metrics.size_bytes
    assert report.environment["measure_threads"] == 1 and report.environment["versions"]["onnxruntime"]
    assert report.dataset["test_images"] == 500
    assert carbon_break_even(report)["compression_co2_g"] > 0
    md = (smoke_run / "report.md").read_text()
    assert "| quantize" in md and "codecarbon-estimate" in md


def test_config_yaml_replays_the_run(smoke_run):
    cfg = resolve(smoke_run / "config.yaml")
    assert cfg == resolve(SMOKE)
    assert cfg.model == "tiny_mobilenet_v3" and cfg.prune.ratio == 0.5 and cfg.quantize is not None
    saved = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert saved["limit_test"] == 500 and saved["edge_friendly"] is None
    assert saved["finetune"]["quant_aware_epochs"] == 1  # implied: at most half of the 2 recovery epochs
    assert RunReport.load(smoke_run).config == saved  # report.json records the same resolved config


def test_json_flag_prints_the_report(unpruned_run):
    assert unpruned_run["code"] == 0
    data = json.loads(unpruned_run["stdout"])
    assert data["schema_version"] == SCHEMA_VERSION
    assert [s["step"] for s in data["steps"]] == ["baseline", "export", "quantize"]
    assert data["config"]["prune"] is None and data["config"]["finetune"] is None  # --prune 0: nothing to recover
    assert data == json.loads(RunReport.load(unpruned_run["dir"]).to_json())  # what report.json holds
    assert unpruned_run["stderr"] == ""  # --json is quiet: no progress, no library chatter


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
def test_a_folder_of_photos_with_train_and_val(tmp_path):
    """The real-world case: a user's image folder (train/ and val/) from the command line, all stages, on the tiny
    MobileNetV3 (SE blocks and residuals). EfficientNet-B0 on a folder of photos is the recipe matrix's quick cell
    (test_benchmarks.py)."""
    import numpy as np
    from PIL import Image

    from compress.data import FASHION_MNIST_DEBIAN, FASHION_MNIST_LABELS, read_idx
    from compress.recipe import scale_lr

    images = read_idx(FASHION_MNIST_DEBIAN / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DEBIAN / "t10k-labels-idx1-ubyte.gz")
    for split, lo, hi in (("train", 0, 30), ("val", 30, 40)):
        for c in (0, 1, 7):  # T-shirt, Trouser, Sneaker: three distinct classes
            d = tmp_path / "photos" / split / FASHION_MNIST_LABELS[c].replace("/", "_")
            d.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[lo:hi]:
                Image.fromarray(images[i]).save(d / f"{i}.png")
    out = tmp_path / "run"

    # 90 training and 30 test images check the plumbing, not learning: the same run ended recovery at 43% or 70%
    # depending on the thread count (float sums in another order), and a model near chance must not stop it.
    # benchmarks/recipes.py measures learning on folders (its quick cells run in test_benchmarks.py).
    rc = main(["run", "tiny_mobilenet_v3", "--prune", "0.3", "--data", str(tmp_path / "photos"), "--epochs", "2",
               "--finetune-epochs", "1", "--int8", "--allow-chance", "--config", str(QUICK_MEASURE), "--out", str(out),
               "--quiet"])

    assert rc == 0
    report = RunReport.load(out)
    assert report.dataset["train_images"] == 90 and report.dataset["test_images"] == 30
    assert report.dataset["class_names"] == ["Sneaker", "T-shirt_top", "Trouser"]
    prune = report.step("prune")
    assert prune.metrics.params < 0.7 * report.steps[0].metrics.params
    finetune = report.step("finetune")  # recovery at half the baseline's peak LR, scaled to its batch
    assert finetune.stage["lr"] == pytest.approx(scale_lr(0.5 * report.baseline.notes["recipe"]["lr"],
                                                          report.baseline.notes["recipe"]["batch_size"], 256), rel=1e-3)
    assert finetune.notes["distilled"] is False  # 90 images: recovery learns from the labels
    notes = report.step("export").notes
    assert notes["parity_max_abs_diff"] <= notes["parity_limit"]
    assert (out / "edge" / "model.onnx").is_file()


def test_a_second_run_reuses_the_cached_baseline_and_a_budget_deploys_the_most_compressed_step_inside_it(
        smoke_run, tmp_path, capsys):
    from tests.conftest import SMOKE

    first = RunReport.load(smoke_run)
    # Everything fits (one recovery epoch loses a few points of a 10-class baseline near 75%, not 50), so the
    # smallest (INT8) file is deployed.
    out = tmp_path / "budget"
    assert main(["run", "--config", str(SMOKE), "--out", str(out), "--max-drop", "50", "--finetune-epochs", "1"]) == 0
    err = capsys.readouterr().err  # plain progress lines: stderr is not a terminal here
    assert "loading the cached baseline" in err and "training the baseline" not in err  # issue #16.10
    second = RunReport.load(out)
    assert second.steps[0].cache_hit is True
    assert second.steps[0].metrics.top1_pct == first.steps[0].metrics.top1_pct
    assert second.steps[0].artifact_sha256 == first.steps[0].artifact_sha256
    manifest = json.loads((out / "edge" / "manifest.json").read_text())
    assert manifest["step"] == "quantize" and manifest["precision"] == "int8"
    # A budget that nothing meets: test_deploy's test_max_drop_that_no_step_meets_ships_the_most_accurate_with_a_warning


# ------------------------------------------------------------------------------------------------ help

@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_every_help_ends_with_an_example(command, capsys):
    argv = ["--help"] if command == "compress" else [command, "--help"]

    assert main(argv) == 0

    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("example"))
    examples = [line.strip() for line in lines[start + 1:] if line.startswith("  compress ")]
    assert examples and all(e.startswith("compress ") for e in examples)
    if command != "compress":
        assert all(e.split()[1] == command for e in examples)


def test_help_shows_defaults_from_the_dataclasses(capsys):
    from compress.config import RunConfig
    from compress.finetune import RECOVERY_LR, SLOW_BACKBONE_RECOVERY_EPOCHS, Finetune
    from compress.prune import Prune
    from compress.recipe import DEFAULT_LR, Recipe

    main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines

    assert f"baseline training epochs (default {Recipe().epochs}; 0 keeps the weights as they are)" in text
    assert f"baseline training peak learning rate for a batch of {Recipe().batch_size} (default {DEFAULT_LR:g}" in text
    assert f"(default {Finetune().recovery_epochs}; {SLOW_BACKBONE_RECOVERY_EPOCHS} after fine-tuning" in text
    assert f"(default: half the baseline's, {RECOVERY_LR:g}" in text
    assert f"(default 0: no pruning; {Prune().ratio:g} is a good start)" in text
    assert f"--seed SEED seed for the data subsets, initialisation and training order (default {RunConfig().seed})" \
        in text
    assert "--allow-chance deploy even if the model is at or near chance" in text


def test_list_countries_shows_codecarbons_codes(capsys):
    assert main(["list", "--countries"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "FRA  France" in lines and len(lines) > 100


# ------------------------------------------------------------------------------------------------ resume

def _unfinished(tmp_path: Path, **overrides) -> Path:
    """A run folder as an interrupted run leaves it: its resolved config.yaml (no finished step here)."""
    out = tmp_path / "run"
    out.mkdir()
    cfg = resolve(overrides={"model": "tiny_mobilenet_v3", "data": "digits", "prune": {"ratio": 0.5}, **overrides})
    (out / "config.yaml").write_text(dump_yaml(cfg))
    return out


def test_resume_reads_the_saved_config(tmp_path, capsys):
    out = _unfinished(tmp_path)

    # The saved config is used (no "another config" error): the run gets as far as the folder rules.
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "nothing to resume in" in capsys.readouterr().err
    assert main(["run", "tiny_mobilenet_v3", "--prune", "0.5", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "nothing to resume in" in capsys.readouterr().err  # repeating the original flags is fine too


def test_resume_refuses_flags_that_change_the_run(tmp_path, capsys):
    out = _unfinished(tmp_path)

    assert main(["run", "--out", str(out), "--resume", "--prune", "0.3", "--int8", "--quiet"]) == 2

    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[:2] == [
        f"compress: error: --prune does not match the run being resumed (prune.ratio is 0.5 in {out / 'config.yaml'}, "
        "0.3 here): drop it to resume that run, or start over with --force",
        f"compress: error: --int8 does not match the run being resumed (quantize is off in {out / 'config.yaml'}, "
        "on here): drop it to resume that run, or start over with --force",
    ]


def test_resume_without_a_saved_config_says_so(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "new"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume in" in err and "no config.yaml" in err
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------------ failures leave nothing

def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_failed_data_check_leaves_no_run_folder(tmp_path):
    proc = _cli("run", "tiny_mobilenet_v3", "--data", str(tmp_path / "missing"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "runs").exists()  # neither the run folder nor the runs/ it created

    nested = tmp_path / "a" / "b" / "run"
    proc = _cli("run", "tiny_mobilenet_v3", "--data", str(tmp_path / "missing"), "--out", str(nested), cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "a").exists()


def test_a_failed_run_never_removes_a_folder_that_existed(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")

    proc = _cli("run", "tiny_mobilenet_v3", "--data", str(tmp_path / "missing"), "--out", str(mine), cwd=tmp_path)

    assert proc.returncode == 2
    assert (mine / "notes.txt").read_text() == "keep me"


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from compress import pipeline

    def interrupted_after_first_step(cfg, run_dir, **kw):
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        (run_dir / "progress.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", interrupted_after_first_step)
    out = tmp_path / "my run"

    assert main(["run", "tiny_mobilenet_v3", "--data", "digits", "--out", str(out), "--quiet"]) == 130

    err = capsys.readouterr().err
    assert err.strip() == (f"compress: interrupted; finished work is kept in {out}: continue with "
                           f"`compress run --out '{out}' --resume`")
    assert (out / "progress.json").exists()


def test_ctrl_c_before_any_step_keeps_nothing(tmp_path, monkeypatch, capsys):
    from compress import pipeline

    def interrupted_at_once(cfg, run_dir, **kw):
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", interrupted_at_once)

    assert main(["run", "tiny_mobilenet_v3", "--data", "digits", "--out", str(tmp_path / "r"), "--quiet"]) == 130
    assert "nothing was kept" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
