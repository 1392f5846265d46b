"""Latency, throughput, size and MACs of one model under the usual recipes, side by side, as ratios.

Per model (ImageNet shapes: 224×224, 1000 classes, random weights: only speed and size are compared):

  a  eager        PyTorch eager FP32
  b  onnx_fp32    plain ONNX export on ONNX Runtime FP32
  c  ort_int8     ORT ``quantize_static`` with its defaults (QDQ, S8S8, per-tensor): the copy-paste recipe
  c2 compress_int8  compress's Quantize on the same unpruned model (U8S8 on x86, per-channel, kernel rewrites)
  d  pruned_fp32  compress Prune(ratio=0.5, allocation="uniform") → ONNX FP32 (random weights: nothing to scan)
  e  pruned_int8  d + compress Quantize: what compress ships
  f  edge_int8    compress EdgeFriendly (ReLU for hardswish/SiLU) → prune → INT8 (when the model has
                  anything to swap; accuracy needs the fine-tune the pipeline runs, not shown here)

Latency at batch 1 with 1 thread and with all cores (median, p90), throughput at batch 32 with all cores,
all interleaved. Writes benchmarks/results/compare_recipes[_quick].{csv,md,json}.

    python -m benchmarks.compare_recipes            # 4 models, ~10 min on 2 cores
    python -m benchmarks.compare_recipes --quick    # mobilenet_v3_small only, at 112×112, fewer runs, ~30 s
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks._common import (RESULTS, env_markdown, environment, finish_environment, mac_bound_ms, md_table, ms,
                                ort_default_int8, random_context, write_results)
from compress.measure import interleaved

MODELS = ["mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "efficientnet_b0"]
VARIANTS = {
    "eager": "PyTorch eager FP32",
    "onnx_fp32": "ONNX Runtime FP32",
    "ort_int8": "ORT quantize_static defaults",
    "compress_int8": "compress INT8 (unpruned)",
    "pruned_fp32": "compress pruned 0.5, FP32",
    "pruned_int8": "compress pruned 0.5 + INT8",
    "edge_int8": "compress edge-friendly, pruned 0.5 + INT8",
}


def build(name: str, work: Path, *, size: int, calib: int, log) -> dict[str, dict]:
    """Every variant of ``name``: ``{variant: {"kind": "torch"|"onnx", "model": ..., "int8": bool}}``."""
    import torch

    from compress.edge_friendly import EdgeFriendly
    from compress.export import Export
    from compress.models import create_model
    from compress.prune import Prune
    from compress.quantize import Quantize

    base = random_context(size, train=calib)

    def ctx(sub: str):
        return dataclasses.replace(base, run_dir=work / sub, notes={})

    torch.manual_seed(0)
    net = create_model(name, num_classes=1000, weights="none")[0].eval()
    out: dict[str, dict] = {"eager": {"kind": "torch", "model": net, "int8": False}}
    t = time.perf_counter()
    fp32 = Export(parity_images=4)(net, ctx("plain"))
    out["onnx_fp32"] = {"kind": "onnx", "model": fp32.path, "int8": False}
    calib_x = base.data.normalize(base.data.train_x).numpy()
    out["ort_int8"] = {"kind": "onnx", "model": ort_default_int8(fp32.path, work / "ort_default_int8.onnx", calib_x),
                       "int8": True}
    c = ctx("compress_int8")
    out["compress_int8"] = {"kind": "onnx", "model": Quantize(calibration_size=calib, speed_check_runs=0)(fp32, c).path,
                            "int8": True, "notes": c.notes.get("quantize", {})}
    log(f"  {name}: exported and quantized in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    c = ctx("pruned")
    pruned = Prune(ratio=0.5, allocation="uniform")(net, c)
    pfp32 = Export(parity_images=4)(pruned, c)
    out["pruned_fp32"] = {"kind": "onnx", "model": pfp32.path, "int8": False}
    c = ctx("pruned_int8")
    out["pruned_int8"] = {"kind": "onnx", "model": Quantize(calibration_size=calib, speed_check_runs=0)(pfp32, c).path,
                          "int8": True, "notes": c.notes.get("quantize", {})}
    c = ctx("edge")
    edge = EdgeFriendly()(net, c)
    if c.notes["edge_friendly"]["activations_swapped"]:
        edge = Prune(ratio=0.5, allocation="uniform")(edge, c)
        efp32 = Export(parity_images=4)(edge, c)
        out["edge_int8"] = {"kind": "onnx", "int8": True,
                            "model": Quantize(calibration_size=calib, speed_check_runs=0)(efp32, c).path}
    log(f"  {name}: pruned, edge-friendly and quantized in {time.perf_counter() - t:.0f} s")
    return out


def runner(v: dict, threads: int, x):
    """``infer(x)`` for one variant at ``threads`` threads; eager PyTorch at its faster layout for ``x`` (NCHW or
    ``channels_last``, chosen as every compress run chooses it)."""
    from compress.core import session
    from compress.measure import torch_runner

    if v["kind"] == "torch":
        return torch_runner(v["model"], threads, x)[0]  # it pins the thread count itself
    sess = session(Path(v["model"]), threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def measure(variants: dict[str, dict], *, size: int, runs: int, tput_seconds: float, all_threads: int,
            env: dict, max_seconds: float) -> dict[str, dict]:
    import numpy as np
    import torch

    from compress.measure import onnx_params_macs, torch_macs

    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    x32 = rng.standard_normal((32, 3, size, size), dtype=np.float32)
    rows: dict[str, dict] = {}
    for k, v in variants.items():
        if v["kind"] == "torch":
            buf = io.BytesIO()
            torch.save(v["model"].state_dict(), buf)
            rows[k] = {"size_bytes": buf.getbuffer().nbytes,
                       "params": sum(p.numel() for p in v["model"].parameters()),
                       "macs": torch_macs(v["model"], size)}
        else:
            params, macs = onnx_params_macs(v["model"], size)
            rows[k] = {"size_bytes": Path(v["model"]).stat().st_size, "params": params, "macs": macs}
    for threads in sorted({1, all_threads}):
        fns = {k: runner(v, threads, x1) for k, v in variants.items()}
        times = interleaved({k: (lambda f=f: f(x1)) for k, f in fns.items()}, runs=runs, max_seconds=max_seconds)
        for k, t in times.items():
            rows[k][f"latency_ms_median_{threads}t"] = ms(t, 0.5)
            rows[k][f"latency_ms_p90_{threads}t"] = ms(t, 0.9)
            bound = mac_bound_ms(rows[k]["macs"], int8=variants[k]["int8"], threads=threads, env=env)
            rows[k][f"mac_bound_ms_{threads}t"] = bound
            rows[k][f"x_mac_bound_{threads}t"] = rows[k][f"latency_ms_median_{threads}t"] / bound if bound else None
        if threads == all_threads:  # throughput: rounds of short windows, taking turns, median per variant
            ips: dict[str, list[float]] = {k: [] for k in fns}
            for r in range(4):
                for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                    f = fns[k]
                    f(x32)
                    n, t0 = 0, time.perf_counter()
                    while n < 2 or time.perf_counter() - t0 < tput_seconds / 4:
                        f(x32)
                        n += 1
                    ips[k].append(n * 32 / (time.perf_counter() - t0))
            for k, v in ips.items():
                rows[k][f"throughput_ips_b32_{threads}t"] = float(np.median(v))
    torch.set_num_threads(all_threads)
    return rows


def ratios(r: dict[str, dict], t: int) -> dict[str, float | None]:
    def lat(k):
        return r[k][f"latency_ms_median_{t}t"] if k in r else None

    def div(a, b):
        return a / b if a is not None and b is not None else None

    return {
        "ORT default INT8 vs FP32 ONNX": div(lat("onnx_fp32"), lat("ort_int8")),
        "compress INT8 vs FP32 ONNX": div(lat("onnx_fp32"), lat("compress_int8")),
        "pruned vs unpruned (FP32 ONNX)": div(lat("onnx_fp32"), lat("pruned_fp32")),
        "pruned+INT8 vs FP32 ONNX": div(lat("onnx_fp32"), lat("pruned_int8")),
        "pruned+INT8 vs eager": div(lat("eager"), lat("pruned_int8")),
        "edge pruned+INT8 vs FP32 ONNX": div(lat("onnx_fp32"), lat("edge_int8")),
        "edge pruned+INT8 vs eager": div(lat("eager"), lat("edge_int8")),
        "size: FP32 ONNX / pruned+INT8": div(r["onnx_fp32"]["size_bytes"], r["pruned_int8"]["size_bytes"]),
    }


TARGETS = {"pruned vs unpruned (FP32 ONNX)": 2.0, "pruned+INT8 vs FP32 ONNX": 3.0, "pruned+INT8 vs eager": 10.0,
           "size: FP32 ONNX / pruned+INT8": 12.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_recipes", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="mobilenet_v3_small only, at 112×112 unless --size is given, fewer runs (~30 s)")
    p.add_argument("--models", nargs="+", choices=MODELS, help=f"default: all of {', '.join(MODELS)}")
    p.add_argument("--runs", type=int, help="batch-1 runs per variant and thread count (default 100; quick 30); "
                   "stops after 60 s (quick 5 s) per model and thread count once each variant has 20")
    p.add_argument("--size", type=int, help="input size in pixels (default 224; quick 112)")
    p.add_argument("--calibration-size", type=int, help="random calibration images (default 64; quick 16)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    from compress.console import library_output_to

    models = a.models or (MODELS[:1] if a.quick else MODELS)
    runs = a.runs or (30 if a.quick else 100)
    calib = a.calibration_size or (16 if a.quick else 64)
    a.size = a.size or (112 if a.quick else 224)
    all_threads = os.cpu_count() or 1
    env = environment(sorted({1, all_threads}))
    suffix = "_quick" if a.quick else ""
    log = lambda s: print(s, flush=True)  # noqa: E731
    rows, table, table_n, absolute = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="compare-recipes-") as tmp:
        for name in models:
            log(f"{name}: building variants")
            (Path(tmp) / name).mkdir()
            with library_output_to(Path(tmp) / name / "log.txt"):  # quantizer and exporter chatter
                variants = build(name, Path(tmp) / name, size=a.size, calib=calib, log=log)
            log(f"{name}: measuring {len(variants)} variants, {runs} runs each at 1 and {all_threads} threads")
            r = measure(variants, size=a.size, runs=runs, tput_seconds=1.0 if not a.quick else 0.5,
                        all_threads=all_threads, env=env, max_seconds=60.0 if not a.quick else 5.0)
            for k, v in r.items():
                notes = variants[k].get("notes", {})
                rows.append({"model": name, "variant": k, "description": VARIANTS[k], **v,
                             "kernel_rewrites": json.dumps(notes.get("kernel_rewrites")) if notes else ""})
                absolute.append([name, k, f"{v['latency_ms_median_1t']:.2f} / {v['latency_ms_p90_1t']:.2f}",
                                 f"{v[f'latency_ms_median_{all_threads}t']:.2f} / {v[f'latency_ms_p90_{all_threads}t']:.2f}",
                                 v[f"throughput_ips_b32_{all_threads}t"], f"{v['size_bytes'] / 1e6:.2f}",
                                 f"{v['macs'] / 1e6:.0f}", _ms3(v["mac_bound_ms_1t"]), v["x_mac_bound_1t"]])
            q1, qn = ratios(r, 1), ratios(r, all_threads)
            table.append([name] + list(q1.values()))
            table_n.append([name] + list(qn.values()))
            log(f"{name}: " + ", ".join(f"{k} {v:.2f}×" for k, v in q1.items() if v is not None))
    headers = ["model"] + ratio_headers()
    finish_environment(env)
    md = [f"# compare_recipes{suffix}: {a.size}×{a.size}, batch 1, random weights\n",
          f"Speed-up ratios (higher is better; > 1 means the second is slower). Targets in brackets. "
          f"Medians of up to {runs} interleaved batch-1 runs per variant (at least 20).\n",
          "## 1 thread\n", md_table(headers, table), "",
          f"## {all_threads} threads\n", md_table(headers, table_n), "",
          "## Absolute numbers (move with the machine's load; compare within a model)\n",
          md_table(["model", "variant", "ms p50 / p90 (1 thread)", f"ms p50 / p90 ({all_threads} threads)",
                    f"img/s batch 32 ({all_threads} threads)", "size MB", "MMACs", "MAC bound ms (1 thread)",
                    "× MAC bound"], absolute), "",
          "Variants: " + "; ".join(f"`{k}` {v}" for k, v in VARIANTS.items()) + ".  \n"
          "MACs count conv and linear layers as executed (compress INT8 includes its zero padding). "
          "`× MAC bound` = measured median ÷ (MACs at the peak rate below), 1 thread.\n",
          "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s.\n"]
    write_results(a.out, f"compare_recipes{suffix}", md, rows, {"environment": env, "rows": rows})
    log(f"wrote {a.out / f'compare_recipes{suffix}.md'} ({env['seconds']} s)")
    return 0


def _ms3(v: float | None) -> str | None:
    return None if v is None else f"{v:.3f}"


def ratio_headers() -> list[str]:
    names = ["ORT default INT8 vs FP32 ONNX", "compress INT8 vs FP32 ONNX", "pruned vs unpruned (FP32 ONNX)",
             "pruned+INT8 vs FP32 ONNX", "pruned+INT8 vs eager", "edge pruned+INT8 vs FP32 ONNX",
             "edge pruned+INT8 vs eager", "size: FP32 ONNX / pruned+INT8"]
    return [f"{n} [≥{TARGETS[n]:g}×]" if n in TARGETS else n for n in names]


if __name__ == "__main__":
    raise SystemExit(main())
