"""Export on a real trained model: a valid ONNX file whose logits match torch on real images, one definition of
MACs for both kinds of model, and no artifact left behind when the parity check fails."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from compress.core import OnnxModel, run_onnx, session
from compress.errors import CompressError
from compress.export import Export
from compress.measure import onnx_params_macs, torch_macs
from tests.helpers import context, fmnist_subset, params, trained_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_tiny(tmp_path_factory.mktemp("base"))


def test_export_matches_torch_on_real_images(trained, tmp_path):
    data = fmnist_subset()

    with context(tmp_path) as ctx:
        onnx_model = Export()(trained, ctx)

    notes = ctx.notes["export"]
    assert isinstance(onnx_model, OnnxModel) and onnx_model.path == tmp_path / "export" / "model.onnx"
    onnx.checker.check_model(str(onnx_model.path))
    x = data.normalize(data.test_x[:64])
    with torch.inference_mode():
        ref = trained(x).numpy()
    np.testing.assert_allclose(run_onnx(session(onnx_model.path), x.numpy()), ref, atol=1e-3)
    assert notes["parity_max_abs_diff"] <= notes["parity_limit"] and notes["opset"] == 17
    assert notes["parity_images"] == 256


def test_onnx_and_torch_count_the_same_macs(trained, tmp_path):
    with context(tmp_path) as ctx:
        onnx_model = Export()(trained, ctx)

    onnx_params, macs = onnx_params_macs(onnx_model.path, 32)
    assert macs == torch_macs(trained, 32)  # one definition of MACs for both kinds of model
    assert abs(onnx_params - params(trained)) / params(trained) < 0.02  # BN folded into convs


def test_macs_are_counted_when_shape_inference_stops_at_a_computed_pad(tmp_path):
    """EfficientNet-Lite's TF "same" padding exports as Pad nodes whose pads come from a chain of ops; ONNX shape
    inference gives up after the first one, and the count fell to 0 MACs. Shapes now come from a run."""
    from compress.models import create_model

    net, _ = create_model("efficientnet_lite0", num_classes=3, weights="none")
    with context(tmp_path, data=fmnist_subset(64, 8)) as ctx:
        exported = Export()(net.eval(), ctx)

    assert "Pad" in {n.op_type for n in onnx.load(str(exported.path)).graph.node}
    assert onnx_params_macs(exported.path, 32)[1] == torch_macs(net, 32) > 0


def test_same_padding_folds_into_the_conv_in_onnx_runtime(tmp_path):
    """torch's exporter wrote EfficientNet-Lite's "same" Pads as Pad(x, pads, ""), and ONNX Runtime's PadFusion
    refused them for that empty third input: each stayed a kernel, with layout reorders around it in FP32 and a Q/DQ
    pair in INT8. Export drops the empty input, so ONNX Runtime's basic optimizations (which the INT8 stage's
    pre-processing also runs) fold every Pad into its conv."""
    import onnxruntime as ort

    from compress.models import create_model

    net, _ = create_model("efficientnet_lite0", num_classes=3, weights="none")
    with context(tmp_path, data=fmnist_subset(64, 8)) as ctx:
        exported = Export()(net.eval(), ctx)
    pads = [n for n in onnx.load(str(exported.path)).graph.node if n.op_type == "Pad"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "basic.onnx")
    ort.InferenceSession(str(exported.path), so, providers=["CPUExecutionProvider"])

    assert pads and all("" not in n.input for n in pads)
    assert "Pad" not in {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
    assert ctx.notes["export"]["parity_max_abs_diff"] <= ctx.notes["export"]["parity_limit"]


def test_the_batch_dimension_is_dynamic(trained, tmp_path):
    with context(tmp_path) as ctx:
        onnx_model = Export()(trained, ctx)

    s = session(onnx_model.path)
    for n in (1, 7):
        assert s.run(None, {"input": np.zeros((n, 3, 32, 32), np.float32)})[0].shape == (n, 10)


def test_export_parity_failure_stops_with_a_clear_message(trained, tmp_path):
    with context(tmp_path) as ctx, pytest.raises(CompressError, match="ONNX parity check failed") as e:
        Export(atol=1e-12)(trained, ctx)

    assert "\n" not in str(e.value)
    assert not (tmp_path / "export" / "model.onnx").exists()  # no artifact that looks complete


def test_unsupported_opset_is_refused_before_exporting(trained, tmp_path):
    with context(tmp_path) as ctx, pytest.raises(CompressError, match="opset 12 is not supported: use 13..21"):
        Export(opset=12)(trained, ctx)

    assert not (tmp_path / "export" / "model.onnx").exists()
