"""One measurement harness for both kinds of model.

``measure(model, ctx)`` returns a flat :class:`Metrics` record for a torch ``nn.Module`` or an
:class:`~compress.export.OnnxModel`, with the same data, batch sizes and thread count. It never
changes the model. Latency is always measured on the CPU, the edge proxy.

Definitions, so numbers compare across steps:

* ``top1_pct``: top-1 accuracy on the full held-out test split.
* ``size_bytes``: the artifact on disk (ONNX file; for torch, the serialised state_dict).
* ``params``: weight and bias elements (ONNX: initializers, excluding quantization scales and zero points).
* ``macs``: multiply-accumulates of conv and linear layers for one image (elementwise ops excluded).
* ``latency_ms_median``/``latency_ms_p90``: batch 1, after warm-up, ``threads`` intra-op threads.
* ``throughput_ips``: images per second at ``throughput_batch``.
* ``energy_per_inference_j``: energy of the timed batch-1 loop divided by its inferences, labelled
  by ``energy_method``; ``co2_per_inference_g`` uses the run's country.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from compress.core import Context, OnnxModel, session
from compress.errors import CompressError
from compress.records import Metrics

if TYPE_CHECKING:
    import numpy as np
    import torch.nn as nn

    from compress.energy import EnergyMeter, Reading


@dataclass(frozen=True, kw_only=True)
class MeasureConfig:
    """How hard to measure. Defaults give stable medians on a busy 2-core machine in ~10 s a step."""

    threads: int = 1  # batch-1 latency with one thread: the edge proxy, and the least noisy
    warmup_runs: int = 50
    min_runs: int = 1000  # the energy loop needs ≥1,000 inferences ...
    min_seconds: float = 5.0  # ... and several seconds for the meter to mean anything
    throughput_batch: int = 32
    throughput_seconds: float = 1.5
    eval_batch: int = 500

    def check(self) -> None:
        if self.threads < 1 or self.min_runs < 1 or self.throughput_batch < 1 or self.eval_batch < 1:
            raise CompressError("measure: threads, min_runs, throughput_batch and eval_batch must be at least 1")


@dataclass(frozen=True)
class Measurement:
    """The flat metrics, plus the test-set confusion matrix (rows: true class, columns: predicted)."""

    metrics: Metrics
    confusion: list[list[int]]


def measure(model: "nn.Module | OnnxModel", ctx: "Context", *, step: str) -> Measurement:
    """Measure ``model`` on the context's test split and CPU.

    >>> m = measure(model, ctx, step="baseline")  # doctest: +SKIP
    >>> m.top1_pct, m.latency_ms_median
    """
    cfg = ctx.measure
    if isinstance(model, OnnxModel):
        infer, info = onnx_runner(model, cfg.threads)
    else:
        infer, info = torch_runner(model, cfg.threads, ctx.data.normalize(ctx.data.test_x[:1]).numpy())
    try:
        confusion = _confusion(infer, ctx, cfg.eval_batch)
        times, energy = latency_loop(infer, ctx.data.normalize(ctx.data.test_x[:1]).numpy(), cfg, ctx.meter,
                                     f"{step}/inference", ctx.tick)
        ips = throughput(infer, ctx.data.normalize(ctx.data.test_x[:cfg.throughput_batch]).numpy(), cfg)
    finally:
        info["restore"]()
    per_inf_j = energy.energy_j / len(times) if energy.energy_j is not None else None
    per_inf_g = energy.co2_g / len(times) if energy.co2_g is not None else None
    correct = sum(confusion[i][i] for i in range(len(confusion)))
    top1 = 100.0 * correct / max(1, len(ctx.data.test_y))
    return Measurement(Metrics(
        top1_pct=top1, size_bytes=info["size_bytes"], params=info["params"], macs=info["macs"](ctx.data.input_size),
        latency_ms_median=_quantile(times, 0.5) * 1e3, latency_ms_p90=_quantile(times, 0.9) * 1e3,
        latency_batch=1, latency_runs=len(times), threads=cfg.threads, throughput_ips=ips,
        throughput_batch=cfg.throughput_batch, energy_per_inference_j=per_inf_j, co2_per_inference_g=per_inf_g,
        energy_method=energy.method, runtime=info["runtime"],
    ), confusion)


ENERGY_BATCHES = (8, 32)  # batch 1 is every step's own energy loop


def energy_by_batch(model: "nn.Module | OnnxModel", ctx: "Context", *, step: str,
                    batches: tuple[int, ...] = ENERGY_BATCHES) -> dict[str, dict]:
    """Energy per inference (image) of ``model`` at each batch size: the step's energy loop (``min_seconds``,
    at least ``min_runs`` images) on a batch of test images, one meter task per batch. Keys are the batch sizes."""
    import numpy as np

    cfg = ctx.measure
    one = ctx.data.normalize(ctx.data.test_x[:1]).numpy()
    if isinstance(model, OnnxModel):
        infer, info = onnx_runner(model, cfg.threads)
    else:
        infer, info = torch_runner(model, cfg.threads, one)
    out = {}
    try:
        for b in batches:
            x = ctx.data.normalize(ctx.data.test_x[:b]).numpy()
            x = np.concatenate([x] * -(-b // len(x)))[:b] if len(x) else x  # fewer test images than the batch
            loop = MeasureConfig(threads=cfg.threads, warmup_runs=min(cfg.warmup_runs, 10),
                                 min_runs=max(10, -(-cfg.min_runs // b)), min_seconds=cfg.min_seconds)
            times, reading = latency_loop(infer, x, loop, ctx.meter, f"{step}/energy_batch{b}")
            images = len(times) * b
            out[str(b)] = {"energy_per_inference_j": reading.energy_j / images if reading.energy_j is not None
                           else None, "ms_per_image": _quantile(times, 0.5) * 1e3 / b, "images": images,
                           "energy_method": reading.method}
    finally:
        info["restore"]()
    return out


def _quantile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.quantile(np.asarray(values), q))


def _confusion(infer: Callable, ctx: "Context", batch: int) -> list[list[int]]:
    import numpy as np

    k = len(ctx.data.classes)
    cm = np.zeros((k, k), dtype=np.int64)
    for xb, yb in ctx.data.batches(ctx.data.test_x, ctx.data.test_y, batch):
        np.add.at(cm, (yb.numpy(), infer(xb.numpy()).argmax(1)), 1)
    return cm.tolist()


def latency_loop(infer: Callable, x: "np.ndarray", cfg: MeasureConfig, meter: "EnergyMeter", task: str,
                 tick: Callable[[str, int, int], None] | None = None) -> tuple[list[float], "Reading"]:
    """Warm up, then time single calls until both ``min_runs`` and ``min_seconds`` are reached,
    inside one energy-meter task. Returns per-call seconds and the energy reading."""
    for _ in range(cfg.warmup_runs):
        infer(x)
    times: list[float] = []
    with meter.track(task) as energy:
        start = time.perf_counter()
        while len(times) < cfg.min_runs or time.perf_counter() - start < cfg.min_seconds:
            t0 = time.perf_counter()
            infer(x)
            times.append(time.perf_counter() - t0)
            if tick and len(times) % 100 == 0:
                tick("latency", len(times), cfg.min_runs)
    return times, energy


def interleaved(fns: dict[Any, Callable[[], Any]], *, runs: int, block: int = 5, warmup: int = 10,
                max_seconds: float | None = None) -> dict[Any, list[float]]:
    """Per-call seconds of each function: warm-up, then blocks of ``block`` calls taking turns, the order
    reversed every other block, so load from other processes falls on all of them alike.

    With ``max_seconds``, stops early once that much time has passed and every function has at least 20 calls
    (multi-threaded runs on a loaded machine can take seconds each)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[Any, list[float]] = {k: [] for k in fns}
    names = list(fns)
    start = time.perf_counter()
    for r in range(max(1, -(-runs // block))):
        if max_seconds is not None and r * block >= 20 and time.perf_counter() - start > max_seconds:
            break
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = fns[name]
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


SAME_WITHIN = 0.10  # speed-ups within ±10% count as the same speed (see SpeedComparison.verdict)
SPEED_CHECK_RUNS = 200  # batch-1 runs of each model when two are timed in turns for a decision or a headline


@dataclass(frozen=True)
class SpeedComparison:
    """Paired, interleaved batch-1 timing of a candidate against a reference, with a 95% interval on the ratio."""

    reference_ms: float  # median over all timed runs
    candidate_ms: float
    speedup: float  # reference / candidate time: > 1 means the candidate is faster
    speedup_low: float  # 95% confidence interval of the speed-up, from the spread across rounds
    speedup_high: float
    rounds: int
    runs: int  # timed runs of each model in total

    @property
    def verdict(self) -> str:
        """"faster" or "slower" only when the whole interval says so and the difference exceeds
        :data:`SAME_WITHIN`; otherwise "same within noise". The margin is there because the interval covers the
        noise within one pair of ONNX Runtime sessions, not the offset between sessions: two sessions of one
        identical file measured 0.93–1.12× apart here."""
        if self.speedup_low > 1 and self.speedup > 1 + SAME_WITHIN:
            return "faster"
        if self.speedup_high < 1 and self.speedup < 1 - SAME_WITHIN:
            return "slower"
        return "same within noise"


def compare_speed(reference: Callable[[], Any], candidate: Callable[[], Any], *, rounds: int = 10,
                  runs_per_round: int = 20) -> SpeedComparison:
    """Time two callables in ``rounds`` interleaved rounds; each round's ratio of medians is one sample, and the
    interval is a t-interval on their logarithms (ratios multiply). Identical models land inside it."""
    import numpy as np

    logs, ref_all, cand_all = [], [], []
    for _ in range(max(2, rounds)):
        t = interleaved({"ref": reference, "cand": candidate}, runs=runs_per_round, block=5, warmup=3)
        ref_all += t["ref"]
        cand_all += t["cand"]
        logs.append(float(np.log(np.median(t["ref"]) / np.median(t["cand"]))))
    n = len(logs)
    mean, sd = float(np.mean(logs)), float(np.std(logs, ddof=1))
    half = _T975.get(n - 1, 2.0) * sd / np.sqrt(n)
    return SpeedComparison(reference_ms=float(np.median(ref_all)) * 1e3, candidate_ms=float(np.median(cand_all)) * 1e3,
                           speedup=float(np.exp(mean)), speedup_low=float(np.exp(mean - half)),
                           speedup_high=float(np.exp(mean + half)), rounds=n, runs=len(ref_all))


# Student's t, two-sided 95%, by degrees of freedom (rounds - 1); scipy is not a dependency.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 29: 2.045}


def onnx_call(path: Path, x: "np.ndarray", threads: int) -> Callable[[], Any]:
    """One batch-1 inference of the ONNX model at ``path``, as a callable for the timing loops."""
    s = session(path, threads)
    name = s.get_inputs()[0].name
    return lambda: s.run(None, {name: x})


def throughput(infer: Callable, x: "np.ndarray", cfg: MeasureConfig) -> float:
    """Images per second for repeated calls on the batch ``x``."""
    infer(x)
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < cfg.throughput_seconds:
        infer(x)
        n += 1
    return n * len(x) / (time.perf_counter() - start)


def torch_runner(model: "nn.Module", threads: int, x: "np.ndarray"):
    """Eager PyTorch at its best on this CPU: NCHW or channels_last, whichever runs ``x`` faster (timed
    interleaved), with the thread count pinned. The model itself is never changed: channels_last runs a copy."""
    import copy

    import numpy as np
    import torch

    model = model.eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def runner(net, layout):
        def infer(batch: "np.ndarray") -> "np.ndarray":
            with torch.inference_mode():
                t = torch.from_numpy(batch)
                return net(t.contiguous(memory_format=layout) if t.ndim == 4 else t).numpy()
        return infer

    options = {"NCHW": runner(model, torch.contiguous_format), "channels_last": runner(last, torch.channels_last)}
    times = interleaved({k: (lambda f=f: f(x)) for k, f in options.items()}, runs=30, block=5, warmup=5)
    layout = min(times, key=lambda k: float(np.median(times[k])))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return options[layout], {
        "size_bytes": buf.getbuffer().nbytes,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": lambda size: torch_macs(model, size),
        "restore": lambda: torch.set_num_threads(before),
        "runtime": f"torch eager ({layout})",
    }


def onnx_runner(model: "OnnxModel", threads: int):
    sess = model.session(threads)
    name = sess.get_inputs()[0].name

    def infer(x: "np.ndarray") -> "np.ndarray":
        return sess.run(None, {name: x})[0]

    params, _ = onnx_params_macs(model.path, 0)
    return infer, {
        "size_bytes": model.path.stat().st_size,
        "params": params,
        "macs": lambda size: onnx_params_macs(model.path, size)[1],
        "restore": lambda: None,
        "runtime": "onnxruntime" + (" (basic graph optimisations: built for another CPU)" if model.foreign else ""),
    }


def torch_macs(model: "nn.Module", size: int) -> int:
    """Conv and linear MACs for one ``3×size×size`` image (output elements × weights per output)."""
    import torch
    import torch.nn as nn

    total = 0

    def hook(mod, _inp, out):
        nonlocal total
        total += out.numel() * (mod.weight.numel() // mod.weight.shape[0])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return int(total)


def _run_shapes(model: "onnx.ModelProto", tensors: list[str], size: int) -> dict[str, tuple[int, ...]]:
    """The shapes of ``tensors`` from one ONNX Runtime run on a zero image (``model`` with them as outputs)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in known)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, size, size), dtype=np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})
    return {o.name: tuple(v.shape) for o, v in zip(sess.get_outputs(), out)}


def onnx_params_macs(path, size: int) -> tuple[int, int]:
    """``(params, MACs)`` of an ONNX model, counted the same way as :func:`torch_macs`."""
    import numpy as np
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    qparams = set()
    dq_source = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qparams.update(node.input[1:])
            if node.op_type == "DequantizeLinear":
                dq_source[node.output[0]] = node.input[0]
    params = int(sum(np.prod(d, dtype=np.int64) for n, d in inits.items() if n not in qparams and len(d) >= 1))
    if size <= 0:
        return params, 0
    graph_input = model.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    dims[0].ClearField("dim_param")
    dims[0].dim_value = 1
    for d, v in zip(dims[2:], (size, size)):
        d.ClearField("dim_param")
        d.dim_value = v
    inferred = shape_inference.infer_shapes(model)
    shapes = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
              for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    layers = [n.output[0] for n in inferred.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    if any(not all(shapes.get(o, ())) for o in layers):  # shape inference stopped (a Pad with computed pads)
        shapes.update(_run_shapes(model, layers, size))
    macs = 0
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        w = node.input[1]
        w_shape = inits.get(w) or inits.get(dq_source.get(w, ""))
        out_shape = shapes.get(node.output[0])
        if not w_shape or not out_shape:
            continue
        out_elems = int(np.prod(out_shape, dtype=np.int64))
        if node.op_type == "Conv":
            per_out = int(np.prod(w_shape[1:], dtype=np.int64))
        else:  # Gemm/MatMul: K is the weight's reduction dim
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            per_out = w_shape[1] if trans_b else w_shape[0]
        macs += out_elems * per_out
    return params, int(macs)
