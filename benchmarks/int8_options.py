"""Why plain INT8 did not pay off, and what each ONNX Runtime option or compress rewrite changes.

For MobileNetV3-small and -large (224×224, batch 1, random weights) builds INT8 variants of the same FP32 ONNX
model: ORT's defaults, its activation types, ``op_types_to_quantize`` / ``nodes_to_exclude`` choices, the
``extra_options`` that could matter, per-tensor weights, session graph-optimisation levels, and compress's three
kernel rewrites one at a time. Each variant's speed-up over the FP32 model is measured interleaved in one process,
1 thread (wall-clock median and this thread's CPU-time median, which other processes' load disturbs less).
ONNX Runtime's profiler then splits FP32, ORT-U8S8 and compress time by op type.
Writes benchmarks/results/int8_options[_quick].{csv,md,json}.

    python -m benchmarks.int8_options           # ~8 min on 2 cores
    python -m benchmarks.int8_options --quick   # small only, fewer runs (~3 min)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import tempfile
import time
from pathlib import Path

from benchmarks._common import (RESULTS, env_markdown, environment, finish_environment, md_table, ort_default_int8,
                                random_context, write_results)
from compress.measure import interleaved

U8 = {"activation": "uint8"}
VARIANTS = [  # (key, what, how)
    ("ort_default", "quantize_static defaults: S8S8, per-tensor, no pre-process", {"ort_default": True}),
    ("s8s8_pc", "S8S8 (ActivationSymmetric), per-channel, pre-processed", {"activation": "int8"}),
    ("u8s8_pc", "U8S8, per-channel, pre-processed (compress without rewrites)", U8),
    ("u8s8_no_preopt", "U8S8, pre-process without graph optimisation (HardSwish stays one op)",
     {**U8, "skip_optimization": True}),
    ("ops_no_mul", "U8S8, op_types_to_quantize Conv/Gemm/Add/GlobalAveragePool (HardSigmoid, Mul in FP32)",
     {**U8, "op_types": ["Conv", "Gemm", "Add", "GlobalAveragePool"]}),
    ("ops_conv_gemm_add", "U8S8, op_types_to_quantize Conv/Gemm/Add", {**U8, "op_types": ["Conv", "Gemm", "Add"]}),
    ("exclude_stem", "U8S8, nodes_to_exclude the 3-channel stem conv", {**U8, "exclude_stem": True}),
    ("exclude_depthwise", "U8S8, nodes_to_exclude every depthwise conv", {**U8, "exclude_depthwise": True}),
    ("per_tensor", "U8S8, per-tensor weights", {**U8, "per_channel": False}),
    ("act_symmetric", "U8S8, ActivationSymmetric (zero point 128)", {**U8, "extra": {"ActivationSymmetric": True}}),
    ("dedicated_qdq", "U8S8, DedicatedQDQPair", {**U8, "extra": {"DedicatedQDQPair": True}}),
    ("qdq_on_weights", "U8S8, AddQDQPairToWeight", {**U8, "extra": {"AddQDQPairToWeight": True}}),
    ("no_bias_quant", "U8S8, QuantizeBias=False", {**U8, "extra": {"QuantizeBias": False}}),
    ("force_quantize", "U8S8, ForceQuantizeNoInputCheck", {**U8, "extra": {"ForceQuantizeNoInputCheck": True}}),
    ("keep_activations", "U8S8, QDQKeepRemovableActivations", {**U8, "extra": {"QDQKeepRemovableActivations": True}}),
    ("rw_hardsigmoid", "U8S8 + compress rewrite: hardsigmoid as a clip of codes", {**U8, "rewrites": ["hsig"]}),
    ("rw_depthwise", "U8S8 + compress rewrite: depthwise channels padded to 16", {**U8, "rewrites": ["dw"]}),
    ("rw_stem", "U8S8 + compress rewrite: stem input padded to 4 channels", {**U8, "rewrites": ["stem"]}),
    ("compress", "compress Quantize: U8S8 + all three rewrites", {"compress": True}),
    ("compress_extended", "compress INT8, session graph optimisation EXTENDED instead of ALL",
     {"compress": True, "level": "extended"}),
]


def quantize_variant(fp32: Path, out: Path, how: dict, calib, ctx) -> Path:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from compress.core import OnnxModel
    from compress.quantize import Quantize, calibration_reader
    from compress.rewrites import hardsigmoid_as_clip, pad_depthwise_channels, pad_stem_input

    if how.get("ort_default"):
        return ort_default_int8(fp32, out, calib)
    if how.get("compress"):
        c = dataclasses.replace(ctx, run_dir=out.parent / out.stem, notes={})
        return Quantize(calibration_size=len(calib), speed_check_runs=0)(OnnxModel(fp32), c).path
    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_optimization=how.get("skip_optimization", False))
    m = onnx.load(str(pre))
    if "dw" in how.get("rewrites", []):
        pad_depthwise_channels(m, 16)
        onnx.save(m, str(pre))
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    exclude = [convs[0].name] if how.get("exclude_stem") else []
    if how.get("exclude_depthwise"):
        exclude += [n.name for n in convs if next((a.i for a in n.attribute if a.name == "group"), 1) > 1]

    act = how.get("activation", "uint8")
    quantize_static(str(pre), str(out), calibration_reader(calib, batch_size=8), quant_format=QuantFormat.QDQ,
                    per_channel=how.get("per_channel", True),
                    activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=how.get("op_types"),
                    nodes_to_exclude=exclude or None,
                    extra_options={"ActivationSymmetric": act == "int8", "WeightSymmetric": True,
                                   **how.get("extra", {})})
    q = onnx.load(str(out))
    if "hsig" in how.get("rewrites", []):
        hardsigmoid_as_clip(q)
    if "stem" in how.get("rewrites", []):
        pad_stem_input(q)
    onnx.save(q, str(out))
    return out


def session(path: Path, level: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def kernels(path: Path) -> dict[str, int]:
    """Nodes by op type, most first, of the graph ONNX Runtime runs for ``path`` (all optimizations, CPU provider):
    the kernels one inference launches. On tiny feature maps each launch costs about the same, so the count sets
    the time."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level, so.optimized_model_filepath = 3, str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return dict(ops.most_common())


