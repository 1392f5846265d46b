"""Quantize on real onnxruntime with the tiny MobileNetV3 and real Fashion-MNIST and digits images: the INT8 graph
and its accuracy, the INT8 recipe per target CPU, histogram calibration on any number of images, the run-time check
of the kernel rewrites, and a quantizer that keeps its output off the terminal."""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from compress.core import OnnxModel, run_onnx, session
from compress.data import load_dataset
from compress.errors import CompressError
from compress.export import Export
from compress.host import has_vnni, is_x86
from compress.baseline import Baseline
from compress.prune import Prune
from compress.quantize import (MIN_AGREEMENT_PCT, Quantize, _pad_depthwise, int8_recipe, quantizer_output_to_log,
                               top1_agreement_pct)
from compress.train import Recipe
from tests.helpers import context, fmnist_subset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained tiny MobileNetV3 (hardswish, SE blocks, depthwise convs of 8..288 channels); tests/test_rewrites.py
    imports this fixture and the two below."""
    with context(tmp_path_factory.mktemp("baseline")) as ctx:
        return Baseline(model="tiny_mobilenet_v3", weights="none",
                        recipe=Recipe(epochs=3, batch_size=64, lr=0.2))(None, ctx)


@pytest.fixture(scope="module")
def fp32(trained, tmp_path_factory) -> OnnxModel:
    with context(tmp_path_factory.mktemp("fp32")) as ctx:
        return Export()(trained, ctx)


@pytest.fixture(scope="module")
def pruned_fp32(trained, tmp_path_factory) -> OnnxModel:
    """``trained`` with 30 % of its channels pruned, unrounded: depthwise convs of 28, 34, 84, ... channels."""
    with context(tmp_path_factory.mktemp("pruned")) as ctx:
        return Export()(Prune(ratio=0.3, round_to=1)(trained, ctx), ctx)


def _logits(path, data, reference: bool = False) -> np.ndarray:
    """Logits on the test split; ``reference``: QDQ run as written (DequantizeLinear → float op → QuantizeLinear),
    without this CPU's fused INT8 kernels. That is the arithmetic an ARM64 dot-product kernel does exactly."""
    import onnxruntime as ort

    if not reference:
        return run_onnx(session(path), data.normalize(data.test_x).numpy())
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return run_onnx(sess, data.normalize(data.test_x).numpy())


def _top1(path, data, reference: bool = False) -> float:
    return 100.0 * float((_logits(path, data, reference).argmax(1) == data.test_y.numpy()).mean())


def _graph(path) -> onnx.ModelProto:
    return onnx.load(str(path))


def _activation_zero_point_types(m: onnx.ModelProto) -> set[int]:
    inits = {t.name: t for t in m.graph.initializer}
    return {inits[n.input[2]].data_type for n in m.graph.node if n.op_type == "QuantizeLinear"}


def _depthwise_groups(m: onnx.ModelProto) -> list[int]:
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in m.graph.node if n.op_type == "Conv"]
    return [g for g in groups if g > 1]


def _stem_input_channels(m: onnx.ModelProto) -> int:
    stem = next(n for n in m.graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in m.graph.node if n.output[0] == stem.input[1])
    return next(t for t in m.graph.initializer if t.name == weight_dq.input[0]).dims[1]


# --------------------------------------------------------------------------------------------- the stage


def test_int8_is_a_smaller_qdq_model_within_two_points_of_fp32(fp32, tmp_path):
    data = fmnist_subset()
    with context(tmp_path, data=data) as ctx:
        int8 = Quantize(calibration_size=256)(fp32, ctx)
        notes, warnings = ctx.notes["quantize"], ctx.warnings

    assert int8.path == tmp_path / "quantize" / "model.onnx"  # always the INT8 model; deploy decides what ships
    assert sorted(p.name for p in int8.path.parent.iterdir()) == ["model.onnx"]  # no temporary file left behind
    m = _graph(int8.path)
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Clip"} <= ops
    int8_weights = [t for t in m.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) >= 30  # every conv's filter is stored as int8
    assert int8.path.stat().st_size < 0.5 * fp32.path.stat().st_size
    assert notes["calibration_split"] == "train" and notes["calibration_images"] == 256
    rewrites = notes["kernel_rewrites"]
    assert rewrites["hardsigmoids_as_clip"] >= 20 and rewrites["hardsigmoid_worst_coarsening_pct"] <= 10.0
    assert rewrites["stem_channels_padded"] == 1
    check = notes["rewrite_check"]
    assert check["images"] == 256 and check["top1_agreement_pct"] >= MIN_AGREEMENT_PCT and "quantize" not in warnings
    assert 0 < check["max_logit_diff"] < 0.25 * check["logit_range"]
    assert notes["quantizer_warnings"] == {"count": 0, "unique": []}
    assert abs(_top1(int8.path, data) - _top1(fp32.path, data)) <= 2.0


