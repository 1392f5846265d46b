"""The edge bundle: complete, verifiable without torch, and refusing tampered files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from compress.bundle import verify_bundle
from compress.errors import CompressError


def test_bundle_has_everything_a_device_needs(edge_bundle):
    manifest = verify_bundle(edge_bundle)
    assert manifest["format"] == "compress-edge/1" and manifest["precision"] == "int8" and manifest["opset"] == 17
    assert set(manifest["files"]) >= {"model.onnx", "model_fp32.onnx", "labels.json", "preprocess.json"}
    labels = json.loads((edge_bundle / "labels.json").read_text())
    assert labels[0] == "T-shirt/top" and len(labels) == manifest["num_classes"] == 10
    pre = json.loads((edge_bundle / "preprocess.json").read_text())
    assert pre["height"] == pre["width"] == 32 and pre["color"] == "RGB" and len(pre["mean"]) == 3
    assert manifest["metrics"]["top1_pct"] > 10 and manifest["versions"]["onnxruntime"]


def test_bundle_runs_without_torch(edge_bundle):
    """Load and run the bundle in a fresh interpreter that is forbidden to import torch."""
    code = f"""
import sys, json
sys.modules['torch'] = None  # any import of torch now fails
import numpy as np, onnxruntime as ort
from PIL import Image
pre = json.load(open({str(edge_bundle / 'preprocess.json')!r}))
s = ort.InferenceSession({str(edge_bundle / 'model.onnx')!r}, providers=['CPUExecutionProvider'])
x = np.zeros((1, 3, pre['height'], pre['width']), np.float32)
print(s.run(None, {{pre['input_name']: x}})[0].shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(1, 10)"


def test_tampered_model_is_refused(edge_bundle, copy_of):
    bundle = copy_of(edge_bundle)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CompressError, match="does not match its sha256"):
        verify_bundle(bundle)


def test_missing_labels_is_refused(edge_bundle, copy_of):
    bundle = copy_of(edge_bundle)
    (bundle / "labels.json").unlink()
    with pytest.raises(CompressError, match="has no labels.json"):
        verify_bundle(bundle)


def test_ort_mobile_format_is_included(edge_bundle):
    import onnxruntime as ort

    assert (edge_bundle / "model.ort").is_file()
    s = ort.InferenceSession(str(edge_bundle / "model.ort"), providers=["CPUExecutionProvider"])
    assert s.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)
