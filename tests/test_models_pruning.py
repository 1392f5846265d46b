"""timm and packaged models through the real torch-pruning → ONNX → ONNX Runtime path, on real images.

Pruning keeps ``head_layer(model)`` whole (the class count must not change), and the pruned model
exports at opset 17 and matches torch within 1e-3·max(1, |logit|), the tolerance ``Export`` checks.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.data import load_dataset
from compress.models import create_model, head_layer


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", input_size=32)


def prune_export_and_compare(model, data, tmp_path, *, ratio=0.5):
    import onnxruntime as ort
    import torch_pruning as tp

    model = model.eval()
    head = head_layer(model)
    params_before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(
        model, torch.zeros(1, 3, 32, 32), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=[head], round_to=8)
    pruner.step()
    params_after = sum(p.numel() for p in model.parameters())

    path = tmp_path / "pruned.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = data.normalize(data.test_x[:64])
    with torch.inference_mode():
        ref = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    return head, params_before, params_after, ref, got


@pytest.mark.parametrize("spec, weights", [
    ("timm:mobilenetv4_conv_small", "none"),
    ("efficientnet_lite0", "imagenet"),
    (f"{Path(__file__).parent / 'fixtures' / 'tiny_net.py'}:build", "none"),
], ids=["mobilenetv4_conv_small", "efficientnet_lite0", "tiny_net"])
def test_pruned_model_exports_and_matches_onnx_runtime(spec, weights, digits, tmp_path):
    model, _ = create_model(spec, num_classes=len(digits.classes), weights=weights)

    head, before, after, ref, got = prune_export_and_compare(model, digits, tmp_path)

    assert head_layer(model) is head and head.out_features == 10  # the classifier was never pruned
    assert ref.shape == got.shape == (64, 10)
    assert after < 0.45 * before  # ratio 0.5 of channels: well under half the parameters remain
    assert np.abs(got - ref).max() <= 1e-3 * max(1.0, float(np.abs(ref).max()))
