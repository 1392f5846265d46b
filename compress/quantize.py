"""Static INT8 post-training quantization with ``onnxruntime.quantization``, tuned for ORT's fast kernels.

QDQ format, per-channel INT8 weights, calibrated on images from the *training* split (never the
test split), after ``quant_pre_process`` (shape inference and graph optimisation).

The activation type is chosen for the CPU, because it decides which kernels run:
on x86-64, ORT's fast INT8 GEMM/conv kernels take unsigned activations and signed weights (U8S8,
``VPMADDUBSW``/VNNI); with signed activations (S8S8, ORT's default) the same MobileNetV3-small ran
about 4× slower than FP32 on this AVX-512 VNNI CPU. On ARM64 both run on the dot-product kernels,
and S8S8 (symmetric) is ORT's recommended default. Without VNNI, x86 U8S8 can saturate 16-bit
intermediate sums, so weights use ``reduce_range`` (7-bit) there, as ORT's docs advise.

ORT's plain recipe still left MobileNetV3 INT8 no faster than FP32 here. Its profiler showed why
(``benchmarks/int8_options.py`` reproduces it): ORT's FP32 path fuses hardswish into the NCHWc
convolution for free, while in INT8 each hardswish became DequantizeLinear → HardSigmoid →
QuantizeLinear → QLinearMul, four passes over the tensor; depthwise convs whose channel count is not
a multiple of 16 and the 3-channel stem fall off MLAS's symmetric INT8 conv kernels onto a generic
path 2-3× slower than FP32. With ``kernel_rewrites`` (default on) three exact rewrites remove this:

* **hardsigmoid as a clip of codes.** Hardswish is ``x · hardsigmoid(x)``. When the scale ``s`` of
  ``x`` makes ``1/(alpha·s)`` an even integer and the range reaches ``-beta/alpha`` (= -3), the
  hardsigmoid of a uint8 code is that code clipped to ``[z - 3/s, z + 3/s]``, read with scale
  ``s/6``: a ``Clip`` on uint8 instead of DQ/HardSigmoid/Q. ``s`` is snapped up (coarser by less
  than one part in ``1/(alpha·s)``) to make this exact; the multiply stays a fused QLinearMul.
* **depthwise channels padded** to the SIMD multiple (16 on x86-64, 8 on ARM64) with zero filters,
  together with the producing conv, the SE block and the consuming conv, so outputs are unchanged
  (verified on calibration images before use). ``Prune(round_to=16)`` avoids the padding entirely.
* **stem input padded** from 3 to 4 channels (a zero channel at the input's zero point and a zero
  filter slice), which MLAS's symmetric conv kernel needs on x86-64.

Measured here (224×224, batch 1, 1 thread, AVX-512 VNNI): INT8 over FP32 went from 0.97× to 1.34-1.38× for
MobileNetV3-small and from ~1.3× to 1.7× for -large. Narrow (pruned) or tiny-input models stay overhead-bound
and may still run slower in INT8, hence the speed check below.

Internal tensor names are shortened (``t1f``): the QDQ pass spells every name out in full, about a fifth of a
small INT8 file. After quantizing, the stage times INT8 against its FP32 input, interleaved, and says loudly if INT8
is slower (``if_slower="warn"``) or keeps the FP32 model (``if_slower="fallback"``).
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
    import numpy as np
    import onnx
    import torch

    from compress.pipeline import Context

CALIBRATIONS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("auto", "uint8", "int8")
IF_SLOWER = ("warn", "fallback")
# Ops whose output channel c depends only on input channel c: a zero-padded channel stays separate.
_CHANNELWISE = {"Relu", "Clip", "HardSigmoid", "Sigmoid", "HardSwish", "Mul", "Add", "GlobalAveragePool",
                "Identity", "LeakyRelu", "Tanh"}


def calibration_reader(images: "np.ndarray", batch_size: int = 32):
    """An ORT ``CalibrationDataReader`` over normalised images, ``batch_size`` at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(images):
                return None
            self.i += batch_size
            return {"input": images[self.i - batch_size:self.i]}

        def rewind(self) -> None:
            self.i = 0

    return Reader()


