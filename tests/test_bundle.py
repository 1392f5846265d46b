"""The edge bundle: model.onnx is the deployed step's model, ``models`` names each precision's file, and the folder
is complete, verifiable without torch, and refuses tampered files.

Most tests write bundles from a real small run (the trained tiny model, its FP32 export and INT8 model, measured)
with :func:`compress.bundle.write_bundle`, marking the deployed step as the deploy policy would, so each of the
three layouts of edge_demo/BUNDLE.md is checked on any CPU. The smoke run's bundle (slow) checks the whole path.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compress.bundle import verify_bundle, write_bundle
from compress.core import sha256_file
from compress.errors import CompressError
from compress.records import RunReport
from tests.helpers import fresh_context, measured_steps, reloaded

HOST = "x86_64" if platform.machine().lower() in ("x86_64", "amd64") else platform.machine().lower()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return measured_steps(tmp_path_factory.mktemp("run"))


def _bundle(small_run, out: Path, *, deployed: str, fallback: bool = False, drop: str | None = None,
            reason: str = "a reason") -> tuple[Path, RunReport]:
    report, ctx = reloaded(small_run[0]), fresh_context(small_run[1])
    if drop:
        report.steps = [s for s in report.steps if s.step != drop]
    for s in report.steps:
        s.deployed = s.step == deployed
    if report.has_step("quantize"):
        report.step("quantize").fallback = fallback
    return write_bundle(report, ctx, out / "edge", reason=reason, target="host"), report


@pytest.fixture(scope="module")
def int8_bundle(small_run, tmp_path_factory) -> Path:
    """INT8 made and deployed."""
    edge, _ = _bundle(small_run, tmp_path_factory.mktemp("int8"), deployed="quantize", reason="the last step")
    return edge


def _manifest(edge: Path) -> dict:
    return json.loads((edge / "manifest.json").read_text())


def test_int8_deployed_ships_model_onnx_int8_beside_the_fp32_model(int8_bundle, small_run):
    report, ctx = small_run

    manifest = verify_bundle(int8_bundle)

    assert manifest["precision"] == "int8" and manifest["step"] == "quantize"
    assert manifest["models"] == {"fp32": "model_fp32.onnx", "int8": "model.onnx"}
    assert sha256_file(int8_bundle / "model.onnx") == report.step("quantize").artifact_sha256
    assert sha256_file(int8_bundle / "model_fp32.onnx") == report.step("export").artifact_sha256
    assert not (int8_bundle / "model_int8.onnx").exists()
    assert manifest["deployed_reason"] == "the last step" and manifest["target"] == HOST
    assert manifest["metrics"]["top1_pct"] == report.step("quantize").metrics.top1_pct
    assert manifest["opset"] == 17 and manifest["format"] == "compress-edge/1"


def test_int8_made_but_not_deployed_ships_as_model_int8(small_run, tmp_path):
    reason = "INT8 ran slower than FP32 on this CPU beyond measurement noise (if_slower: fallback)"
    edge, report = _bundle(small_run, tmp_path, deployed="export", fallback=True, reason=reason)

    manifest = verify_bundle(edge)

    assert manifest["precision"] == "fp32" and manifest["step"] == "export"
    assert manifest["models"] == {"fp32": "model.onnx", "int8": "model_int8.onnx"}
    assert sha256_file(edge / "model.onnx") == report.step("export").artifact_sha256
    assert sha256_file(edge / "model_int8.onnx") == report.step("quantize").artifact_sha256
    assert not (edge / "model_fp32.onnx").exists()
    assert manifest["deployed_reason"].startswith("INT8 ran slower") and manifest["target"] == HOST
    assert manifest["metrics"]["top1_pct"] == report.step("export").metrics.top1_pct


def test_a_run_without_int8_ships_fp32_alone(small_run, tmp_path):
    edge, report = _bundle(small_run, tmp_path, deployed="export", drop="quantize")

    manifest = verify_bundle(edge)

    assert manifest["precision"] == "fp32"
    assert manifest["models"] == {"fp32": "model.onnx", "int8": None} and manifest["target"] is None
    assert sorted(p.name for p in edge.glob("*.onnx")) == ["model.onnx"]


def test_models_of_the_deployed_precision_is_always_model_onnx(int8_bundle, small_run, tmp_path):
    fallback, _ = _bundle(small_run, tmp_path / "a", deployed="export", fallback=True)
    fp32_only, _ = _bundle(small_run, tmp_path / "b", deployed="export", drop="quantize")

    for edge in (int8_bundle, fallback, fp32_only):
        m = _manifest(edge)
        assert m["models"][m["precision"]] == "model.onnx"
        assert set(m["files"]) >= {f for f in m["models"].values() if f}


def test_a_torch_step_cannot_be_bundled(small_run, tmp_path):
    with pytest.raises(CompressError, match="the bundle needs an ONNX model: export must run before bundle"):
        _bundle(small_run, tmp_path, deployed="baseline")
    assert not (tmp_path / "edge").exists()


def test_bundle_has_everything_a_device_needs(int8_bundle):
    manifest = verify_bundle(int8_bundle)

    assert set(manifest["files"]) >= {"model.onnx", "model_fp32.onnx", "labels.json", "preprocess.json"}
    labels = json.loads((int8_bundle / "labels.json").read_text())
    assert labels[0] == "T-shirt/top" and len(labels) == manifest["num_classes"] == 10
    pre = json.loads((int8_bundle / "preprocess.json").read_text())
    assert pre["height"] == pre["width"] == 32 and pre["color"] == "RGB" and len(pre["mean"]) == 3
    assert manifest["versions"]["onnxruntime"]


def test_bundle_runs_without_torch(int8_bundle):
    """Load and run the bundle in a fresh interpreter that is forbidden to import torch."""
    code = f"""
