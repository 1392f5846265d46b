"""Each graph rewrite of compress.rewrites against the graph it replaces, on real onnxruntime and real Fashion-MNIST
images: bit-exact where the rewrite is exact, within a stated tolerance where it re-rounds (hardsigmoid as clip)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.core import OnnxModel, run_onnx, session
from compress.quantize import Quantize, calibration_reader, top1_agreement_pct
from compress.rewrites import (MAX_COARSENING, drop_unused_initializers, hardsigmoid_as_clip, pad_depthwise_channels,
                               pad_stem_input, short_tensor_names)
from tests.helpers import context, fmnist_subset
from tests.test_quantize import fp32, pruned_fp32, trained  # noqa: F401  (shared module fixtures: one training)


@pytest.fixture(scope="module")
def plain_int8(fp32, tmp_path_factory) -> OnnxModel:
    """ORT's QDQ INT8 of ``fp32`` without any rewrite."""
    with context(tmp_path_factory.mktemp("plain")) as ctx:
        return Quantize(calibration_size=256, kernel_rewrites=False)(fp32, ctx)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    data = fmnist_subset()
    return data.normalize(data.test_x).numpy()  # 300 held-out images


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return run_onnx(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), x)


# ------------------------------------------------------------------------------------- hardsigmoid as clip


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
    (8 / 255, 32, TensorProto.UINT8),  # range [-1, 7]: widened to reach -3, where hardsigmoid starts (25 % coarser)
    (30 / 255, 85, TensorProto.UINT8),  # range [-10, 20]
    (12 / 127, 0, TensorProto.INT8),  # symmetric int8 (ARM64's S8S8): only the scale moves
])
def test_hardsigmoid_becomes_a_clip_that_is_exact_on_the_snapped_grid(scale, zero_point, dtype):
    m = _hardsigmoid_graph(scale, zero_point, dtype)

    done = hardsigmoid_as_clip(m, max_coarsening=0.5)

    assert done.rewritten == 1 and done.skipped_coarse == 0
    ops = [n.op_type for n in m.graph.node]
    assert "HardSigmoid" not in ops and "Clip" in ops
    onnx.checker.check_model(m, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    s, z = float(inits["s"]), int(inits["z"])
    assert s >= scale and abs(1 / (s / 6) - round(1 / (s / 6))) < 1e-4  # snapped up to a whole number of codes
    assert done.worst_coarsening == pytest.approx(s / scale - 1, rel=1e-5)
    x = np.linspace(-15, 25, 4001, dtype=np.float32)
    lo, hi = (0, 255) if dtype == TensorProto.UINT8 else (-128, 127)
    codes = np.clip(np.round(x / s) + z, lo, hi)  # what the rewritten QuantizeLinear produces
    want = np.clip((s * (codes - z)) / 6 + 0.5, 0, 1)  # exact hardsigmoid of the dequantized codes
    np.testing.assert_allclose(_run(m, x), want, atol=1e-6)


def test_hardsigmoid_is_left_alone_when_snapping_would_coarsen_its_input_past_the_limit():
    m = _hardsigmoid_graph(8 / 255, 32, TensorProto.UINT8)  # needs a 25 % coarser grid
    before = m.SerializeToString()

    done = hardsigmoid_as_clip(m)

    assert MAX_COARSENING == 0.10
    assert done.rewritten == 0 and done.skipped_coarse == 1 and done.worst_coarsening == 0.0
    assert m.SerializeToString() == before  # untouched


def test_hardsigmoid_rewrite_of_a_real_int8_model_predicts_like_it(plain_int8, images):
    m = onnx.load(str(plain_int8.path))
    ref = _run(m, images)

    done = hardsigmoid_as_clip(m)

    assert done.rewritten >= 20 and 0 < done.worst_coarsening <= MAX_COARSENING
    assert "HardSigmoid" not in {n.op_type for n in m.graph.node} or done.skipped_coarse > 0
    got = _run(m, images)
    assert top1_agreement_pct(ref, got) >= 95.0  # re-rounding flips only borderline images
    assert np.abs(got - ref).max() < 0.15 * np.ptp(ref)


# ---------------------------------------------------------------------------------------- exact rewrites


def _depthwise_groups(m: onnx.ModelProto) -> list[int]:
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in m.graph.node if n.op_type == "Conv"]
    return [g for g in groups if g > 1]


@pytest.mark.parametrize("multiple", [16, 8])
def test_depthwise_padding_leaves_the_fp32_outputs_unchanged(pruned_fp32, images, multiple):
    m = onnx.load(str(pruned_fp32.path))
    assert any(g % 8 for g in _depthwise_groups(m))
    ref = run_onnx(session(pruned_fp32.path), images)

    widened = pad_depthwise_channels(m, multiple)

    assert widened >= 3 and all(g % multiple == 0 for g in _depthwise_groups(m))
    onnx.checker.check_model(m, full_check=True)
    np.testing.assert_allclose(_run(m, images), ref, rtol=1e-4, atol=1e-4)


def test_stem_padding_leaves_the_int8_outputs_bit_exact(plain_int8, images):
    m = onnx.load(str(plain_int8.path))

    assert pad_stem_input(m) == 1

    stem = next(n for n in m.graph.node if n.op_type == "Conv")
    weights = {t.name: t for t in m.graph.initializer}
    dq = next(n for n in m.graph.node if n.output[0] == stem.input[1])
    assert weights[dq.input[0]].dims[1] == 4
    np.testing.assert_array_equal(_run(m, images), run_onnx(session(plain_int8.path), images))


def test_short_tensor_names_keep_the_outputs_and_shrink_the_file(fp32, images, tmp_path):
    from onnxruntime.quantization import quantize_static

    quantize_static(str(fp32.path), str(tmp_path / "ort.onnx"), calibration_reader(images[:64]))  # ORT's long names
    m = onnx.load(str(tmp_path / "ort.onnx"))
    size = len(m.SerializeToString())

    short_tensor_names(m)

    onnx.checker.check_model(m, full_check=True)
    internal = [o for n in m.graph.node for o in n.output if o != "logits"]
    assert internal and all(len(o) <= 4 for o in internal)
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    assert len(m.SerializeToString()) < 0.9 * size
    np.testing.assert_array_equal(_run(m, images), run_onnx(session(tmp_path / "ort.onnx"), images))


def test_dropping_the_initializers_a_rewrite_left_behind_changes_nothing(plain_int8, images):
    m = onnx.load(str(plain_int8.path))
    hardsigmoid_as_clip(m)  # leaves each removed Q's scale and zero point unused
    ref = _run(m, images)

    dropped = drop_unused_initializers(m)

    assert dropped >= 2
    used = {i for n in m.graph.node for i in n.input}
    assert all(t.name in used for t in m.graph.initializer)
    np.testing.assert_array_equal(_run(m, images), ref)