def timed(sessions: dict, x, runs: int) -> dict[str, tuple[float, float]]:
    """``{key: (wall ms median, thread CPU ms median)}`` from :func:`compress.measure.interleaved` (blocks taking
    turns, order reversed every other block); each call also records this thread's CPU time."""
    import numpy as np

    cpu: dict = {k: [] for k in sessions}

    def call(k):
        c0 = time.thread_time()
        sessions[k].run(None, {"input": x})
        cpu[k].append(time.thread_time() - c0)

    wall = interleaved({k: (lambda k=k: call(k)) for k in sessions}, runs=runs)
    cpu = {k: v[-len(wall[k]):] for k, v in cpu.items()}  # the timed calls, not the warm-up
    return {k: (float(np.median(wall[k])) * 1e3, float(np.median(cpu[k])) * 1e3) for k in sessions}


def profile_by_op(path: Path, x, runs: int, prefix: str) -> dict[str, float]:
    """Median per-run kernel time (ms) by op type from ONNX Runtime's profiler; convs split by kind."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    so.enable_profiling, so.profile_file_prefix = True, prefix
    opt = prefix + "_optimized.onnx"
    so.optimized_model_filepath = opt
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        s.run(None, {"input": x})
    events = json.loads(Path(s.end_profiling()).read_text())
    m = onnx.load(opt)
    inits = {t.name: tuple(t.dims) for t in m.graph.initializer}
    kind = {}
    for n in m.graph.node:
        if n.op_type in ("Conv", "QLinearConv"):
            w = inits.get(n.input[1] if n.op_type == "Conv" else n.input[3], ())
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            cin = w[1] * group if len(w) == 4 else 0
            kind[n.name] = (f"{n.op_type} stem" if cin in (3, 4) else f"{n.op_type} depthwise" if group > 1
                            else f"{n.op_type} SE" if ("fc" in n.name or "activation" in n.name) else f"{n.op_type} 1×1")
    per: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][:-len("_kernel_time")]
            per.setdefault(kind.get(node, e["args"]["op_name"]), []).append(e["dur"])
    return {k: float(np.sum(v)) / runs / 1e3 for k, v in sorted(per.items(), key=lambda kv: -sum(kv[1]))}


def main(argv: list[str] | None = None) -> int:
    import logging

    import numpy as np
    import torch

    from compress.console import library_output_to
    from compress.export import Export
    from compress.models import create_model

    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_options", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="mobilenet_v3_small only, 100 runs (~3 min)")
    p.add_argument("--runs", type=int, help="interleaved runs per variant (default 300; quick 100)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    models = ["mobilenet_v3_small"] if a.quick else ["mobilenet_v3_small", "mobilenet_v3_large"]
    runs = a.runs or (100 if a.quick else 300)
    suffix = "_quick" if a.quick else ""
    env = environment([1])
    start = time.perf_counter()
    rows, prof_rows = [], []
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="int8-options-") as tmp:
        tmp = Path(tmp)
        for name in models:
            ctx = random_context(224, train=16, run_dir=tmp / name)
            torch.manual_seed(0)
            net = create_model(name, num_classes=1000, weights="none")[0].eval()
            with library_output_to(tmp / "log.txt"), contextlib.redirect_stdout(io.StringIO()):
                fp32 = Export(parity_images=2)(net, ctx).path
                calib = ctx.data.normalize(ctx.data.train_x).numpy()
                paths = {"fp32": fp32}
                for key, _, how in VARIANTS:
                    paths[key] = quantize_variant(fp32, tmp / name / f"{key}.onnx", how, calib, ctx)
            print(f"{name}: {len(VARIANTS)} INT8 variants built ({time.perf_counter() - start:.0f} s)", flush=True)
            sessions = {k: session(p_, next((h.get("level", "all") for kk, _, h in VARIANTS if kk == k), "all"))
                        for k, p_ in paths.items()}
            sessions["fp32_extended"] = session(fp32, "extended")
            x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
            res = timed(sessions, x, runs)
            what = {k: w for k, w, _ in VARIANTS} | {"fp32": "FP32, graph optimisation ALL (NCHWc, fused activations)",
                                                     "fp32_extended": "FP32, graph optimisation EXTENDED"}
            for k, (wall, cpu) in res.items():
                rows.append({"model": name, "variant": k, "what": what[k], "wall_ms": wall, "cpu_ms": cpu,
                             "speedup_wall": res["fp32"][0] / wall, "speedup_cpu": res["fp32"][1] / cpu})
            for k in ("fp32", "u8s8_pc", "compress"):
                prof = profile_by_op(paths[k], x, 100, str(tmp / f"{name}_{k}"))
                prof_rows.append({"model": name, "variant": k, "total_ms": sum(prof.values()),
                                  **{op: round(v, 4) for op, v in prof.items()}})
            print(f"{name}: measured ({time.perf_counter() - start:.0f} s)", flush=True)
    finish_environment(env)
    md = [f"# int8_options{suffix}: speed-up of each INT8 recipe over the same FP32 model\n",
          f"224×224, batch 1, 1 thread, medians of {runs} interleaved runs; > 1 means INT8 is faster. "
          "CPU = this thread's CPU time (robust to other processes' load).\n"]
    for name in models:
        md += [f"## {name}\n", md_table(["variant", "what", "wall ms", "speed-up (wall)", "speed-up (CPU)"],
                                        [[r["variant"], r["what"], f"{r['wall_ms']:.3f}", f"{r['speedup_wall']:.2f}×",
                                          f"{r['speedup_cpu']:.2f}×"] for r in rows if r["model"] == name]), ""]
    md.append("## Where the time goes (ONNX Runtime profiler, ms per run by op type, 100 runs)\n")
    for r in prof_rows:
        ops = {k: v for k, v in r.items() if k not in ("model", "variant", "total_ms")}
        md.append(f"- **{r['model']} {r['variant']}** (kernel total {r['total_ms']:.2f} ms): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in ops.items()))
    md += ["", "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s.\n"]
    write_results(a.out, f"int8_options{suffix}", md, rows, {"environment": env, "rows": rows, "profile": prof_rows})
    print(f"wrote {a.out / f'int8_options{suffix}.md'} ({env['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
