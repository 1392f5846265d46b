"""Tried for issue #12 and not adopted: squeeze-and-excitation multiplies made same-shape in INT8.

In compress's INT8 model of a squeeze-and-excitation network, each gate multiply is a QLinearMul of a (1, C, 1, 1)
gate and a (1, C, H, W) feature map. ONNX Runtime's broadcast loop can run that as C calls of its element-wise
kernel, H·W elements each: on small maps the calls, not the elements, would set the time. To test this, the script
Expands the gate's uint8 codes to the feature map's shape before their DequantizeLinear, so that the fused
QLinearMul is same-shape; the outputs stay bit-identical. It times the rewritten model against compress's INT8
model of the main job's pruned network (random weights), and counts the kernels each runs.
Writes benchmarks/results/se_gate_expand.{csv,md,json}.

    python -m benchmarks.se_gate_expand            # 32 and 224 px (about 1 min on 2 cores)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._common import (RESULTS, env_markdown, environment, finish_environment, md_table, random_context,
                                write_results)


def expand_gates(model: "onnx.ModelProto") -> int:
    """Rewrite ``model`` in place: every Mul of two DequantizeLinear outputs whose shapes differ gets the smaller
    one's uint8 codes Expanded to the larger one's shape (Shape → Expand → its own DequantizeLinear). Returns how
    many multiplies were rewritten."""
    import numpy as np
    import onnx
    from onnx import helper

    from compress.rewrites import graph_maps

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph  # data_prop: Shape → Expand
    shape = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
             for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    producer, _, _ = graph_maps(model.graph)
    nodes, rewritten = [], 0
    for n in model.graph.node:
        dqs = [producer.get(i) for i in n.input]
        shapes = [shape.get(i) for i in n.input]
        if (n.op_type == "Mul" and all(d is not None and d.op_type == "DequantizeLinear" for d in dqs)
                and all(s and all(s[1:]) for s in shapes) and shapes[0] != shapes[1]):
            small = int(np.prod(shapes[0][1:]) > np.prod(shapes[1][1:]))  # the gate's input (the batch may be 0)
            gate, full = dqs[small], dqs[1 - small]
            size, codes = f"{n.name}_full_shape", f"{n.name}_gate_codes"
            nodes += [helper.make_node("Shape", [full.input[0]], [size], name=f"{n.name}_shape"),
                      helper.make_node("Expand", [gate.input[0], size], [codes], name=f"{n.name}_expand"),
                      helper.make_node("DequantizeLinear", [codes, *gate.input[1:]], [codes + "_dq"],
                                       name=f"{n.name}_gate_dq")]
            n.input[small] = codes + "_dq"
            rewritten += 1
        nodes.append(n)  # after the nodes it now reads: the order stays topological
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def measure(size: int, work: Path, *, rounds: int, runs: int) -> dict:
    """One row: compress's INT8 model of the main job's network at ``size`` px against its gate-expanded copy."""
    import numpy as np
    import onnx

    from benchmarks.input_size import main_job_model
    from benchmarks.int8_options import kernels
    from compress.core import run_onnx, session
    from compress.export import Export
    from compress.measure import compare_speed, onnx_call
    from compress.quantize import Quantize

    model, _ = main_job_model(None)
    ctx = random_context(size, train=128, classes=10)
    int8 = Quantize(calibration_size=128, speed_check_runs=0)(Export()(model, ctx), ctx)
    rewritten = onnx.load(str(int8.path))
    gates = expand_gates(rewritten)
    onnx.checker.check_model(rewritten)
    path = work / f"gates_expanded_{size}.onnx"
    onnx.save(rewritten, str(path))
    xs = ctx.data.normalize(ctx.data.test_x[:8]).numpy()
    diff = float(np.abs(run_onnx(session(int8.path), xs) - run_onnx(session(path), xs)).max())
    r = compare_speed(onnx_call(int8.path, xs[:1], 1), onnx_call(path, xs[:1], 1), rounds=rounds,
                      runs_per_round=runs)
    return {"input_px": size, "gates_expanded": gates, "max_abs_output_diff": diff,
            "int8_ms": round(r.reference_ms, 4), "expanded_ms": round(r.candidate_ms, 4),
            "expanded_vs_int8": round(r.speedup, 3), "ci95_low": round(r.speedup_low, 3),
            "ci95_high": round(r.speedup_high, 3), "verdict": r.verdict,
            "int8_kernels": sum(kernels(int8.path).values()), "expanded_kernels": sum(kernels(path).values())}


def main(argv: list[str] | None = None) -> int:
    import tempfile

    p = argparse.ArgumentParser(prog="python -m benchmarks.se_gate_expand", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="input sizes (default 32 224)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    from compress.console import library_output_to

    env = environment([1])
    with tempfile.TemporaryDirectory(prefix="se-gate-") as tmp, library_output_to(Path(tmp) / "log.txt"):
        rows = [measure(size, Path(tmp), rounds=10, runs=30) for size in a.sizes]
    finish_environment(env)
    table = [[r["input_px"], r["gates_expanded"], f"{r['max_abs_output_diff']:g}", f"{r['int8_ms']:.3f}",
              f"{r['expanded_ms']:.3f}", f"{r['expanded_vs_int8']:.2f}× ({r['ci95_low']:.2f}–{r['ci95_high']:.2f})",
              r["verdict"], f"{r['int8_kernels']} / {r['expanded_kernels']}"] for r in rows]
    md = ["# Squeeze-and-excitation multiplies made same-shape in INT8: the main job's pruned MobileNetV3-small\n",
          "Random weights. compress's INT8 model (Export → Quantize for this CPU) against the same file with every "
          "gate's uint8 codes Expanded to its feature map's shape (`expand_gates`), timed with compare_speed in 10 "
          "interleaved rounds of 30 batch-1 runs, 1 thread. Speed-up = INT8 time / rewritten time, with its 95% "
          "interval; output difference over 8 images. Kernels: nodes of the graph ONNX Runtime runs.\n",
          md_table(["input px", "gate multiplies rewritten", "max output difference", "INT8 ms", "rewritten ms",
                    "rewritten vs INT8", "verdict", "kernels INT8 / rewritten"], table), "",
          "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s.\n"]
    write_results(a.out, "se_gate_expand", md, rows, {"environment": env, "rows": rows})
    print("\n".join(md[:3]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
