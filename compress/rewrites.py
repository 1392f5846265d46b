"""ONNX graph rewrites that keep ONNX Runtime on its fast INT8 kernels, and the small graph helpers they share.

ORT's plain QDQ recipe left MobileNetV3 INT8 no faster than FP32 on x86-64. Its profiler showed why
(``benchmarks/int8_options.py`` reproduces it): ORT's FP32 path fuses hardswish into the NCHWc convolution for
free, while in INT8 each hardswish became DequantizeLinear → HardSigmoid → QuantizeLinear → QLinearMul, four
passes over the tensor; depthwise convs whose channel count is not a multiple of the SIMD width and the 3-channel
stem fall off MLAS's symmetric INT8 conv kernels onto a generic path 2-3× slower than FP32. Three rewrites:

* :func:`hardsigmoid_as_clip` (INT8 graph): hardsigmoid of a quantized tensor becomes a ``Clip`` of its codes.
  The clip is exact *on the snapped grid*: the input's scale is snapped up (and, for uint8, its range widened to
  reach -3) so that the clip bounds fall on whole codes. Snapping coarsens that tensor's INT8 grid, which the
  hardswish multiply also reads; a node whose grid would get more than ``max_coarsening`` coarser is left alone.
* :func:`pad_depthwise_channels` (FP32 graph, before quantizing): depthwise convs widened to the SIMD multiple
  with zero channels, together with the convs around them. Exact in real arithmetic; the caller checks parity.
* :func:`pad_stem_input` (INT8 graph): the stem conv gets a fourth, zero input channel. Exact, bit for bit.

Measured on x86-64 (224×224, batch 1, 1 thread, AVX-512 VNNI): INT8 over FP32 went from 0.97× to 1.34-1.38× for
MobileNetV3-small and from ~1.3× to 1.7× for -large. :func:`short_tensor_names` shrinks small INT8 files by about
a fifth; :func:`drop_unused_initializers` removes what a rewrite left behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import onnx

# Ops whose output channel c depends only on input channel c: a zero-padded channel stays separate.
CHANNELWISE = frozenset({"Relu", "Clip", "HardSigmoid", "Sigmoid", "HardSwish", "Mul", "Add", "GlobalAveragePool",
                         "Identity", "LeakyRelu", "Tanh"})
# Largest coarsening of a hardswish input's INT8 grid that the clip rewrite may cause (new scale / old scale - 1).
# 10 %: that tensor's rounding noise grows by the same 10 % (0.8 dB, 0.14 of a bit). In tiny MobileNetV3s trained on
# Fashion-MNIST and digits, 21-22 of 28 hardswish inputs snap by under 2 % and 27-28 by under 10 %, and with the
# 10 % bound the rewritten model agreed with FP32 as often as the plain INT8 one did (98.0 vs 97.7 %); letting a
# node coarsen by 14 % cost a point of agreement. Narrow ranges that must widen to reach -3 (25 % in a test) stay.
MAX_COARSENING = 0.10


def graph_maps(g: "onnx.GraphProto") -> tuple[dict, dict, dict]:
    """``(producer of each tensor, consumers of each tensor, initializers by name)``."""
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: t for t in g.initializer}
    return producer, consumers, inits


def attr(node: "onnx.NodeProto", name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def drop_unused_initializers(model: "onnx.ModelProto") -> int:
    """Remove initializers no node or graph output reads, in place. Returns how many were removed."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    dropped = len(model.graph.initializer) - len(keep)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return dropped


def name_nodes(path: Path) -> None:
    """Give every unnamed node of the model at ``path`` a unique name (``<op>_<index>``), in place: ORT's graph
    optimiser leaves the nodes it creates unnamed, and the quantizer's ``nodes_to_exclude`` works by name."""
    import onnx

    m = onnx.load(str(path))
    taken = {n.name for n in m.graph.node}
    unnamed = [(i, n) for i, n in enumerate(m.graph.node) if not n.name]
    for i, n in unnamed:
        n.name = next(name for k in range(len(taken) + 1) if (name := f"{n.op_type}_{i}" + (f"_{k}" if k else ""))
                      not in taken)
        taken.add(n.name)
    if unnamed:
        onnx.save(m, str(path))


