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
from compress.ort_output import quantizer_output_to_log
from compress.quantize import (MIN_AGREEMENT_PCT, Quantize, _pad_depthwise, calibration_images, int8_recipe,
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
        return Export()(Prune(ratio=0.3, round_to=1, allocation="uniform")(trained, ctx), ctx)


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
    assert not arm.symmetric_activations and not x86.symmetric_activations  # zero points kept (more accurate)
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


def test_arm64_target_gives_an_s8s8_model_close_to_fp32(fp32, arm64_int8):
    data = fmnist_subset()  # 300 held-out images
    int8, notes, warnings = arm64_int8

    m = _graph(int8.path)
    assert _activation_zero_point_types(m) == {TensorProto.INT8}
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    weights = {n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].ndim == 4}
    dq_weights = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert dq_weights and all((inits[n.input[2]] == 0).all() for n in dq_weights if len(n.input) > 2)  # symmetric
    assert any(inits[n.input[2]] != 0 for n in m.graph.node if n.op_type == "QuantizeLinear")  # activations: not
    assert _stem_input_channels(m) == 3 and "Pad" not in {n.op_type for n in m.graph.node}
    assert notes["target"] == "arm64" and notes["recipe"]["target"] == "arm64"
    assert notes["recipe"]["activation_type"] == "int8" and notes["kernel_rewrites"]["stem_channels_padded"] == 0
    # On x86-64 without VNNI, ORT's fused S8S8 kernels saturate (30 % instead of 67 % here), so this machine runs
    # the QDQ graph as written; test_arm64_int8_on_emulated_cortex_a76 runs it with ORT's ARM64 kernels.
    assert abs(_top1(int8.path, data, reference=True) - _top1(fp32.path, data)) <= 2.0
    if is_x86():
        [warning] = warnings["quantize"]
        assert "built for arm64 on this x86_64 machine" in warning and "latency here" in warning


TEST_IMAGES = 5_000  # the emulated check's share of the 10,000 test images


@pytest.mark.slow
def test_arm64_int8_on_emulated_cortex_a76_on_5000_test_images(fp32, arm64_int8, tmp_path):
    """The arm64-targeted INT8 model made on this machine, run by the real aarch64 onnxruntime (emulated Cortex-A76)
    on 5,000 Fashion-MNIST test images: it predicts what its own Q/DQ arithmetic gives on x86 (the arithmetic
    ARM's dot-product kernels do exactly), and is about as accurate as the host-targeted INT8 model. The FP32 model
    runs on the first 1,000 as the cross-check that both CPUs see the same inputs (emulation costs ~4 ms an image,
    so half the test split keeps this under half a minute)."""
    from tests import arm_rootfs

    # Setup
    try:
        arm = arm_rootfs.ensure_arm_python(arm_rootfs.host_pins(), log=lambda m: None)
    except arm_rootfs.ArmRootfsError as e:
        pytest.fail(f"ARM check cannot run: {e}", pytrace=False)
    with context(tmp_path / "host") as ctx:  # calibrated on the same images as arm64_int8
        host_int8 = Quantize(calibration_size=512)(fp32, ctx)
    test_set = load_dataset("fashion-mnist", input_size=32, limit_train=512, limit_test=TEST_IMAGES)
    np.save(tmp_path / "x.npy", test_set.normalize(test_set.test_x).numpy())
    code = ("import sys, numpy as np, onnxruntime as ort; x = np.load(sys.argv[1] + '/x.npy')\n"
            "for i, (p, n) in enumerate(zip(sys.argv[2::2], sys.argv[3::2])):\n"
            "    np.save(f'{sys.argv[1]}/{i}.npy', ort.InferenceSession(p).run(None, {'input': x[:int(n)]})[0])")
    fp32_images = 1_000

    # Execute
    result = arm.run(["-c", code, str(tmp_path), str(fp32.path), str(fp32_images), str(arm64_int8[0].path),
                      str(TEST_IMAGES)], timeout=900)

    # Assert
    assert result.returncode == 0, result.stderr[-2000:]
    y = test_set.test_y.numpy()
    assert len(y) == TEST_IMAGES
    on_arm = {name: np.load(tmp_path / f"{i}.npy") for i, name in enumerate(("fp32", "int8"))}
    assert len(on_arm["int8"]) == TEST_IMAGES
    as_written = _logits(arm64_int8[0].path, test_set, reference=True)
    top1 = {name: 100 * float((v.argmax(1) == y[:len(v)]).mean()) for name, v in on_arm.items()}
    host_fp32 = _logits(fp32.path, test_set)[:fp32_images]
    assert top1_agreement_pct(on_arm["fp32"], host_fp32) >= 99.9  # the same FP32 model on both CPUs
    assert np.abs(on_arm["fp32"] - host_fp32).max() < 1e-3 * np.abs(host_fp32).max()
    assert top1_agreement_pct(on_arm["int8"], as_written) >= 99.0
    assert abs(top1["int8"] - 100 * float((as_written.argmax(1) == y).mean())) <= 0.2
    # Host INT8 differs in recipe (U8S8; 7-bit weights on x86 CPUs without VNNI): close, not equal.
    assert abs(top1["int8"] - _top1(host_int8.path, test_set)) <= 1.0


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
    assert "weight_bits" not in x86_notes  # built for a device: this machine's accuracy does not choose its weights