import sys, json
sys.modules['torch'] = None  # any import of torch now fails
import numpy as np, onnxruntime as ort
pre = json.load(open({str(int8_bundle / 'preprocess.json')!r}))
manifest = json.load(open({str(int8_bundle / 'manifest.json')!r}))
for name in manifest['models'].values():
    s = ort.InferenceSession({str(int8_bundle)!r} + '/' + name, providers=['CPUExecutionProvider'])
    x = np.zeros((1, 3, pre['height'], pre['width']), np.float32)
    print(s.run(None, {{pre['input_name']: x}})[0].shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["(1,", "10)", "(1,", "10)"]


def test_ort_mobile_format_is_included(int8_bundle):
    import onnxruntime as ort

    assert (int8_bundle / "model.ort").is_file()
    assert _manifest(int8_bundle)["ort_format"].startswith("model.ort, converted with onnxruntime")
    s = ort.InferenceSession(str(int8_bundle / "model.ort"), providers=["CPUExecutionProvider"])
    assert s.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)


def test_tampered_model_is_refused(int8_bundle, copy_of):
    bundle = copy_of(int8_bundle)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))

    with pytest.raises(CompressError, match="does not match its sha256"):
        verify_bundle(bundle)


def test_missing_labels_is_refused(int8_bundle, copy_of):
    bundle = copy_of(int8_bundle)
    (bundle / "labels.json").unlink()

    with pytest.raises(CompressError, match="has no labels.json"):
        verify_bundle(bundle)


def test_a_file_listed_in_the_manifest_but_missing_is_refused(int8_bundle, copy_of):
    bundle = copy_of(int8_bundle)
    (bundle / "model_fp32.onnx").unlink()

    with pytest.raises(CompressError, match="is missing model_fp32.onnx, listed in its manifest"):
        verify_bundle(bundle)


def test_the_smoke_run_bundles_its_deployed_step(smoke_run, edge_bundle):
    """The whole path: whatever the deploy policy chose on this CPU, model.onnx is that step's model."""
    report = RunReport.load(smoke_run)

    manifest = verify_bundle(edge_bundle)

    deployed = report.deployed()
    assert [s.step for s in report.steps if s.deployed] == [deployed.step] == [manifest["step"]]
    assert sha256_file(edge_bundle / "model.onnx") == deployed.artifact_sha256
    q = report.step("quantize")
    assert manifest["precision"] == ("fp32" if q.fallback else "int8")
    other = manifest["models"]["fp32" if manifest["precision"] == "int8" else "int8"]
    assert sha256_file(edge_bundle / other) == report.step("export" if manifest["precision"] == "int8"
                                                            else "quantize").artifact_sha256
    assert manifest["deployed_reason"] and manifest["target"] == HOST
