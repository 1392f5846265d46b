"""8-bit or 7-bit INT8 weights (compress.weight_bits) on real onnxruntime, with the tiny MobileNetV3 of
tests/test_quantize.py and real Fashion-MNIST and digits images: on an x86-64 host the quantize step keeps the width
that gets more held-out training images right; ``weight_bits`` 8 or 7 fixes it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from compress.calibration import held_out_images
from compress.data import load_dataset
from compress.host import has_vnni, host_arch
from compress.mixed import top1_pct
from compress.quantize import Quantize
from compress.weight_bits import HELD_OUT, held_out_count
from tests.helpers import context, fmnist_subset
from tests.test_quantize import fp32, trained  # noqa: F401  (shared module fixtures: one training)

X86_HOST = host_arch() == "x86_64"


def _largest_weight(path) -> int:
    """The largest |value| among the model's INT8 conv filters: at most 64 with 7-bit weights, 127 with 8-bit."""
    m = onnx.load(str(path))
    return max(int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max()) for t in m.graph.initializer
               if t.data_type == TensorProto.INT8 and len(t.dims) == 4)


def test_an_x86_host_keeps_the_width_that_gets_more_held_out_images_right(fp32, tmp_path):
    data = fmnist_subset()
    with context(tmp_path, data=data) as ctx:
        int8 = Quantize(calibration_size=256)(fp32, ctx)
        notes = ctx.notes["quantize"]

    assert sorted(p.name for p in int8.path.parent.iterdir()) == ["model.onnx"]  # the other width left nothing
    if not X86_HOST:  # ARM64: one recipe, no choice to make
        assert "weight_bits" not in notes and notes["reduce_range"] is False
        return
    record = notes["weight_bits"]
    # the training images that did not calibrate
    assert record["held_out_images"] == min(held_out_count(data.input_size), 1500 - 256)
    assert record["default"] == ("8-bit" if has_vnni() else "7-bit")
    eight, seven = record["8-bit_top1_pct"], record["7-bit_top1_pct"]
    # the other width must get strictly more right to replace the default
    chose_seven = seven > eight if record["default"] == "8-bit" else not eight > seven
    assert record["reduce_range"] is chose_seven is notes["reduce_range"]
    # what ships is the width chosen, scoring what the record says on the same held-out images
    assert (_largest_weight(int8.path) <= 64) is chose_seven
    held = held_out_images(data, 256, ctx.seed, count=held_out_count(data.input_size))
    assert round(top1_pct(int8.path, *held, 1), 2) == (seven if chose_seven else eight)


@pytest.mark.parametrize("bits", [8, 7])
def test_weight_bits_8_or_7_fixes_the_width(fp32, tmp_path, bits):
    with context(tmp_path, data=fmnist_subset()) as ctx:
        int8 = Quantize(calibration_size=128, weight_bits=bits)(fp32, ctx)
        notes = ctx.notes["quantize"]
    assert "weight_bits" not in notes and notes["reduce_range"] is (bits == 7)
    assert (_largest_weight(int8.path) <= 64) is (bits == 7)


def test_with_every_training_image_calibrating_the_default_width_stays(fp32, tmp_path):
    data = load_dataset("digits", input_size=32)  # 1,347 training images, all of them calibrate
    with context(tmp_path, data=data) as ctx:
        Quantize()(fp32, ctx)
        notes = ctx.notes["quantize"]
    if X86_HOST:
        assert notes["weight_bits"]["held_out_images"] == 0 and "default kept" in notes["weight_bits"]["outcome"]
        assert notes["reduce_range"] is (not has_vnni())


def test_larger_inputs_decide_on_fewer_held_out_images_holding_as_many_pixels():
    assert held_out_count(32) == HELD_OUT == 10_000
    assert held_out_count(64) == 2_500
    assert held_out_count(224) == 1_000  # the floor: 0.6 GB of float32 images, not 6 GB
    assert held_out_count(16) == HELD_OUT  # never more than at 32 px