@pytest.mark.parametrize("field, value, message", [
    ("calibration", "kl", "unknown calibration 'kl'"),
    ("calibration_size", 0, "calibration_size must be at least 1"),
    ("activation_type", "fp16", "unknown activation_type 'fp16'"),
    ("target", "aarch64", "unknown INT8 target 'aarch64': choose one of host, x86_64, arm64"),
    ("if_slower", "ignore", "unknown if_slower 'ignore'"),
    ("speed_check_runs", -1, "speed_check_runs must be 0"),
    ("weight_bits", 4, "weight_bits must be 8, 7 or null"),
])
def test_bad_options_raise_before_any_work(fp32, tmp_path, field, value, message):
    with context(tmp_path) as ctx, pytest.raises(CompressError, match=message):
        Quantize(**{field: value})(fp32, ctx)
    assert not (tmp_path / "quantize" / "model.onnx").exists()


# --------------------------------------------------------------------------- mixed precision under a budget

def _weights_float(m: onnx.ModelProto, name: str) -> bool | None:
    """Whether node ``name``'s weight (input 1 of a Conv/Gemm/MatMul) is a float initializer, as for a node kept
    in FP32, rather than a DequantizeLinear of INT8 weights; None for other nodes."""
    node = next(n for n in m.graph.node if n.name == name)
    if node.op_type not in ("Conv", "Gemm", "MatMul"):
        return None
    floats = {t.name for t in m.graph.initializer if t.data_type == TensorProto.FLOAT}
    return node.input[1] in floats


def test_node_harm_ranks_real_nodes_by_lost_fidelity(fp32, tmp_path):
    from compress.calibration import held_out_images
    from compress.mixed import SQNR_CAP_DB, node_harm
    from compress.rewrites import name_nodes

    # Setup: the FP32 model pre-processed as Quantize does, and its plain QDQ model
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = fmnist_subset()
    quant_pre_process(str(fp32.path), str(tmp_path / "pre.onnx"))
    name_nodes(tmp_path / "pre.onnx")
    Quantize()._quantize_static(tmp_path / "pre.onnx", tmp_path / "qdq.onnx", calibration_images(data, 256, 0),
                                int8_recipe("host"))

    # Execute
    harm = node_harm(tmp_path / "pre.onnx", tmp_path / "qdq.onnx", held_out_images(data, 256, 0)[0])

    # Assert
    names = {n.name: n.op_type for n in _graph(tmp_path / "pre.onnx").graph.node}
    assert len(harm) >= 20 and all(names[r["node"]] == r["op"] for r in harm)
    assert [r["harm_db"] for r in harm] == sorted((r["harm_db"] for r in harm), reverse=True)
    assert all(r["harm_db"] >= 0 and r["sqnr_db"] <= SQNR_CAP_DB for r in harm)
    assert harm[0]["harm_db"] > 0 and any(r["op"] == "Conv" for r in harm)