def test_kernel_rewrites_predict_like_the_plain_recipe_on_test_images(fp32, tmp_path):
    data = fmnist_subset()
    with context(tmp_path / "plain", data=data) as ctx:
        plain = Quantize(calibration_size=128, kernel_rewrites=False)(fp32, ctx)
        assert "kernel_rewrites" not in ctx.notes["quantize"] and "rewrite_check" not in ctx.notes["quantize"]
    with context(tmp_path / "tuned", data=data) as ctx:
        tuned = Quantize(calibration_size=128)(fp32, ctx)

    a, b = _logits(plain.path, data), _logits(tuned.path, data)
    assert top1_agreement_pct(a, b) >= 95.0
    assert np.abs(a - b).max() < 0.25 * np.ptp(a)


@pytest.mark.parametrize("calibration", ["entropy", "percentile"])
def test_histogram_calibration_works_on_1347_digits_images_and_prints_nothing(fp32, tmp_path, capfd, calibration):
    # 1,347 = 42 batches of 32 + 3: ORT's histogram calibrators used to fail on the ragged last batch.
    data = load_dataset("digits", input_size=32)
    capfd.readouterr()
    with context(tmp_path, data=data) as ctx:
        int8 = Quantize(calibration=calibration)(fp32, ctx)
        notes = ctx.notes["quantize"]

    out, err = capfd.readouterr()
    assert out == "" and err == ""  # ORT printed its histogram progress to stdout, which broke --json
    assert notes["calibration_images"] == 1347 == data.train_x.shape[0]
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in _graph(int8.path).graph.node}
    assert top1_agreement_pct(_logits(int8.path, data), _logits(fp32.path, data)) >= 90.0  # a clothes model, on digits


def test_percentile_on_an_untrained_model_says_what_to_do(tmp_path):
    import torch

    from compress.models import create_model

    torch.manual_seed(0)
    with context(tmp_path) as ctx:  # an untrained head: logits ~1e-9 wide, too narrow for 2,048 float32 bins
        untrained = Export(parity_images=8)(create_model("tiny_mobilenet_v3", num_classes=10)[0], ctx)
        with pytest.raises(CompressError, match="percentile calibration failed: .* use --calibration minmax"):
            Quantize(calibration="percentile", calibration_size=64)(untrained, ctx)
    assert not (tmp_path / "quantize" / "model.onnx").exists()


def test_quantizer_warnings_go_to_the_run_log_and_the_notes_never_the_terminal(fp32, tmp_path, capfd, caplog):
    from onnxruntime.quantization import quantize_static

    from compress.quantize import calibration_reader

    x = fmnist_subset().normalize(fmnist_subset().train_x[:32]).numpy()
    capfd.readouterr()
    with caplog.at_level(logging.INFO), quantizer_output_to_log() as caught:
        # without quant_pre_process, ORT warns through the root logger; numpy warns through `warnings`
        quantize_static(str(fp32.path), str(tmp_path / "raw.onnx"), calibration_reader(x))
        np.float32(1) / np.float32(0)

    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert any("pre-processing" in c for c in caught) and "RuntimeWarning: divide by zero encountered" in caught[-1]
    ours = [r for r in caplog.records if r.name == "compress.quantize"]
    assert any("pre-processing" in r.getMessage() and r.levelno == logging.WARNING for r in ours)
    assert any("divide by zero" in r.getMessage() for r in ours)
    assert not any(r.name == "root" for r in caplog.records)  # taken over, not logged twice


def test_a_depthwise_padding_that_fails_parity_is_dropped_loudly(pruned_fp32, tmp_path):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(pruned_fp32.path), str(tmp_path / "pre.onnx"))
    x = np.full((4, 3, 32, 32), np.nan, np.float32)  # outputs that cannot be compared: parity cannot hold
    with context(tmp_path) as ctx:
        padded = _pad_depthwise(tmp_path / "pre.onnx", tmp_path / "padded.onnx", x, int8_recipe("x86_64"), ctx,
                                "quantize")
        notes, [warning] = ctx.notes["quantize"], ctx.warnings["quantize"]

    assert padded == 0 and not (tmp_path / "padded.onnx").exists()
    assert notes["depthwise_padding_failed"]["convs"] >= 3
    assert "was not used" in warning and "generic INT8 depthwise kernel" in warning and "slower" in warning


# ------------------------------------------------------------------------------------------ the target CPU


def test_int8_recipes_for_each_target():
    x86, arm, host = int8_recipe("x86_64"), int8_recipe("arm64"), int8_recipe("host")

    assert (x86.activation_type, x86.reduce_range, x86.depthwise_multiple, x86.pad_stem) == ("uint8", False, 16, True)
    assert (arm.activation_type, arm.reduce_range, arm.depthwise_multiple, arm.pad_stem) == ("int8", False, 8, False)
    assert arm.symmetric_activations and not x86.symmetric_activations
    assert host.target == ("x86_64" if is_x86() else "arm64")
    assert host.reduce_range == (is_x86() and not has_vnni())  # 7-bit weights only where 16-bit sums saturate
    assert "VNNI" in x86.why and "S8S8" in arm.why
    forced = int8_recipe("arm64", "uint8")
    assert forced.activation_type == "uint8" and forced.depthwise_multiple == 8 and "as requested" in forced.why
    with pytest.raises(CompressError, match="unknown INT8 target 'riscv'"):
        int8_recipe("riscv")


