"""Quantize on real onnxruntime with the tiny MobileNetV3 and real Fashion-MNIST images: the INT8 graph and its
accuracy, the exact kernel rewrites, and the speed check that never hands over a slower INT8 model silently."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.data import normalize
from compress.errors import CompressError
from compress.export import Export, OnnxModel, run_onnx, session
from compress.pipeline import Baseline
from compress.quantize import Quantize, hardsigmoid_as_clip, pad_depthwise_channels, pad_stem_input
from compress.train import Recipe
from tests.helpers import context, fmnist_subset


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> OnnxModel:
    """A trained tiny MobileNetV3 (hardswish, SE blocks, depthwise convs of 8..288 channels) exported to ONNX."""
    with context(tmp_path_factory.mktemp("fp32")) as ctx:
        model = Baseline(model="tiny_mobilenet_v3", weights="none",
                         recipe=Recipe(epochs=3, batch_size=64, lr=0.2))(None, ctx)
        return Export()(model, ctx)


def _top1(path, data) -> float:
    logits = run_onnx(session(path), normalize(data.test_x).numpy())
    return 100.0 * float((logits.argmax(1) == data.test_y.numpy()).mean())


def test_int8_is_a_smaller_qdq_model_within_two_points_of_fp32(fp32, tmp_path):
    data = fmnist_subset()
    with context(tmp_path, data=data) as ctx:
        int8 = Quantize(calibration_size=256, speed_check_runs=0)(fp32, ctx)
        notes = ctx.notes["quantize"]

    m = onnx.load(str(int8.path))
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Clip"} <= ops and "HardSigmoid" not in ops
    int8_weights = [t for t in m.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) >= 30  # every conv's filter is stored as int8
    assert int8.path.stat().st_size < 0.5 * fp32.path.stat().st_size
    assert notes["calibration_split"] == "train" and notes["calibration_images"] == 256
    assert notes["kernel_rewrites"]["hardsigmoids_as_clip"] >= 10
    assert notes["kernel_rewrites"]["depthwise_convs_padded"] >= 1  # tiny's 36/44/60/72-channel depthwise convs
    assert abs(_top1(int8.path, data) - _top1(fp32.path, data)) <= 2.0


def test_kernel_rewrites_predict_like_the_plain_recipe(fp32, tmp_path):
    data = fmnist_subset()
    with context(tmp_path / "plain", data=data) as ctx:
        plain = Quantize(calibration_size=128, kernel_rewrites=False, speed_check_runs=0)(fp32, ctx)
    with context(tmp_path / "tuned", data=data) as ctx:
        tuned = Quantize(calibration_size=128, speed_check_runs=0)(fp32, ctx)

    x = normalize(data.test_x).numpy()
    a, b = run_onnx(session(plain.path), x), run_onnx(session(tuned.path), x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95
    assert np.abs(a - b).max() < 0.25 * np.abs(a).max()


def test_depthwise_padding_leaves_the_outputs_unchanged(fp32):
    m = onnx.load(str(fp32.path))
    x = normalize(fmnist_subset().test_x[:64]).numpy()
    ref = run_onnx(session(fp32.path), x)

    widened = pad_depthwise_channels(m, 16)

    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in m.graph.node if n.op_type == "Conv"]
    assert widened >= 1 and all(g % 16 == 0 for g in groups if g > 1)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run_onnx(sess, x), ref, rtol=1e-4, atol=1e-4)


def _hardsigmoid_graph(scale: float, zero_point: int, dtype: int) -> onnx.ModelProto:
    """x → Q → DQ → HardSigmoid → Q → DQ → y, as quantize_static writes it."""
    np_type = np.uint8 if dtype == TensorProto.UINT8 else np.int8
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np_type), "z"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "hs"),
             numpy_helper.from_array(np.array(0 if np_type == np.uint8 else -128, np_type), "hz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("HardSigmoid", ["xd"], ["h"], alpha=1 / 6, beta=0.5),
             helper.make_node("QuantizeLinear", ["h", "hs", "hz"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "hs", "hz"], ["y"])]
    graph = helper.make_graph(nodes, "hsig", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("scale, zero_point, dtype", [
    (8 / 255, 32, TensorProto.UINT8),  # range [-1, 7]: widened to reach -3, where hardsigmoid starts
    (30 / 255, 85, TensorProto.UINT8),  # range [-10, 20]
    (12 / 127, 0, TensorProto.INT8),  # symmetric int8 (ARM64's S8S8): only the scale moves
])
def test_hardsigmoid_becomes_an_exact_clip_of_the_codes(scale, zero_point, dtype):
    m = _hardsigmoid_graph(scale, zero_point, dtype)

    assert hardsigmoid_as_clip(m) == 1

    ops = [n.op_type for n in m.graph.node]
    assert "HardSigmoid" not in ops and "Clip" in ops
    onnx.checker.check_model(m, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    s, z = float(inits["s"]), int(inits["z"])
    assert s >= scale and abs(1 / (s / 6) - round(1 / (s / 6))) < 1e-4  # snapped up to a whole number of codes
    x = np.linspace(-15, 25, 4001, dtype=np.float32)
    lo, hi = (0, 255) if dtype == TensorProto.UINT8 else (-128, 127)
    codes = np.clip(np.round(x / s) + z, lo, hi)  # what the rewritten QuantizeLinear produces
    want = np.clip((s * (codes - z)) / 6 + 0.5, 0, 1)  # exact hardsigmoid of the dequantized codes
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, atol=1e-6)


def test_stem_padding_leaves_the_int8_outputs_unchanged(fp32, tmp_path):
    with context(tmp_path) as ctx:
        int8 = Quantize(calibration_size=64, kernel_rewrites=False, speed_check_runs=0)(fp32, ctx)
    m = onnx.load(str(int8.path))
    x = normalize(fmnist_subset().test_x[:64]).numpy()

    assert pad_stem_input(m) == 1

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(run_onnx(sess, x), run_onnx(session(int8.path), x))


def test_slower_int8_warns_loudly_with_both_latencies(fp32, tmp_path):
    # At 32×32 the tiny model is overhead-bound: ORT's plain INT8 graph runs ~0.6× the speed of FP32 here.
    with context(tmp_path) as ctx:
        int8 = Quantize(calibration_size=64, kernel_rewrites=False, speed_check_runs=100)(fp32, ctx)
        notes = ctx.notes["quantize"]

    assert int8.path == tmp_path / "quantize" / "model.onnx"
    assert notes["speed_check_int8_ms"] > notes["speed_check_fp32_ms"] > 0
    assert notes["speed_check_speedup"] < 1 and notes["speed_check_threads"] == 1
    [warning] = notes["warnings"]
    assert "INT8 is" in warning and "slower than FP32 on this CPU" in warning
    assert "model_fp32.onnx" in warning and "--edge-friendly" in warning
    assert f"{notes['speed_check_int8_ms']:.3f} ms vs {notes['speed_check_fp32_ms']:.3f} ms" in warning


def test_slower_int8_falls_back_to_the_fp32_model(fp32, tmp_path):
    with context(tmp_path) as ctx:
        kept = Quantize(calibration_size=64, kernel_rewrites=False, speed_check_runs=100,
                        if_slower="fallback")(fp32, ctx)
        notes = ctx.notes["quantize"]

    assert kept == fp32  # the FP32 input, unchanged
    assert notes["fallback"] is True and notes["speed_check_speedup"] < 1
    assert "kept the FP32 model" in notes["warnings"][0]


@pytest.mark.parametrize("field, value, message", [
    ("calibration", "kl", "unknown calibration 'kl'"),
    ("calibration_size", 0, "calibration_size must be at least 1"),
    ("activation_type", "fp16", "unknown activation_type 'fp16'"),
    ("if_slower", "ignore", "unknown if_slower 'ignore'"),
    ("speed_check_runs", -1, "speed_check_runs must be 0"),
])
def test_bad_options_raise_before_any_work(fp32, tmp_path, field, value, message):
    with context(tmp_path) as ctx, pytest.raises(CompressError, match=message):
        Quantize(**{field: value})(fp32, ctx)
    assert not (tmp_path / "quantize" / "model.onnx").exists()