def calibration_images(train_x: "torch.Tensor", size: int, seed: int) -> "np.ndarray":
    """``size`` training images (seeded, in index order), normalised: what ``Quantize`` calibrates on."""
    import numpy as np

    from compress.data import normalize

    n = train_x.shape[0]
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:min(size, n)])
    return normalize(train_x[idx]).numpy()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def choose_activation_type(requested: str = "auto") -> tuple[str, bool, str]:
    """``(activation type, reduce_range, why)`` for this machine."""
    machine = platform.machine().lower()
    flags = cpu_flags()
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    if requested != "auto":
        return requested, False, f"{requested} activations as requested"
    if _is_x86():
        if vnni:
            return "uint8", False, "U8S8: x86-64 with VNNI runs unsigned-activation INT8 kernels fastest"
        return "uint8", True, "U8S8 with 7-bit weights (reduce_range): x86-64 without VNNI can saturate otherwise"
    return "int8", False, f"S8S8: {machine} runs signed INT8 on its dot-product kernels"


@dataclass(frozen=True, kw_only=True)
class Quantize:
    """Static INT8 quantization of an ONNX model.

    >>> int8 = Quantize(calibration="minmax", calibration_size=2048)(fp32_onnx, ctx)  # doctest: +SKIP
    """

    calibration: str = "minmax"  # minmax | entropy | percentile (ORT CalibrationMethod)
    calibration_size: int = 2048  # training images used to calibrate activation ranges
    per_channel: bool = True  # one scale per output channel: depthwise convs need it
    activation_type: str = "auto"  # auto | uint8 | int8 (see module docstring)
    kernel_rewrites: bool = True  # exact graph rewrites that keep ORT on its fast INT8 kernels (module docstring)
    if_slower: str = "warn"  # warn | fallback: what to do when INT8 runs slower than its FP32 input here
    speed_check_runs: int = 200  # batch-1 runs of each model in the INT8-vs-FP32 check; 0 skips the check

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
        if self.if_slower not in IF_SLOWER:
            raise CompressError(f"unknown if_slower {self.if_slower!r}: choose warn (keep INT8, say so loudly) or "
                                "fallback (keep the FP32 model when INT8 is slower on this CPU)")
        if self.speed_check_runs < 0:
            raise CompressError(f"speed_check_runs must be 0 (skip) or more, got {self.speed_check_runs}")

    def __call__(self, model: OnnxModel, ctx: "Context") -> OnnxModel:
        import onnx
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from compress.checkpoint import atomic_write

        self.check()
        check_onnx(model.path)
        if ctx.data.train_x.shape[0] == 0:
            raise CompressError("--int8 needs calibration images but the training split is empty: add training images")
        calib = calibration_images(ctx.data.train_x, self.calibration_size, ctx.seed)

        act, reduce_range, why = choose_activation_type(self.activation_type)
        path = ctx.artifact(self.name, "model.onnx")
        pre = ctx.artifact(self.name, "preprocessed.onnx")
        rewrites: dict[str, int] = {}

        def write(tmp: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(model.path), str(pre))
                if self.kernel_rewrites:
                    rewrites["depthwise_convs_padded"] = _pad_depthwise_file(pre, calib[:8], ctx.threads)
                quantize_static(
                    str(pre), str(tmp), calibration_reader(calib), quant_format=QuantFormat.QDQ, per_channel=self.per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[self.calibration],
                    extra_options={"ActivationSymmetric": act == "int8", "WeightSymmetric": True},
                )
                q = onnx.load(str(tmp))
                if self.kernel_rewrites:
                    rewrites["hardsigmoids_as_clip"] = hardsigmoid_as_clip(q)
                    rewrites["stem_channels_padded"] = pad_stem_input(q) if _is_x86() else 0
                    _drop_unused_initializers(q)
                _short_tensor_names(q)
                onnx.save(q, str(tmp))
            check_onnx(tmp)

        try:
            atomic_write(path, write)
        finally:
            pre.unlink(missing_ok=True)
        ctx.note(self.name, activation_type=act, weight_type="int8", reduce_range=reduce_range,
                 activation_type_reason=why, calibration_images=len(calib), calibration_split="train",
                 **({"kernel_rewrites": rewrites} if self.kernel_rewrites else {}))
        int8 = OnnxModel(path)
        if self.speed_check_runs == 0:
            return int8
        return self._speed_check(model, int8, calib[:1], ctx)

    def _speed_check(self, fp32: OnnxModel, int8: OnnxModel, x: "np.ndarray", ctx: "Context") -> OnnxModel:
        """Time both models at batch 1, interleaved; warn, or fall back to FP32, when INT8 is slower."""
        fp32_ms, int8_ms = compare_latency([fp32.path, int8.path], x, threads=ctx.threads,
                                           runs=self.speed_check_runs)
        speedup = fp32_ms / int8_ms
        ctx.note(self.name, speed_check_fp32_ms=round(fp32_ms, 4), speed_check_int8_ms=round(int8_ms, 4),
                 speed_check_speedup=round(speedup, 3), speed_check_runs=self.speed_check_runs,
                 speed_check_threads=ctx.threads, speed_check_batch=1)
        if int8_ms <= fp32_ms:
            return int8
        slower = int8_ms / fp32_ms
        if self.if_slower == "fallback":
            ctx.note(self.name, fallback=True)
            ctx.warn(self.name, f"INT8 was {slower:.2f}× slower than FP32 on this CPU ({int8_ms:.3f} ms vs "
                                f"{fp32_ms:.3f} ms at batch 1, {ctx.threads} thread(s)); kept the FP32 model "
                                "(if_slower=fallback). Try --edge-friendly, a larger input size, or another CPU")
            return fp32
        ctx.warn(self.name, f"INT8 is {slower:.2f}× slower than FP32 on this CPU ({int8_ms:.3f} ms vs {fp32_ms:.3f} ms "
                            f"at batch 1, {ctx.threads} thread(s)); the FP32 model is in the bundle as "
                            "model_fp32.onnx; try --edge-friendly (ReLU instead of hardswish), a larger input size, "
                            "or quantize.if_slower: fallback")
        return int8