@pytest.fixture(scope="module")
def arm64_int8(fp32, tmp_path_factory) -> tuple[OnnxModel, dict, dict]:
    """``fp32`` quantized for arm64 on this machine, with its notes and warnings."""
    with context(tmp_path_factory.mktemp("arm64"), data=fmnist_subset()) as ctx:
        return Quantize(calibration_size=512, target="arm64")(fp32, ctx), ctx.notes["quantize"], ctx.warnings


def test_arm64_target_gives_a_symmetric_s8s8_model_close_to_fp32(fp32, arm64_int8):
    data = fmnist_subset()  # 300 held-out images
    int8, notes, warnings = arm64_int8

    m = _graph(int8.path)
    assert _activation_zero_point_types(m) == {TensorProto.INT8}
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert all(inits[n.input[2]] == 0 for n in m.graph.node if n.op_type == "QuantizeLinear")  # symmetric
    assert _stem_input_channels(m) == 3 and "Pad" not in {n.op_type for n in m.graph.node}
    assert notes["target"] == "arm64" and notes["recipe"]["target"] == "arm64"
    assert notes["recipe"]["activation_type"] == "int8" and notes["kernel_rewrites"]["stem_channels_padded"] == 0
    # On x86-64 without VNNI, ORT's fused S8S8 kernels saturate (30 % instead of 67 % here), so this machine runs
    # the QDQ graph as written; test_arm64_int8_on_emulated_cortex_a76 runs it with ORT's ARM64 kernels.
    assert abs(_top1(int8.path, data, reference=True) - _top1(fp32.path, data)) <= 2.0
    if is_x86():
        [warning] = warnings["quantize"]
        assert "built for arm64 on this x86_64 machine" in warning and "latency here" in warning


@pytest.mark.slow
def test_arm64_int8_on_emulated_cortex_a76_predicts_like_fp32(fp32, arm64_int8, tmp_path):
    from tests import arm_rootfs

    try:
        arm = arm_rootfs.ensure_arm_python(arm_rootfs.host_pins(), log=lambda m: None)
    except arm_rootfs.ArmRootfsError as e:
        pytest.fail(f"ARM check cannot run: {e}", pytrace=False)
    data = fmnist_subset()
    np.save(tmp_path / "x.npy", data.normalize(data.test_x).numpy())
    code = ("import sys, numpy as np, onnxruntime as ort; x = np.load(sys.argv[1] + '/x.npy')\n"
            "for i, p in enumerate(sys.argv[2:]):\n"
            "    np.save(f'{sys.argv[1]}/{i}.npy', ort.InferenceSession(p).run(None, {'input': x})[0])")

    result = arm.run(["-c", code, str(tmp_path), str(fp32.path), str(arm64_int8[0].path)], timeout=600)

    assert result.returncode == 0, result.stderr[-2000:]
    y = data.test_y.numpy()
    top1 = [100 * float((np.load(tmp_path / f"{i}.npy").argmax(1) == y).mean()) for i in (0, 1)]
    assert abs(top1[1] - top1[0]) <= 2.0


def test_arm64_pads_depthwise_convs_to_8_and_x86_64_to_16(pruned_fp32, tmp_path):
    with context(tmp_path / "arm") as ctx:
        arm = Quantize(calibration_size=128, target="arm64")(pruned_fp32, ctx)
        arm_notes = ctx.notes["quantize"]
    with context(tmp_path / "x86") as ctx:
        x86 = Quantize(calibration_size=128, target="x86_64")(pruned_fp32, ctx)
        x86_notes = ctx.notes["quantize"]

    arm_groups, x86_groups = _depthwise_groups(_graph(arm.path)), _depthwise_groups(_graph(x86.path))
    assert arm_notes["kernel_rewrites"]["depthwise_convs_padded"] >= 3
    assert all(g % 8 == 0 for g in arm_groups) and any(g % 16 for g in arm_groups)
    assert all(g % 16 == 0 for g in x86_groups)
    x86_model = _graph(x86.path)
    assert _activation_zero_point_types(x86_model) == {TensorProto.UINT8} and _stem_input_channels(x86_model) == 4
    assert x86_notes["recipe"] == asdict(int8_recipe("x86_64")) and x86_notes["reduce_range"] is False


@pytest.mark.parametrize("field, value, message", [
    ("calibration", "kl", "unknown calibration 'kl'"),
    ("calibration_size", 0, "calibration_size must be at least 1"),
    ("activation_type", "fp16", "unknown activation_type 'fp16'"),
    ("target", "aarch64", "unknown INT8 target 'aarch64': choose one of host, x86_64, arm64"),
    ("if_slower", "ignore", "unknown if_slower 'ignore'"),
    ("speed_check_runs", -1, "speed_check_runs must be 0"),
])
def test_bad_options_raise_before_any_work(fp32, tmp_path, field, value, message):
    with context(tmp_path) as ctx, pytest.raises(CompressError, match=message):
        Quantize(**{field: value})(fp32, ctx)
    assert not (tmp_path / "quantize" / "model.onnx").exists()