@pytest.mark.parametrize("budget", [0.0, 100.0])
def test_max_drop_pt_keeps_the_most_harmful_nodes_in_fp32_until_int8_is_within_it(fp32, tmp_path, budget):
    from compress.calibration import held_out_images
    from compress.mixed import top1_pct

    # Execute
    with context(tmp_path) as ctx:
        int8 = Quantize(calibration_size=256, max_drop_pt=budget, speed_check_runs=0)(fp32, ctx)
        notes = ctx.notes["quantize"]
        record = notes["mixed_precision"]

    # Assert: the record's numbers are the files', the ten worst nodes are shown, and kept nodes are float
    x, y = held_out_images(fmnist_subset(), 256, 0)
    assert record["held_out_images"] == len(y) == 1500 - 256 and record["budget_pt"] == budget
    assert record["fp32_top1_pct"] == pytest.approx(top1_pct(fp32.path, x, y, 1), abs=0.01)
    assert record["int8_top1_pct"] == pytest.approx(top1_pct(int8.path, x, y, 1), abs=0.01)
    assert len(record["worst_nodes"]) == 10
    m = _graph(int8.path)
    assert all(_weights_float(m, name) in (True, None) for name in record["kept_fp32"])
    assert not any(_weights_float(m, r["node"]) for r in record["worst_nodes"] if r["node"] not in record["kept_fp32"])
    tried = record.get("calibration")  # minmax INT8 that loses held-out images gets a try from percentile ranges
    if tried:
        assert tried["minmax_top1_pct"] < record["fp32_top1_pct"] and notes["calibration"] == tried["chosen"]
        assert record["plain_int8_top1_pct"] == tried[f"{tried['chosen']}_top1_pct"]
    else:
        assert notes["calibration"] == "minmax" and record["plain_int8_top1_pct"] >= record["fp32_top1_pct"]
    drop = record["fp32_top1_pct"] - record["int8_top1_pct"]
    if budget == 100.0 or not record["attempts"]:
        assert record["kept_fp32"] == [] and record["attempts"] == [] and "nothing kept" in record["outcome"]
    elif record["kept_fp32"]:  # a model inside the budget was found: it is the one written
        assert drop <= budget and record["attempts"][-1]["kept_fp32"] == len(record["kept_fp32"])
        k = record["attempts"][-1]["harmful_nodes"]  # the k most harmful nodes, each with the nodes reading it
        assert set([r["node"] for r in record["worst_nodes"] if r["harm_db"] > 0][:k]) <= set(record["kept_fp32"])
    else:
        assert "plain INT8 model stays" in record["outcome"] and drop > budget


def test_a_second_calibration_ships_only_if_it_gets_more_held_out_images_right(fp32, pruned_fp32, tmp_path):
    """mixed.second_calibration against the unpruned FP32 model, on INT8 models of the pruned, unrecovered one (so
    that they surely lose images): the model that gets more held-out images right (on a tie, logits closer to FP32's)
    is the one left in place; a percentile build that fails leaves minmax; INT8 that loses nothing tries nothing."""
    import shutil

    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as sqnr

    from compress.calibration import held_out_images
    from compress.core import sha256_file
    from compress.mixed import second_calibration

    with context(tmp_path / "minmax") as ctx:
        minmax = Quantize(calibration_size=256, speed_check_runs=0)(pruned_fp32, ctx).path
    with context(tmp_path / "percentile") as ctx:
        percentile = Quantize(calibration="percentile", calibration_size=256, speed_check_runs=0)(pruned_fp32, ctx).path
    x, y = held = held_out_images(fmnist_subset(), 256, 0)
    ref = run_onnx(session(fp32.path), x)
    logits = {name: run_onnx(session(path), x) for name, path in [("minmax", minmax), ("percentile", percentile)]}
    scores = {name: (round(100 * float((v.argmax(1) == y).mean()), 2), round(float(sqnr(ref, v)), 2))
              for name, v in logits.items()}

    # Execute
    int8 = tmp_path / "int8.onnx"
    shutil.copy(minmax, int8)
    record = second_calibration(fp32.path, int8, held, build=lambda out: shutil.copy(percentile, out), threads=1,
                                work=tmp_path)
    kept = sha256_file(int8)
    shutil.copy(minmax, int8)

    def fails(out):
        raise CompressError("percentile calibration failed: too narrow")

    failed = second_calibration(fp32.path, int8, held, build=fails, threads=1, work=tmp_path)

    # Assert
    assert scores["minmax"][0] < record["fp32_top1_pct"]  # the pruned model's INT8 loses images: a try was made
    assert (record["minmax_top1_pct"], record["minmax_logit_sqnr_db"]) == scores["minmax"]
    assert (record["percentile_top1_pct"], record["percentile_logit_sqnr_db"]) == scores["percentile"]
    assert record["chosen"] == ("percentile" if scores["percentile"] > scores["minmax"] else "minmax")
    assert kept == sha256_file({"minmax": minmax, "percentile": percentile}[record["chosen"]])
    assert failed["chosen"] == "minmax" and "too narrow" in failed["outcome"]
    assert sha256_file(int8) == sha256_file(minmax)  # the failed try left the minmax model
    assert second_calibration(fp32.path, fp32.path, held, build=fails, threads=1, work=tmp_path) is None