def compare_latency(paths: list[Path], x: "np.ndarray", *, threads: int = 1, runs: int = 200,
                    block: int = 5) -> list[float]:
    """Median batch-1 latency in ms of each ONNX model, measured interleaved (``measure.interleaved``)."""
    import numpy as np

    from compress.export import session
    from compress.measure import interleaved

    def call(path: Path):
        s = session(path, threads)
        name = s.get_inputs()[0].name
        return lambda: s.run(None, {name: x})

    times = interleaved({i: call(p) for i, p in enumerate(paths)}, runs=runs, block=block, warmup=max(5, runs // 10))
    return [float(np.median(times[i])) * 1e3 for i in range(len(paths))]


# --------------------------------------------------------------------------------------------- rewrites


def _graph_maps(g: "onnx.GraphProto") -> tuple[dict, dict, dict]:
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: t for t in g.initializer}
    return producer, consumers, inits


def _attr(node: "onnx.NodeProto", name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _drop_unused_initializers(model: "onnx.ModelProto") -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _short_tensor_names(model: "onnx.ModelProto") -> None:
    """Rename internal tensors to short ids, in place: the QDQ pass spells every name out in full
    (``/features/features.4/block/block.0/block.0.0/Conv_output_0_DequantizeLinear_Output``), which was
    about a fifth of a small INT8 file. Graph inputs and outputs and node names are kept."""
    g = model.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in g.node for a in n.attribute):
        return  # subgraphs refer to outer names; leave such models alone
    keep = {i.name for i in g.input} | {o.name for o in g.output} | {""}
    names = [t.name for t in g.initializer] + [o for n in g.node for o in n.output]
    prefix = "t"
    while any(k.startswith(prefix) for k in keep if k):
        prefix = "_" + prefix
    short = {name: f"{prefix}{i:x}" for i, name in enumerate(dict.fromkeys(n for n in names if n not in keep))}
    for t in g.initializer:
        t.name = short.get(t.name, t.name)
    for n in g.node:
        n.input[:] = [short.get(i, i) for i in n.input]
        n.output[:] = [short.get(o, o) for o in n.output]
    for vi in g.value_info:
        vi.name = short.get(vi.name, vi.name)


def hardsigmoid_as_clip(model: "onnx.ModelProto") -> int:
    """Rewrite ``Q(x) → DQ → HardSigmoid → Q → DQ`` as ``Q(x) → Clip → DQ`` in a QDQ model, in place.

    With ``x = s·(q - z)``, ``hardsigmoid(x) = clip(alpha·x + beta, 0, 1) = alpha·s·(clip(q, z - m·beta,
    z - m·beta + m) - (z - m·beta))`` where ``m = 1/(alpha·s)``. When ``m`` and ``m·beta`` are integers
    and ``z - m·beta`` is a valid code, that is a ``Clip`` of the codes read with scale ``alpha·s``:
    exact. ``s`` is snapped up to make ``m`` an integer, and the range is widened to reach
    ``-beta/alpha`` where needed. Returns the number of HardSigmoid nodes rewritten.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    producer, consumers, inits = _graph_maps(g)
    graph_outputs = {o.name for o in g.output}
    remove: list = []
    done = 0
    for n in list(g.node):
        if n.op_type != "HardSigmoid":
            continue
        alpha, beta = float(_attr(n, "alpha", 0.2)), float(_attr(n, "beta", 0.5))
        dq = producer.get(n.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or list(q.input[1:]) != list(dq.input[1:]) or len(q.input) < 3:
            continue
        outs = consumers.get(n.output[0], [])
        if len(outs) != 1 or outs[0].op_type != "QuantizeLinear" or outs[0].output[0] in graph_outputs:
            continue
        qh = outs[0]
        dqhs = consumers.get(qh.output[0], [])
        if not dqhs or any(d.op_type != "DequantizeLinear" for d in dqhs):
            continue
        s_name, z_name = q.input[1], q.input[2]
        if s_name not in inits or z_name not in inits:
            continue
        # the scale/zero point must belong to x alone: they are about to change
        users = [u for u in g.node if s_name in u.input or z_name in u.input]
        if any(u is not q and not (u.op_type == "DequantizeLinear" and u.input[0] == q.output[0]) for u in users):
            continue
        s = float(numpy_helper.to_array(inits[s_name]))
        z_arr = numpy_helper.to_array(inits[z_name])
        if z_arr.size != 1 or z_arr.dtype not in (np.uint8, np.int8) or not alpha > 0 or not s > 0:
            continue
        qmin, qmax = (0, 255) if z_arr.dtype == np.uint8 else (-128, 127)
        z = int(z_arr.reshape(()))
        edge = -beta / alpha  # hardsigmoid is 0 below this
        if z_arr.dtype == np.uint8:  # asymmetric: widen the range to reach the edge, then re-derive z
            rmin, rmax = min(s * (qmin - z), edge, 0.0), max(s * (qmax - z), 0.0)
            s_min = (rmax - rmin) / (qmax - qmin)
        else:  # symmetric int8 (zero point kept): only the scale may change
            rmin, s_min = None, s
        m = int(np.floor(1.0 / (alpha * s_min) + 1e-9))
        while m >= 2 and abs(m * beta - round(m * beta)) > 1e-6:
            m -= 1
        if m < 2:
            continue
        s2 = 1.0 / (alpha * m)
        z2 = int(np.clip(round(qmin - rmin / s2), qmin, qmax)) if rmin is not None else z
        lo = z2 - int(round(m * beta))
        if lo < qmin:
            continue
        hi = min(qmax, lo + m)
        dtype = z_arr.dtype
        inits[s_name].CopyFrom(numpy_helper.from_array(np.array(s2, np.float32).reshape(numpy_helper.to_array(
            inits[s_name]).shape), s_name))
        inits[z_name].CopyFrom(numpy_helper.from_array(np.array(z2, dtype).reshape(z_arr.shape), z_name))
        base = (n.name or n.output[0]) + "_as_clip"
        g.initializer.extend([
            numpy_helper.from_array(np.array(lo, dtype), base + "_lo"),
            numpy_helper.from_array(np.array(hi, dtype), base + "_hi"),
            numpy_helper.from_array(np.array(alpha * s2, np.float32), base + "_scale"),
            numpy_helper.from_array(np.array(lo, dtype), base + "_zero_point"),
        ])
        clip = helper.make_node("Clip", [q.output[0], base + "_lo", base + "_hi"], [base + "_codes"], name=base)
        for d in dqhs:
            d.input[0], d.input[1], d.input[2] = clip.output[0], base + "_scale", base + "_zero_point"
        g.node.insert(list(g.node).index(n), clip)
        remove += [n, qh]
        if all(c is n for c in consumers.get(dq.output[0], [])):
            remove.append(dq)
        done += 1
    for r in remove:
        g.node.remove(r)
    return done


def pad_stem_input(model: "onnx.ModelProto", multiple: int = 4) -> int:
    """Give the first conv ``multiple`` input channels in a QDQ model, in place: a channel at the input's
    zero point (0.0) is padded onto the quantized input and a zero slice onto the filter, so MLAS's
    symmetric INT8 conv kernel (input channels a multiple of 4 on x86-64) takes it. Returns channels added."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    producer, consumers, inits = _graph_maps(g)
    inp = g.input[0].name
    qs = [n for n in consumers.get(inp, []) if n.op_type == "QuantizeLinear"]
    if len(qs) != 1 or len(consumers.get(inp, [])) != 1:
        return 0
    q = qs[0]
    dqs = consumers.get(q.output[0], [])
    if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
        return 0
    convs = consumers.get(dqs[0].output[0], [])
    if len(convs) != 1 or convs[0].op_type != "Conv" or _attr(convs[0], "group", 1) != 1:
        return 0
    wdq = producer.get(convs[0].input[1])
    if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits or q.input[2] not in inits:
        return 0
    w = numpy_helper.to_array(inits[wdq.input[0]])
    if w.ndim != 4 or w.shape[1] % multiple == 0 or len(consumers.get(wdq.input[0], [])) != 1:
        return 0
    k = -(-w.shape[1] // multiple) * multiple - w.shape[1]
    inits[wdq.input[0]].CopyFrom(numpy_helper.from_array(np.pad(w, [(0, 0), (0, k), (0, 0), (0, 0)]),
                                                         wdq.input[0]))
    zp = numpy_helper.to_array(inits[q.input[2]])
    g.initializer.extend([numpy_helper.from_array(np.array([0, 0, 0, 0, 0, k, 0, 0], np.int64), "stem_pad_pads"),
                          numpy_helper.from_array(zp.reshape(()), "stem_pad_value")])
    padded = q.output[0] + "_padded"
    pad = helper.make_node("Pad", [q.output[0], "stem_pad_pads", "stem_pad_value"], [padded], name="stem_pad",
                           mode="constant")
    dqs[0].input[0] = padded
    g.node.insert(list(g.node).index(dqs[0]), pad)
    return k


def pad_depthwise_channels(model: "onnx.ModelProto", multiple: int = 16) -> int:
    """Widen depthwise convs whose channel count is not a multiple of ``multiple`` with zero channels, in
    place, in an FP32 model. The region of tensors with those channels (through channel-wise ops such
    as activations, the squeeze-and-excitation pool and multiply) is widened with it: the convs that
    produce it get zero output filters, the convs that consume it zero input weights, so no padded
    channel reaches anything else. Regions that touch any other op are left alone. Returns the
    number of depthwise convs widened. Even 8 → 16 channels pays on x86-64: the generic INT8 depthwise path
    ran 2-3× slower than the symmetric kernel on twice the channels (pruned MobileNetV3-small: 0.84× of FP32
    padded, 0.71× padding only up to +25%).
    """
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    producer, consumers, inits = _graph_maps(g)
    boundary = {o.name for o in g.output} | {i.name for i in g.input}

    def wshape(n) -> tuple:
        return tuple(inits[n.input[1]].dims) if len(n.input) > 1 and n.input[1] in inits else ()

    def depthwise(n, channels: int | None = None) -> bool:
        w, groups = wshape(n), _attr(n, "group", 1)
        return (n.op_type == "Conv" and len(w) == 4 and groups > 1 and w[1] == 1 and w[0] == groups
                and channels in (None, groups))

    def dense(n) -> bool:
        return n.op_type == "Conv" and _attr(n, "group", 1) == 1 and len(wshape(n)) == 4

    def scalar(name: str) -> bool:
        return name in inits and int(np.prod(inits[name].dims)) == 1

    def follow_inputs(n, queue: list) -> bool:
        """Queue a channel-wise op's tensor inputs; its constant inputs must be scalars to stay valid."""
        ok = True
        for i in n.input:
            if i in inits:
                ok = ok and scalar(i)
            else:
                queue.append(i)
        return ok

    widened, seen = 0, set()
    for dw in [n for n in g.node if depthwise(n)]:
        channels = _attr(dw, "group", 1)
        extra = -(-channels // multiple) * multiple - channels
        if id(dw) in seen or extra == 0:
            continue
        region: set[str] = set()
        queue = [dw.input[0], dw.output[0]]
        pad_out, pad_in, dws, ok = {}, {}, {id(dw): dw}, True
        while queue and ok:
            t = queue.pop()
            if t in region or not t:
                continue
            if t in boundary or t in inits or t not in producer:
                ok = False
                break
            region.add(t)
            p = producer[t]
            if depthwise(p, channels):
                dws[id(p)] = p
                queue.append(p.input[0])
            elif dense(p) and wshape(p)[0] == channels:
                pad_out[id(p)] = p
            elif p.op_type in _CHANNELWISE:
                ok = follow_inputs(p, queue) and ok
            else:
                ok = False
            for c in consumers.get(t, []):
                if depthwise(c, channels):
                    dws[id(c)] = c
                    queue.append(c.output[0])
                elif dense(c) and c.input[0] == t and wshape(c)[1] == channels:
                    pad_in[id(c)] = c
                elif c.op_type in _CHANNELWISE:
                    queue.extend(c.output)
                    ok = follow_inputs(c, queue) and ok
                else:
                    ok = False
        if not ok:
            continue
        uses: dict[str, int] = {}
        for node in g.node:
            for i in node.input:
                uses[i] = uses.get(i, 0) + 1

        def pad(node, index: int, axis: int) -> None:
            name = node.input[index]
            a = numpy_helper.to_array(inits[name])
            widths = [(0, 0)] * a.ndim
            widths[axis] = (0, extra)
            if uses.get(name, 0) > 1:  # a deduplicated initializer: give this node its own copy
                uses[name] -= 1
                name = f"{name}_padded_{len(inits)}"
                g.initializer.append(numpy_helper.from_array(np.pad(a, widths), name))
                inits[name] = g.initializer[-1]
                node.input[index] = name
            else:
                inits[name].CopyFrom(numpy_helper.from_array(np.pad(a, widths), name))

        for node in list(pad_out.values()) + list(dws.values()):
            pad(node, 1, 0)
            if len(node.input) > 2 and node.input[2]:
                pad(node, 2, 0)
        for node in dws.values():
            for a in node.attribute:
                if a.name == "group":
                    a.i = channels + extra
            seen.add(id(node))
        for node in pad_in.values():
            pad(node, 1, 1)
        keep = [vi for vi in g.value_info if vi.name not in region]
        del g.value_info[:]
        g.value_info.extend(keep)
        widened += len(dws)
    return widened


def _pad_depthwise_file(path: Path, x: "np.ndarray", threads: int) -> int:
    """Pad the depthwise convs of the FP32 model at ``path`` in place, if the padded model gives the same
    outputs on ``x`` (it must: the padding is exact); otherwise leave the file alone."""
    import numpy as np
    import onnx

    from compress.export import run_onnx, session

    m = onnx.load(str(path))
    count = pad_depthwise_channels(m, 16 if _is_x86() else 8)
    if count == 0:
        return 0
    padded = path.with_name(path.stem + ".padded.onnx")
    try:
        onnx.save(m, str(padded))
        ref = run_onnx(session(path, threads), x)
        got = run_onnx(session(padded, threads), x)
        if not np.allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max()))):
            return 0
        padded.replace(path)
    finally:
        padded.unlink(missing_ok=True)
    return count