def short_tensor_names(model: "onnx.ModelProto") -> None:
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


# ------------------------------------------------------------------------------------- hardsigmoid as clip


@dataclass(frozen=True)
class ClipRewrite:
    """What :func:`hardsigmoid_as_clip` did."""

    rewritten: int = 0  # HardSigmoid nodes now a Clip of codes
    skipped_coarse: int = 0  # left alone: their input's grid would have got more than max_coarsening coarser
    worst_coarsening: float = 0.0  # largest (new scale / old scale - 1) among the rewritten nodes


def _clip_site(n, g, producer: dict, consumers: dict, inits: dict, graph_outputs: set) -> tuple | None:
    """``(q, dq, qh, dqhs)`` around a HardSigmoid ``n`` laid out as ``Q(x) → DQ → n → qh → dqhs``, when the
    scale and zero point of ``x`` are constants used by ``q`` and its DQs alone (they are about to change)."""
    dq = producer.get(n.input[0])
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear" or list(q.input[1:]) != list(dq.input[1:]) or len(q.input) < 3:
        return None
    outs = consumers.get(n.output[0], [])
    if len(outs) != 1 or outs[0].op_type != "QuantizeLinear" or outs[0].output[0] in graph_outputs:
        return None
    qh = outs[0]
    dqhs = consumers.get(qh.output[0], [])
    if not dqhs or any(d.op_type != "DequantizeLinear" for d in dqhs):
        return None
    s_name, z_name = q.input[1], q.input[2]
    if s_name not in inits or z_name not in inits:
        return None
    users = [u for u in g.node if s_name in u.input or z_name in u.input]
    if any(u is not q and not (u.op_type == "DequantizeLinear" and u.input[0] == q.output[0]) for u in users):
        return None
    return q, dq, qh, dqhs


def snapped_grid(s: float, z: int, signed: bool, alpha: float, beta: float) -> tuple[float, int, int, int] | None:
    """``(scale, zero point, lo, hi)``: the nearest grid, no finer than ``(s, z)``, on which
    ``hardsigmoid(x) = alpha·scale·(clip(q, lo, hi) - lo)`` holds exactly for every code ``q``; None if none.

    With ``m = 1/(alpha·scale)`` a whole number and ``m·beta`` too, ``lo = z - m·beta`` is the code of
    ``-beta/alpha`` (where hardsigmoid leaves 0) and ``hi = lo + m`` the code where it reaches 1. uint8
    (asymmetric) widens its range to contain ``-beta/alpha`` so that ``lo`` is a valid code and re-derives the
    zero point; symmetric int8 keeps its zero point and only the scale grows.
    """
    import numpy as np

    qmin, qmax = (-128, 127) if signed else (0, 255)
    if signed:
        rmin, s_min = None, s
    else:
        rmin, rmax = min(s * (qmin - z), -beta / alpha, 0.0), max(s * (qmax - z), 0.0)
        s_min = (rmax - rmin) / (qmax - qmin)
    m = int(np.floor(1.0 / (alpha * s_min) + 1e-9))
    while m >= 2 and abs(m * beta - round(m * beta)) > 1e-6:
        m -= 1
    if m < 2:
        return None
    s2 = 1.0 / (alpha * m)
    z2 = int(np.clip(round(qmin - rmin / s2), qmin, qmax)) if rmin is not None else z
    lo = z2 - int(round(m * beta))
    if lo < qmin:
        return None
    return s2, z2, lo, min(qmax, lo + m)


