"""Static INT8 post-training quantization with ``onnxruntime.quantization``.

QDQ format, per-channel INT8 weights, calibrated on images from the *training* split (never the
test split), after ``quant_pre_process`` (shape inference and graph optimisation).

The activation type is chosen for the CPU, because it decides which kernels run:
on x86-64, ORT's fast INT8 GEMM/conv kernels take unsigned activations and signed weights (U8S8,
``VPMADDUBSW``/VNNI); with signed activations (S8S8, ORT's default) the same MobileNetV3-small ran
about 4× slower than FP32 on this AVX-512 VNNI CPU. On ARM64 both run on the dot-product kernels,
and S8S8 (symmetric) is ORT's recommended default. Without VNNI, x86 U8S8 can saturate 16-bit
intermediate sums, so weights use ``reduce_range`` (7-bit) there, as ORT's docs advise.
"""

from __future__ import annotations

import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import CompressError
from compress.export import OnnxModel, check_onnx

if TYPE_CHECKING:
    from compress.pipeline import Context

CALIBRATIONS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("auto", "uint8", "int8")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_activation_type(requested: str = "auto") -> tuple[str, bool, str]:
    """``(activation type, reduce_range, why)`` for this machine."""
    machine = platform.machine().lower()
    flags = cpu_flags()
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    if requested != "auto":
        return requested, False, f"{requested} activations as requested"
    if machine in ("x86_64", "amd64"):
        if vnni:
            return "uint8", False, "U8S8: x86-64 with VNNI runs unsigned-activation INT8 kernels fastest"
        return "uint8", True, "U8S8 with 7-bit weights (reduce_range): x86-64 without VNNI can saturate otherwise"
    return "int8", False, f"S8S8: {machine} runs signed INT8 on its dot-product kernels"


@dataclass(frozen=True, kw_only=True)
class Quantize:
    """Static INT8 quantization of an ONNX model.

    >>> int8 = Quantize(calibration="minmax", calibration_size=512)(fp32_onnx, ctx)  # doctest: +SKIP
    """

    calibration: str = "minmax"  # minmax | entropy | percentile (ORT CalibrationMethod)
    calibration_size: int = 512  # training images used to calibrate activation ranges
    per_channel: bool = True  # one scale per output channel: depthwise convs need it
    activation_type: str = "auto"  # auto | uint8 | int8 (see module docstring)

    accepts = "onnx"
    name = "quantize"

    def check(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise CompressError(f"unknown calibration {self.calibration!r}: choose one of {', '.join(CALIBRATIONS)}")
        if self.calibration_size < 1:
            raise CompressError(f"calibration_size must be at least 1, got {self.calibration_size}: INT8 needs "
                                "training images to calibrate on")
        if self.activation_type not in ACTIVATION_TYPES:
            raise CompressError(f"unknown activation_type {self.activation_type!r}: choose one of "
                                f"{', '.join(ACTIVATION_TYPES)}")

    def __call__(self, model: OnnxModel, ctx: "Context") -> OnnxModel:
        import numpy as np
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from compress.checkpoint import atomic_write
        from compress.data import normalize

        self.check()
        check_onnx(model.path)
        n = ctx.data.train_x.shape[0]
        if n == 0:
            raise CompressError("--int8 needs calibration images but the training split is empty: add training images")
        gen = np.random.default_rng(ctx.seed)
        idx = np.sort(gen.permutation(n)[:min(self.calibration_size, n)])
        calib = normalize(ctx.data.train_x[idx]).numpy()

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.i = 0

            def get_next(self):
                if self.i >= len(calib):
                    return None
                batch = {"input": calib[self.i:self.i + 32]}
                self.i += 32
                return batch

            def rewind(self) -> None:
                self.i = 0

        act, reduce_range, why = choose_activation_type(self.activation_type)
        path = ctx.artifact(self.name, "model.onnx")
        pre = ctx.artifact(self.name, "preprocessed.onnx")

        def write(tmp: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(model.path), str(pre))
                quantize_static(
                    str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=self.per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[self.calibration],
                    extra_options={"ActivationSymmetric": act == "int8", "WeightSymmetric": True},
                )
            check_onnx(tmp)

        try:
            atomic_write(path, write)
        finally:
            pre.unlink(missing_ok=True)
        ctx.note(self.name, activation_type=act, weight_type="int8", reduce_range=reduce_range,
                 activation_type_reason=why, calibration_images=len(calib), calibration_split="train")
        return OnnxModel(path)
