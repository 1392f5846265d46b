"""The INT8 recipe for the CPU a model is built for (``--target``): the choices that decide which ONNX Runtime
kernels run there. :class:`compress.quantize.Quantize` builds its model from it.

* **x86_64**: unsigned activations, signed weights (U8S8). ORT's fast INT8 conv/GEMM kernels take that pair
  (``VPMADDUBSW``/VNNI); with S8S8 the same MobileNetV3-small ran about 4× slower than FP32 on an AVX-512 VNNI
  CPU. Depthwise channels are padded to 16 and the stem to 4 input channels (:mod:`compress.rewrites`). 8-bit
  weights assume a VNNI-class device (Ice Lake, Zen 4, Alder Lake-N or newer), as edge x86 boards are today.
* **arm64**: signed activations and weights (S8S8), ORT's default on ARM64, where both run on the dot-product
  kernels. Weights are symmetric (MLAS's fast "symmetric" conv kernels need that), activations keep a zero point:
  those kernels fold it into the bias, and on the main job's model symmetric activations cost 0.23 more points
  (89.70% against 89.93% on an emulated Cortex-A76, full test split). Depthwise channels are padded to 8 (NEON).
  On an x86-64 CPU without VNNI its accuracy measures too low (saturating S8S8 kernels); the stage says so.
* **host**: whichever of the two this machine is. On an x86-64 CPU without VNNI, weights also use ``reduce_range``
  (7 bits): its 16-bit intermediate sums can saturate otherwise, as ORT's docs warn. On an x86-64 host the step
  also builds the other weight width and keeps whichever gets more held-out training images right
  (:mod:`compress.weight_bits`; ``weight_bits`` 8 or 7 fixes the width instead).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from compress.errors import CompressError

ACTIVATION_TYPES = ("auto", "uint8", "int8")
TARGETS = ("host", "x86_64", "arm64")


@dataclass(frozen=True, kw_only=True)
class Int8Recipe:
    """The INT8 choices for one CPU: they decide which ORT kernels run there (module docstring)."""

    target: str  # x86_64 | arm64 (or this machine's name when it is neither)
    activation_type: str  # uint8 (U8S8) | int8 (S8S8)
    weight_type: str = "int8"
    reduce_range: bool = False  # 7-bit weights against 16-bit saturation on x86-64 without VNNI
    depthwise_multiple: int  # depthwise channels padded to this SIMD multiple
    pad_stem: bool  # stem input padded from 3 to 4 channels (MLAS's x86-64 symmetric conv kernel)
    why: str

    symmetric_activations: bool = False  # zero point 0 (ORT's ActivationSymmetric); every recipe keeps a zero point


def int8_recipe(target: str = "host", activation_type: str = "auto") -> Int8Recipe:
    """The INT8 recipe for ``target`` (``host | x86_64 | arm64``); ``activation_type`` overrides its activations.

    >>> int8_recipe("arm64").activation_type
    'int8'
    """
    import platform

    from compress.host import has_vnni, is_x86

    if target not in TARGETS:
        raise CompressError(f"unknown INT8 target {target!r}: choose one of {', '.join(TARGETS)}")
    machine = platform.machine().lower()
    if target == "x86_64" or (target == "host" and is_x86()):
        slow_host = target == "host" and not has_vnni()
        recipe = Int8Recipe(
            target="x86_64", activation_type="uint8", reduce_range=slow_host, depthwise_multiple=16, pad_stem=True,
            why=("U8S8 with 7-bit weights (reduce_range): this x86-64 CPU has no VNNI, and its 16-bit intermediate "
                 "sums can saturate otherwise" if slow_host else
                 "U8S8: ORT's fast x86-64 INT8 kernels take unsigned activations; 8-bit weights assume a VNNI-class "
                 "CPU") + "; depthwise channels padded to 16 and the stem to 4 channels for MLAS's symmetric kernels")
    else:
        name = "arm64" if target == "arm64" or machine in ("aarch64", "arm64") else machine
        recipe = Int8Recipe(
            target=name, activation_type="int8", depthwise_multiple=8, pad_stem=False,
            why=f"S8S8: {name} runs signed INT8 on its dot-product kernels (activations with a zero point, weights "
                "symmetric); depthwise channels padded to 8 (NEON); the stem keeps 3 channels (the 4-channel kernel "
                "is x86-64's)")
    if activation_type not in ACTIVATION_TYPES:
        raise CompressError(f"unknown activation_type {activation_type!r}: choose one of {', '.join(ACTIVATION_TYPES)}")
    if activation_type == "auto":
        return recipe
    return replace(recipe, activation_type=activation_type, reduce_range=False,
                   why=f"{activation_type} activations as requested (activation_type); otherwise {recipe.why}")