def hardsigmoid_as_clip(model: "onnx.ModelProto", max_coarsening: float = MAX_COARSENING) -> ClipRewrite:
    """Rewrite ``Q(x) → DQ → HardSigmoid → Q → DQ`` as ``Q(x) → Clip → DQ`` in a QDQ model, in place.

    The ``Clip`` is exact on the snapped grid of ``x`` (:func:`snapped_grid`); snapping makes that grid
    coarser, which the hardswish multiply reading ``x`` also sees. Nodes whose grid would get more than
    ``max_coarsening`` coarser keep their HardSigmoid.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    producer, consumers, inits = graph_maps(g)
    graph_outputs = {o.name for o in g.output}
    remove: list = []
    done, skipped, worst = 0, 0, 0.0
    for n in [n for n in g.node if n.op_type == "HardSigmoid"]:
        alpha, beta = float(attr(n, "alpha", 0.2)), float(attr(n, "beta", 0.5))
        site = _clip_site(n, g, producer, consumers, inits, graph_outputs)
        if site is None or not alpha > 0:
            continue
        q, dq, qh, dqhs = site
        s_name, z_name = q.input[1], q.input[2]
        s_arr, z_arr = numpy_helper.to_array(inits[s_name]), numpy_helper.to_array(inits[z_name])
        s = float(s_arr.reshape(-1)[0]) if s_arr.size == 1 else 0.0
        if z_arr.size != 1 or z_arr.dtype not in (np.uint8, np.int8) or not s > 0:
            continue
        grid = snapped_grid(s, int(z_arr.reshape(())), z_arr.dtype == np.int8, alpha, beta)
        if grid is None:
            continue
        s2, z2, lo, hi = grid
        if s2 / s - 1 > max_coarsening:
            skipped += 1
            continue
        worst = max(worst, s2 / s - 1)
        dtype = z_arr.dtype
        inits[s_name].CopyFrom(numpy_helper.from_array(np.array(s2, np.float32).reshape(s_arr.shape), s_name))
        inits[z_name].CopyFrom(numpy_helper.from_array(np.array(z2, dtype).reshape(z_arr.shape), z_name))
        base = (n.name or n.output[0]) + "_as_clip"
        g.initializer.extend([numpy_helper.from_array(np.array(lo, dtype), base + "_lo"),
                              numpy_helper.from_array(np.array(hi, dtype), base + "_hi"),
                              numpy_helper.from_array(np.array(alpha * s2, np.float32), base + "_scale"),
                              numpy_helper.from_array(np.array(lo, dtype), base + "_zero_point")])
        clip = helper.make_node("Clip", [q.output[0], base + "_lo", base + "_hi"], [base + "_codes"], name=base)
        for d in dqhs:
            d.input[0], d.input[1], d.input[2] = clip.output[0], base + "_scale", base + "_zero_point"
        g.node.insert(list(g.node).index(n), clip)
        remove += [n, qh] + ([dq] if all(c is n for c in consumers.get(dq.output[0], [])) else [])
        done += 1
    for r in remove:
        g.node.remove(r)
    return ClipRewrite(rewritten=done, skipped_coarse=skipped, worst_coarsening=worst)


# ------------------------------------------------------------------------------------------ stem padding


def pad_stem_input(model: "onnx.ModelProto", multiple: int = 4) -> int:
    """Give the first conv ``multiple`` input channels in a QDQ model, in place: a channel at the input's
    zero point (0.0) is padded onto the quantized input and a zero slice onto the filter, so MLAS's
    symmetric INT8 conv kernel (input channels a multiple of 4 on x86-64) takes it. Returns channels added."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    producer, consumers, inits = graph_maps(g)
    inp = g.input[0].name
    qs = [n for n in consumers.get(inp, []) if n.op_type == "QuantizeLinear"]
    if len(qs) != 1 or len(consumers.get(inp, [])) != 1:
        return 0
    q = qs[0]
    dqs = consumers.get(q.output[0], [])
    if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
        return 0
    convs = consumers.get(dqs[0].output[0], [])
    if len(convs) != 1 or convs[0].op_type != "Conv" or attr(convs[0], "group", 1) != 1:
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


# ------------------------------------------------------------------------------------ depthwise padding


class _Shapes:
    """Weight shapes and conv kinds of one graph, for the depthwise-padding search."""

    def __init__(self, inits: dict):
        self.inits = inits

    def w(self, n) -> tuple:
        return tuple(self.inits[n.input[1]].dims) if len(n.input) > 1 and n.input[1] in self.inits else ()

    def depthwise(self, n, channels: int | None = None) -> bool:
        w, groups = self.w(n), attr(n, "group", 1)
        return (n.op_type == "Conv" and len(w) == 4 and groups > 1 and w[1] == 1 and w[0] == groups
                and channels in (None, groups))

    def dense(self, n) -> bool:
        return n.op_type == "Conv" and attr(n, "group", 1) == 1 and len(self.w(n)) == 4

    def follow_inputs(self, n, queue: list) -> bool:
        """Queue a channel-wise op's tensor inputs; its constant inputs must be scalars to stay valid."""
        import numpy as np

        ok = True
        for i in n.input:
            if i in self.inits:
                ok = ok and int(np.prod(self.inits[i].dims)) == 1
            else:
                queue.append(i)
        return ok


