"""LiteRT (TensorFlow Lite, XNNPACK) next to ONNX Runtime: batch-1 latency of one model, FP32 and INT8, 1 thread.

For each model (default: MobileNetV3-small, and the same with ReLU for hardswish) and input size builds the four files a compress bundle can hold from the same torch model (random
weights: only time and size matter here): ONNX FP32 (compress Export), ONNX INT8 (compress Quantize, this CPU's
recipe), LiteRT FP32 and LiteRT INT8 (compress.litert: litert-torch, then ai-edge-quantizer full-integer INT8).
All four run in one process, interleaved in blocks with the order reversed every other block, so other processes'
load falls on all alike; ratios against ONNX Runtime FP32 are what to read. A fifth runner, LiteRT INT8 without the
XNNPACK delegate (the interpreter's reference kernels), shows what the delegate is worth.
Writes benchmarks/results/litert[_quick].{md,json,csv}. Needs the converter environment (tools/litert/setup.sh).

    python -m benchmarks.litert            # mobilenet_v3_small (+ a ReLU variant) at 32 and 224 px (~6 min)
    python -m benchmarks.litert --quick    # 32 px only, 100 runs (~3 min)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path

from benchmarks._common import (RESULTS, env_markdown, environment, finish_environment, md_table, ms,
                                random_context, write_results)

RUNNERS = {  # key: what it is
    "ort_fp32": "ONNX Runtime FP32 (graph optimisation ALL)",
    "ort_int8": "ONNX Runtime INT8 (compress Quantize, QDQ)",
    "litert_fp32": "LiteRT FP32 (XNNPACK)",
    "litert_int8": "LiteRT INT8 full-integer (XNNPACK)",
    "litert_int8_ref": "LiteRT INT8 full-integer, no XNNPACK (reference kernels)",
}


def build(name: str, size: int, work: Path) -> dict:
    """The four files for ``name`` at ``size``: {key: path}, plus the converter's report."""
    import torch

    from compress.console import library_output_to
    from compress.data import normalize
    from compress.edge_friendly import EdgeFriendly
    from compress.export import Export
    from compress.litert import convert_litert
    from compress.models import create_model
    from compress.quantize import Quantize

    work.mkdir(parents=True, exist_ok=True)
    ctx = random_context(size, train=32, test=2, classes=1000, run_dir=work / "run")
    torch.manual_seed(0)
    net = create_model(name.removesuffix("+relu"), num_classes=1000, weights="none")[0].eval()
    if name.endswith("+relu"):  # hardswish → ReLU (SE blocks kept): what XNNPACK's INT8 path makes of it
        net = EdgeFriendly(activation="relu")(net, ctx).eval()
    calib = normalize(ctx.data.train_x).numpy()
    with library_output_to(work / "log.txt"), contextlib.redirect_stdout(io.StringIO()):
        fp32 = Export(parity_images=2)(net, ctx)
        int8 = Quantize(calibration_size=len(calib), speed_check_runs=0)(fp32, ctx)
    converted = convert_litert(net, work / "litert", input_size=size, calib=calib)
    return {"ort_fp32": fp32.path, "ort_int8": int8.path, "litert_fp32": converted.fp32, "litert_int8": converted.int8,
            "report": converted.report, "calibration_images": len(calib)}


def runners(files: dict, size: int) -> dict:
    """{key: zero-argument callable running one batch-1 inference}."""
    import numpy as np

    from compress.core import session
    from compress.litert import TfliteModel

    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    out = {}
    for key in ("ort_fp32", "ort_int8"):
        s = session(files[key], threads=1)
        out[key] = lambda s=s: s.run(None, {"input": x})
    for key, file, xnnpack in [("litert_fp32", "litert_fp32", True), ("litert_int8", "litert_int8", True),
                               ("litert_int8_ref", "litert_int8", False)]:
        m = TfliteModel(files[file], threads=1, xnnpack=xnnpack)
        xi = m.quantize_input(x[0].transpose(1, 2, 0)[None])
        out[key] = lambda m=m, xi=xi: m.run(xi)
    return out


