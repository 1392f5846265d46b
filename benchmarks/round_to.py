"""Does pruning to channel counts that suit the INT8 kernels make pruned INT8 pay? Issue #12's open lever.

compress prunes to multiples of 8 channels (``Prune.round_to``). ONNX Runtime's x86 INT8 kernels work on wider
blocks: its depthwise kernel wants multiples of 16 (compress pads those convs at quantization time), and its
GEMM packs output channels in blocks of 16. This script prunes each model by half with ``round_to`` 8, 16 and 32,
exports and quantizes each with compress, and times every INT8 model against its own FP32 model and against the
unpruned FP32 export with :func:`compress.measure.compare_speed` (interleaved rounds, batch 1, 1 thread, 95%
interval). Random weights and random calibration images: only speed is compared, not accuracy.
Writes benchmarks/results/round_to[_quick].{csv,md,json}.

    python -m benchmarks.round_to                  # 4 models at 224 px, round_to 8, 16 and 32 (~2 min on 2 cores)
    python -m benchmarks.round_to --quick          # MobileNetV3-small at 112 px, round_to 8 and 16
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from benchmarks._common import (RESULTS, env_markdown, environment, finish_environment, md_table, random_context,
                                write_results)
from benchmarks.compare_recipes import MODELS

ROUND_TO = (8, 16, 32)


def measure_model(name: str, work: Path, *, size: int, round_tos: tuple[int, ...], rounds: int, runs: int,
                  profile_runs: int = 0) -> list[dict]:
    """One row per ``round_to``: the pruned model's MACs and INT8 speed against its own FP32 and the unpruned FP32.
    With ``profile_runs``, the first row also has ``profile_ms``: ONNX Runtime's profiler's ms per run by op type,
    ``{"fp32": ..., "int8": ...}``."""
    import torch

    from benchmarks.int8_options import kernels, profile_by_op
    from compress.export import Export
    from compress.measure import compare_speed, onnx_call, onnx_params_macs
    from compress.models import create_model
    from compress.prune import Prune
    from compress.quantize import Quantize

    base = random_context(size, train=64)
    torch.manual_seed(0)
    net = create_model(name, num_classes=1000, weights="none")[0].eval()
    unpruned = Export(parity_images=4)(net, dataclasses.replace(base, run_dir=work / "unpruned", notes={}))
    x = base.data.normalize(base.data.test_x[:1]).numpy()
    rows = []
    for r in round_tos:
        ctx = dataclasses.replace(base, run_dir=work / f"round_to_{r}", notes={})
        fp32 = Export(parity_images=4)(Prune(ratio=0.5, round_to=r, allocation="uniform")(net, ctx), ctx)
        int8 = Quantize(calibration_size=64, speed_check_runs=0)(fp32, ctx)
        own = compare_speed(onnx_call(fp32.path, x, 1), onnx_call(int8.path, x, 1), rounds=rounds, runs_per_round=runs)
        ref = compare_speed(onnx_call(unpruned.path, x, 1), onnx_call(int8.path, x, 1), rounds=rounds,
                            runs_per_round=runs)
        params, macs = onnx_params_macs(fp32.path, size)
        rewrites = ctx.notes["quantize"].get("kernel_rewrites", {})
        n = {k: sum(kernels(m.path).values()) for k, m in (("fp32", fp32), ("int8", int8))}
        rows.append({"model": name, "round_to": r, "params": params, "macs": macs,
                     "depthwise_convs_padded": rewrites.get("depthwise_convs_padded"),
                     "fp32_ms": round(own.reference_ms, 4), "int8_ms": round(own.candidate_ms, 4),
                     "int8_vs_own_fp32": round(own.speedup, 3), "own_ci95_low": round(own.speedup_low, 3),
                     "own_ci95_high": round(own.speedup_high, 3), "own_verdict": own.verdict,
                     "unpruned_fp32_ms": round(ref.reference_ms, 4), "int8_vs_unpruned_fp32": round(ref.speedup, 3),
                     "unpruned_ci95_low": round(ref.speedup_low, 3), "unpruned_ci95_high": round(ref.speedup_high, 3),
                     "fp32_kernels": n["fp32"], "int8_kernels": n["int8"]})
        if profile_runs and len(rows) == 1:
            rows[0]["profile_ms"] = {k: profile_by_op(m.path, x, profile_runs, str(ctx.run_dir / f"profile_{k}"))
                                     for k, m in (("fp32", fp32), ("int8", int8))}
        print(f"{name} round_to {r}: {macs / 1e6:.0f} MMACs, INT8 {own.speedup:.2f}× its FP32 ({own.verdict}), "
              f"{ref.speedup:.2f}× the unpruned FP32 export", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    import tempfile

    p = argparse.ArgumentParser(prog="python -m benchmarks.round_to", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, help=f"default: all of {', '.join(MODELS)}")
    p.add_argument("--size", type=int, help="input pixels (default 224; quick 112)")
    p.add_argument("--round-to", type=int, nargs="+", help=f"channel multiples (default {' '.join(map(str, ROUND_TO))})")
    p.add_argument("--quick", action="store_true", help="MobileNetV3-small at 112 px, round_to 8 and 16, fewer rounds")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    from compress.console import library_output_to

    models = a.models or (MODELS[:1] if a.quick else MODELS)
    size = a.size or (112 if a.quick else 224)
    round_tos = tuple(a.round_to or ((8, 16) if a.quick else ROUND_TO))
    rounds, runs = (4, 10) if a.quick else (10, 30)
    env = environment([1])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="round-to-") as tmp:
        for name in models:
            (Path(tmp) / name).mkdir()
            with library_output_to(Path(tmp) / name / "log.txt"):  # quantizer and exporter chatter
                rows += measure_model(name, Path(tmp) / name, size=size, round_tos=round_tos, rounds=rounds,
                                      runs=runs, profile_runs=runs * 3)
    finish_environment(env)
    profiles = {(r["model"], r["round_to"]): r.pop("profile_ms") for r in rows if "profile_ms" in r}
    stem = "round_to_quick" if a.quick else "round_to"
    table = [[r["model"], r["round_to"], f"{r['macs'] / 1e6:.0f}", r["depthwise_convs_padded"],
              f"{r['fp32_ms']:.3f}", f"{r['int8_ms']:.3f}",
              f"{r['int8_vs_own_fp32']:.2f}× ({r['own_ci95_low']:.2f}–{r['own_ci95_high']:.2f}), {r['own_verdict']}",
              f"{r['int8_vs_unpruned_fp32']:.2f}× ({r['unpruned_ci95_low']:.2f}–{r['unpruned_ci95_high']:.2f})",
              f"{r['fp32_kernels']} / {r['int8_kernels']}"] for r in rows]
    md = [f"# Pruned (0.5) INT8 against channel rounding: {size}×{size}, batch 1, 1 thread, random weights\n",
          f"Each row: compress Prune(ratio=0.5, round_to=N) → Export → Quantize, timed with compare_speed in "
          f"{rounds} interleaved rounds of {runs} runs against its own FP32 model and against the unpruned FP32 "
          "export. Speed-ups are FP32 time / INT8 time with their 95% interval (higher is better); \"same within "
          "noise\" unless the interval and a 10% margin agree. Issue #12's targets: pruned+INT8 ≥ 1.3× its own "
          "pruned FP32 and ≥ 3× the unpruned FP32 export.\n",
          md_table(["model", "round_to", "pruned MMACs", "depthwise convs padded by the INT8 stage",
                    "pruned FP32 ms", "pruned INT8 ms", "INT8 vs its own pruned FP32 [≥1.3×]",
                    "INT8 vs the unpruned FP32 export [≥3×]", "kernels FP32 / INT8"], table), "",
          "Kernels: nodes of the graph ONNX Runtime runs for the pruned model (all optimizations), one launch each "
          "per inference (`benchmarks.int8_options.kernels`).\n",
          f"## Where the time goes (ONNX Runtime's profiler, ms per run by op type, {runs * 3} runs)\n",
          *[f"- **{model}, round_to {r}, {kind}** (kernel total {sum(ms.values()):.3f} ms): "
            + ", ".join(f"{op} {t:.3f}" for op, t in ms.items()) for (model, r), by_kind in profiles.items()
            for kind, ms in by_kind.items()], "",
          "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s.\n"]
    profile_rows = [{"model": m, "round_to": r, **p} for (m, r), p in profiles.items()]
    write_results(a.out, stem, md, rows, {"environment": env, "rows": rows, "profile_ms": profile_rows})
    print("\n".join(md[:3]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