def test_int8_under_a_budget_calibrates_once_per_method_tried(fp32, tmp_path):
    """The weight-width choice, the depthwise padding and every mixed-precision candidate quantize from the ranges
    the plain INT8 model was calibrated with (keeping nodes in FP32 changes no FP32 tensor): one calibration per
    method tried. Each calibration of EfficientNet-B0 on 60,000 images with percentile ranges took about 3.5
    minutes, and the search used to calibrate every candidate again."""
    from dataclasses import dataclass

    from compress.mixed import SECOND_CALIBRATION

    calibrated: list[str] = []

    @dataclass(frozen=True, kw_only=True)
    class CountingCalibrations(Quantize):
        def _quantize_static(self, src, out, calib, recipe, table=None, exclude=None):
            if calib is not None and (table is None or not table.is_file()):
                calibrated.append(self.calibration)
            super()._quantize_static(src, out, calib, recipe, table=table, exclude=exclude)

    with context(tmp_path) as ctx:  # 16 calibration images: ranges too narrow, so INT8 loses held-out images
        CountingCalibrations(calibration_size=16, max_drop_pt=0.0, speed_check_runs=0)(fp32, ctx)
        record = ctx.notes["quantize"]["mixed_precision"]

    assert record["attempts"]  # a candidate was quantized: without the reuse it would calibrate again
    assert calibrated == ["minmax"] + ([SECOND_CALIBRATION] if "calibration" in record else [])


def test_max_drop_pt_must_not_be_negative(fp32, tmp_path):
    with context(tmp_path) as ctx, pytest.raises(CompressError, match="max_drop_pt must be 0 or more"):
        Quantize(max_drop_pt=-0.5)(fp32, ctx)


def test_max_drop_pt_without_kernel_rewrites_still_ranks_nodes(fp32, tmp_path):
    with context(tmp_path) as ctx:
        Quantize(calibration_size=256, max_drop_pt=100.0, kernel_rewrites=False, speed_check_runs=0)(fp32, ctx)
        record = ctx.notes["quantize"]["mixed_precision"]
    assert len(record["worst_nodes"]) == 10 and record["kept_fp32"] == []
    assert sorted(p.name for p in (tmp_path / "quantize").iterdir()) == ["model.onnx"]  # no candidate left behind


def test_a_budget_on_a_small_training_split_keeps_a_fifth_out_of_calibration_for_mixed_precision():
    from compress.calibration import HELD_OUT_IMAGES, held_out_images

    plain, budget = Quantize(), Quantize(max_drop_pt=1.0)
    assert plain.calibration_count(1_584, 224) == 1_584  # no budget: every image calibrates (not the 2,048 asked)
    assert budget.calibration_count(1_584, 224) == 1_584 - 316
    assert budget.calibration_count(60_000, 224) == 2048  # big splits have images left over anyway
    data = load_dataset("digits", input_size=32)
    count = budget.calibration_count(data.train_x.shape[0], 32)
    assert len(held_out_images(data, count, 0)[1]) == min(HELD_OUT_IMAGES, data.train_x.shape[0] - count) > 0