def main(argv: list[str] | None = None) -> int:
    import importlib.metadata as metadata

    from compress.host import cpu_record
    from compress.litert import op_census
    from compress.measure import interleaved

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="32 px only, 100 runs (~3 min)")
    p.add_argument("--models", nargs="+", default=["mobilenet_v3_small", "mobilenet_v3_small+relu"],
                   help="compress model names; NAME+relu swaps hardswish for ReLU (compress's EdgeFriendly)")
    p.add_argument("--sizes", nargs="+", type=int, help="input sizes (default 32 224; quick 32)")
    p.add_argument("--runs", type=int, help="interleaved runs per runner (default 300; quick 100)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    sizes = a.sizes or ([32] if a.quick else [32, 224])
    runs = a.runs or (100 if a.quick else 300)
    suffix = "_quick" if a.quick else ""
    env = environment([1])
    env["host"] = cpu_record()
    logging.getLogger().setLevel(logging.ERROR)
    rows, converter = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-litert-") as tmp:
        for name in a.models:
            for size in sizes:
                files = build(name, size, Path(tmp) / f"{name}-{size}")
                converter = files["report"]
                print(f"{name} {size} px: built ({time.perf_counter() - start:.0f} s)", flush=True)
                times = interleaved(runners(files, size), runs=runs, warmup=20)
                census = op_census(files["litert_int8"])
                base = ms(times["ort_fp32"], 0.5)
                for key, t in times.items():
                    path = files[key.removesuffix("_ref")]
                    rows.append({"model": name, "input_px": size, "runner": key, "what": RUNNERS[key],
                                 "latency_ms_median": ms(t, 0.5), "latency_ms_p90": ms(t, 0.9), "runs": len(t),
                                 "speedup_vs_ort_fp32": base / ms(t, 0.5), "size_bytes": Path(path).stat().st_size,
                                 "int8_float_ops": census["float_ops"] if key.startswith("litert_int8") else None,
                                 "xnnpack_partitions": census["xnnpack_partitions"] if key == "litert_int8" else None})
                print(f"{name} {size} px: measured ({time.perf_counter() - start:.0f} s)", flush=True)
    finish_environment(env)
    env["versions"]["ai-edge-litert"] = metadata.version("ai-edge-litert")
    env["converter_versions"] = converter.get("versions", {})
    host = env["host"]
    md = [f"# litert{suffix}: LiteRT (XNNPACK) and ONNX Runtime, same model, FP32 and INT8\n",
          f"Batch 1, 1 thread, medians of {runs} interleaved runs per runner; speed-up > 1 means faster than ONNX "
          "Runtime FP32 on the same model. Random weights (latency and size only). LiteRT INT8 is full-integer "
          "(ai-edge-quantizer static_wi8_ai8, INT8 input and output); ONNX INT8 is compress's QDQ recipe for this "
          "CPU.\n"]
    for name in a.models:
        for size in sizes:
            parts = next(r["xnnpack_partitions"] for r in rows
                         if r["model"] == name and r["input_px"] == size and r["runner"] == "litert_int8")
            md += [f"## {name}, {size}×{size}\n",
                   f"LiteRT INT8 runs in {parts} XNNPACK partition(s) (1: XNNPACK runs every op).\n",
                   md_table(["runner", "what", "median ms", "p90 ms", "speed-up vs ORT FP32", "file bytes"],
                            [[r["runner"], r["what"], f"{r['latency_ms_median']:.3f}", f"{r['latency_ms_p90']:.3f}",
                              f"{r['speedup_vs_ort_fp32']:.2f}×", f"{r['size_bytes']:,}"]
                             for r in rows if r["model"] == name and r["input_px"] == size]), ""]
    v, cv = env["versions"], env["converter_versions"]
    md += ["## Environment\n", env_markdown(env),
           f"  \nCPU record (compress.host): {host['cpu']}, {host['machine']}, {host['cores']} cores, "
           f"SIMD {', '.join(host['cpu_flags'])}.  \n"
           f"LiteRT: ai-edge-litert {v['ai-edge-litert']}; converted by litert-torch {cv.get('litert-torch')} "
           f"(torch {cv.get('torch')}) and ai-edge-quantizer {cv.get('ai-edge-quantizer')}.  \n"
           f"Wall time {env['seconds']} s.\n"]
    write_results(a.out, f"litert{suffix}", md, rows, {"environment": env, "rows": rows})
    print(f"wrote {a.out / f'litert{suffix}.md'} ({env['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
