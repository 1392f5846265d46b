"""INT8 against its own FP32 model as the input grows: the main job's model from 32 to 224 px.

The main job ships a pruned (0.5) MobileNetV3-small at 32×32, where INT8 can run slower than FP32 on x86: per-op
overhead dominates tiny feature maps. This script exports the same pruned network at each input size, quantizes
it with compress's ``Quantize`` (the recipe the main job uses on this CPU), and times INT8 against FP32 with
:func:`compress.measure.compare_speed` (interleaved rounds, batch 1, 1 thread): the speed-up with its 95% interval
and verdict. Weights: a finished main-job run's fine-tuned model (``--run``), or the same pruned architecture with
random weights; calibration uses random images either way, so only speed is compared, not accuracy.
Writes benchmarks/results/input_size[_quick].{csv,md,json}.

    python -m benchmarks.input_size --run runs/main   # 32, 48, 64, 96, 128, 160, 224 px
    python -m benchmarks.input_size --quick           # 32 and 64 px, fewer rounds
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._common import (RESULTS, env_markdown, environment, finish_environment, md_table, random_context,
                                write_results)

SIZES = (32, 48, 64, 96, 128, 160, 224)


def main_job_model(run: Path | None) -> tuple["object", str]:
    """The main job's pruned network: the fine-tuned one of ``run``, or the same architecture, random weights."""
    from compress import checkpoint as ckpt
    from compress.models import create_model
    from compress.prune import Prune
    from compress.records import RunReport

    net, _ = create_model("mobilenet_v3", num_classes=10, weights="none")
    if run is None:
        ctx = random_context(32, train=64, classes=10)
        return Prune(ratio=0.5, allocation="uniform")(net.eval(), ctx), "random weights"
    report = RunReport.load(run)
    step = report.step("finetune")
    net, _ = create_model(report.model, num_classes=report.dataset["classes"], weights="none")
    return ckpt.restore_model(ckpt.load(run / step.artifact), net).eval(), f"fine-tuned weights of {run}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.input_size", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a finished main-job run folder (default: random weights)")
    p.add_argument("--sizes", type=int, nargs="+", help=f"input sizes (default {' '.join(map(str, SIZES))})")
    p.add_argument("--quick", action="store_true", help="32 and 64 px, fewer rounds")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)

    from benchmarks.int8_options import kernels
    from compress.export import Export
    from compress.measure import compare_speed, onnx_call
    from compress.quantize import Quantize

    sizes = a.sizes or ((32, 64) if a.quick else SIZES)
    rounds, runs = (4, 10) if a.quick else (10, 30)
    env = environment([1])
    model, weights = main_job_model(a.run)
    rows, by_op = [], {}
    for size in sizes:
        ctx = random_context(size, train=128, classes=10)
        fp32 = Export()(model, ctx)
        int8 = Quantize(calibration_size=128, speed_check_runs=0)(fp32, ctx)
        x = ctx.data.normalize(ctx.data.test_x[:1]).numpy()
        r = compare_speed(onnx_call(fp32.path, x, 1), onnx_call(int8.path, x, 1), rounds=rounds, runs_per_round=runs)
        ops = {"fp32": kernels(fp32.path), "int8": kernels(int8.path)}
        n = {k: sum(v.values()) for k, v in ops.items()}
        rows.append({"input_px": size, "fp32_ms": round(r.reference_ms, 4), "int8_ms": round(r.candidate_ms, 4),
                     "int8_speedup_vs_fp32": round(r.speedup, 3), "ci95_low": round(r.speedup_low, 3),
                     "ci95_high": round(r.speedup_high, 3), "verdict": r.verdict,
                     "int8_target": ctx.notes["quantize"]["target"],
                     "activation_type": ctx.notes["quantize"]["activation_type"],
                     "fp32_kernels": n["fp32"], "int8_kernels": n["int8"],
                     "fp32_us_per_kernel": round(1e3 * r.reference_ms / n["fp32"], 3),
                     "int8_us_per_kernel": round(1e3 * r.candidate_ms / n["int8"], 3)})
        by_op[size] = ops
        print(f"{size} px: INT8 {r.speedup:.2f}× its FP32 ({r.verdict})", flush=True)
    finish_environment(env)
    stem = "input_size_quick" if a.quick else "input_size"
    table = [[r["input_px"], f"{r['fp32_ms']:.3f}", f"{r['int8_ms']:.3f}", f"{r['int8_speedup_vs_fp32']:.2f}×",
              f"{r['ci95_low']:.2f}–{r['ci95_high']:.2f}×", r["verdict"],
              f"{r['fp32_kernels']} / {r['int8_kernels']}",
              f"{r['fp32_us_per_kernel']:.2f} / {r['int8_us_per_kernel']:.2f}"] for r in rows]
    first = by_op[sizes[0]]
    md = ["# INT8 vs its own FP32 against input size: the main job's pruned (0.5) MobileNetV3-small\n",
          f"Weights: {weights}. Each size: compress export, then compress INT8 ({rows[0]['activation_type']} "
          f"activations, target {rows[0]['int8_target']}), timed against that FP32 model in {rounds} interleaved "
          f"rounds of {runs} batch-1 runs, 1 thread. Speed-up = FP32 time / INT8 time, with its 95% interval; "
          "\"same within noise\" unless the interval and a 10% margin agree.\n",
          md_table(["input px", "FP32 ms", "INT8 ms", "INT8 speed-up vs FP32", "95% interval", "verdict",
                    "kernels FP32 / INT8", "µs per kernel FP32 / INT8"], table), "",
          "Kernels: nodes of the graph ONNX Runtime runs (all optimizations), one launch each per inference; µs per "
          "kernel = median latency / kernels. Where both models spend about the same per kernel, the INT8 model is "
          "slower by its extra kernels, not by slower arithmetic.\n",
          f"At {sizes[0]} px, FP32 runs " + ", ".join(f"{v} {k}" for k, v in first["fp32"].items())
          + "; INT8 runs " + ", ".join(f"{v} {k}" for k, v in first["int8"].items()) + ".\n",
          "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s.\n"]
    write_results(a.out, stem, md, rows, {"environment": env, "weights": weights, "rows": rows,
                                             "kernels_by_op": by_op})
    print("\n".join(md[:3]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