def _channel_region(dw, channels: int, producer: dict, consumers: dict, shapes: _Shapes,
                    boundary: set) -> tuple[set, dict, dict, dict] | None:
    """The tensors carrying ``dw``'s channels, found by walking through channel-wise ops, as
    ``(tensors, convs producing them, depthwise convs, convs consuming them)``; None if the region
    touches a graph input/output or an op that mixes channels."""
    region: set[str] = set()
    queue = [dw.input[0], dw.output[0]]
    pad_out, pad_in, dws = {}, {}, {id(dw): dw}
    while queue:
        t = queue.pop()
        if t in region or not t:
            continue
        if t in boundary or t in shapes.inits or t not in producer:
            return None
        region.add(t)
        p = producer[t]
        if shapes.depthwise(p, channels):
            dws[id(p)] = p
            queue.append(p.input[0])
        elif shapes.dense(p) and shapes.w(p)[0] == channels:
            pad_out[id(p)] = p
        elif p.op_type not in CHANNELWISE or not shapes.follow_inputs(p, queue):
            return None
        for c in consumers.get(t, []):
            if shapes.depthwise(c, channels):
                dws[id(c)] = c
                queue.append(c.output[0])
            elif shapes.dense(c) and c.input[0] == t and shapes.w(c)[1] == channels:
                pad_in[id(c)] = c
            elif c.op_type in CHANNELWISE:
                queue.extend(c.output)
                if not shapes.follow_inputs(c, queue):
                    return None
            else:
                return None
    return region, pad_out, dws, pad_in


def _pad_initializer(g, inits: dict, uses: dict, node, index: int, axis: int, extra: int) -> None:
    """Zero-pad ``node``'s ``index``-th input (an initializer) by ``extra`` along ``axis``; a shared
    (deduplicated) initializer gets a padded copy of its own."""
    import numpy as np
    from onnx import numpy_helper

    name = node.input[index]
    a = numpy_helper.to_array(inits[name])
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    if uses.get(name, 0) > 1:
        uses[name] -= 1
        name = f"{name}_padded_{len(inits)}"
        g.initializer.append(numpy_helper.from_array(np.pad(a, widths), name))
        inits[name] = g.initializer[-1]
        node.input[index] = name
    else:
        inits[name].CopyFrom(numpy_helper.from_array(np.pad(a, widths), name))


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
    g = model.graph
    producer, consumers, inits = graph_maps(g)
    shapes = _Shapes(inits)
    boundary = {o.name for o in g.output} | {i.name for i in g.input}
    widened, seen = 0, set()
    for dw in [n for n in g.node if shapes.depthwise(n)]:
        channels = attr(dw, "group", 1)
        extra = -(-channels // multiple) * multiple - channels
        found = None if id(dw) in seen or extra == 0 else _channel_region(dw, channels, producer, consumers,
                                                                          shapes, boundary)
        if found is None:
            continue
        region, pad_out, dws, pad_in = found
        uses: dict[str, int] = {}
        for node in g.node:
            for i in node.input:
                uses[i] = uses.get(i, 0) + 1
        for node in list(pad_out.values()) + list(dws.values()):
            _pad_initializer(g, inits, uses, node, 1, 0, extra)
            if len(node.input) > 2 and node.input[2]:
                _pad_initializer(g, inits, uses, node, 2, 0, extra)
        for node in dws.values():
            next(a for a in node.attribute if a.name == "group").i = channels + extra
            seen.add(id(node))
        for node in pad_in.values():
            _pad_initializer(g, inits, uses, node, 1, 1, extra)
        keep = [vi for vi in g.value_info if vi.name not in region]
        del g.value_info[:]
        g.value_info.extend(keep)
        widened += len(dws)
    return widened
