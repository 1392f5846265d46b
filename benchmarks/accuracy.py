"""What compress's INT8 choices buy on the default job: accuracy on the full Fashion-MNIST test split and latency.

Runs the default main job (``compress.pipeline.run`` with ``model=mobilenet_v3, quantize, prune 0.5``), or reads a
finished run folder given as argument, then quantizes the run's FP32 model (``export/model.onnx``) again with:

* ORT's ``quantize_static`` defaults (QDQ, S8S8, per-tensor MinMax, no pre-processing): the copy-paste recipe;
* compress's Quantize with one lever changed at a time (calibration method and size, per-tensor weights,
  no kernel rewrites), to show which choices matter.

All variants calibrate on the same *training* images; every accuracy is on the full held-out test split; the
latencies are batch 1, 1 thread, interleaved in one process. Writes benchmarks/results/accuracy[_quick].{csv,md,json}.

    python -m benchmarks.accuracy                    # runs the default job first (~7 min with its baseline cached)
    python -m benchmarks.accuracy runs/my-run        # reuse a finished run folder (under 1 min)
    python -m benchmarks.accuracy --quick            # 6,000 training images, short schedules, one lever (~1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import tempfile
import time
from pathlib import Path

from benchmarks._common import (RESULTS, env_markdown, environment, finish_environment, md_table, ms,
                                ort_default_int8, write_results)
from compress.measure import interleaved

DEFAULT_JOB = {"model": "mobilenet_v3", "quantize": {}, "prune": {"ratio": 0.5}}
QUICK = {"limit_train": 6000, "train": {"epochs": 3}, "finetune": {"epochs": 1},
         "measure": {"warmup_runs": 10, "min_runs": 200, "min_seconds": 0.5, "throughput_seconds": 0.3}}


def run_main_job(run_dir: Path, quick: bool) -> Path:
    from compress.config import merge, resolve
    from compress.pipeline import run

    cfg = resolve(overrides=merge(DEFAULT_JOB, QUICK) if quick else DEFAULT_JOB)
    if (run_dir / "report.json").is_file() and resolve(run_dir / "config.yaml") == cfg:
        print(f"reusing the finished main job in {run_dir}", flush=True)
        return run_dir
    print(f"running the main job into {run_dir} (the baseline is cached across runs)", flush=True)
    t = time.perf_counter()
    run(cfg, run_dir)
    print(f"main job done in {time.perf_counter() - t:.0f} s", flush=True)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", type=Path, help="a finished compress run folder to reuse (skips training)")
    p.add_argument("--quick", action="store_true",
                   help="train on 6,000 images with short schedules, and try one lever of the six (~3 min)")
    p.add_argument("--runs", type=int, default=300, help="interleaved batch-1 runs per variant (default 300)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    suffix = "_quick" if a.quick else ""
    env = environment([1])
    run_dir = a.run_dir or run_main_job(a.out / "runs" / f"main{suffix}", a.quick)
    rows = evaluate(run_dir, runs=a.runs, levers=1 if a.quick else None)
    finish_environment(env)
    fp32 = rows[0]
    table = [[r["variant"], r["recipe"], f"{r['top1_pct']:.2f}", f"{r['top1_pct'] - fp32['top1_pct']:+.2f}",
              f"{r['latency_ms_median']:.3f}", f"{fp32['latency_ms_median'] / r['latency_ms_median']:.2f}×",
              f"{r['size_bytes'] / 1e3:.0f}"] for r in rows]
    md = [f"# accuracy{suffix}: the default job's FP32 model under each INT8 recipe\n",
          f"Run folder: `{run_dir}`. Top-1 on the full test split ({rows[0]['test_images']:,} images); latency at "
          f"batch 1, 1 thread, median of {a.runs} interleaved runs; calibration on training images only.\n",
          md_table(["variant", "recipe", "top-1 %", "Δ vs FP32 (points)", "latency ms", "speed-up vs FP32", "size KB"],
                   table), "", "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s.\n"]
    write_results(a.out, f"accuracy{suffix}", md, rows, {"environment": env, "rows": rows})
    print("\n".join(md[:3]))
    return 0


def evaluate(run_dir: Path, *, runs: int, levers: int | None = None) -> list[dict]:
    """Every variant's row; ``levers`` keeps only the first so many of compress's one-change levers."""
    from compress.config import resolve
    from compress.console import library_output_to
    from compress.core import Context, OnnxModel, run_onnx, session
    from compress.data import load_dataset
    from compress.errors import CompressError
    from compress.measure import MeasureConfig
    from compress.models import preprocessing
    from compress.quantize import Quantize, calibration_images

    run_dir = Path(run_dir)
    fp32_path = run_dir / "export" / "model.onnx"
    if not (run_dir / "config.yaml").is_file() or not fp32_path.is_file():
        raise CompressError(f"{run_dir} is not a finished compress run (needs config.yaml and export/model.onnx)")
    cfg = resolve(run_dir / "config.yaml")
    data = load_dataset(cfg.data, input_size=cfg.input_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                        limit_train=cfg.limit_train, limit_test=None)  # always the full held-out split
    data = data.with_normalization(*preprocessing(cfg.model, cfg.weights))  # as the run fed its model
    shipped = cfg.quantize or Quantize()  # a run without INT8: the levers start from the default recipe
    variants: list[tuple[str, str, Path | Quantize | None]] = [
        ("fp32", "the run's FP32 ONNX (export step)", fp32_path)]
    shipped_images = shipped.calibration_count(len(data.train_x), data.input_size)
    if (run_dir / "quantize" / "model.onnx").is_file():
        variants.append(("compress_shipped", f"compress INT8 as shipped by the run ({shipped.calibration}, "
                         f"{shipped_images} images)", run_dir / "quantize" / "model.onnx"))
    variants.append(("ort_default", "ORT quantize_static defaults (S8S8, per-tensor, MinMax, no pre-process)", None))
    changes = [
        ("no_rewrites", "compress without kernel rewrites", {"kernel_rewrites": False}),
        ("per_tensor", "compress, per-tensor weights", {"per_channel": False}),
        ("entropy", "compress, entropy calibration", {"calibration": "entropy"}),
        ("percentile", "compress, percentile calibration", {"calibration": "percentile"}),
        ("calib_128", "compress, 128 calibration images", {"calibration_size": 128}),
        ("calib_2048", "compress, 2,048 calibration images", {"calibration_size": 2048}),
    ]
    for key, recipe, change in changes[:levers]:
        variants.append((key, recipe, dataclasses.replace(shipped, speed_check_runs=0, **change)))
    x = data.normalize(data.test_x).numpy()
    y = data.test_y.numpy()
    rows, sessions = [], {}
    with tempfile.TemporaryDirectory(prefix="accuracy-") as tmp, library_output_to(Path(tmp) / "log.txt"):
        ctx = Context(data=data, run_dir=Path(tmp), seed=cfg.seed, device="cpu", measure=MeasureConfig(threads=1),
                      meter=None)
        for key, recipe, how in variants:
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print their progress
                if how is None:  # the plain ORT recipe, calibrated on the images compress would use
                    path = ort_default_int8(fp32_path, Path(tmp) / "ort_default.onnx",
                                            calibration_images(data, shipped_images, cfg.seed))
                elif isinstance(how, Quantize):
                    path = how(OnnxModel(fp32_path), dataclasses.replace(ctx, run_dir=Path(tmp) / key)).path
                else:
                    path = how
            sessions[key] = session(path)
            top1 = 100.0 * float((run_onnx(sessions[key], x).argmax(1) == y).mean())
            rows.append({"variant": key, "recipe": recipe, "top1_pct": top1, "test_images": len(y),
                         "size_bytes": Path(path).stat().st_size})
            print(f"  {key:18s} top-1 {top1:6.2f}%  ({time.perf_counter() - t:.0f} s)", flush=True)
        x1 = x[:1]
        times = interleaved({k: (lambda s=s: s.run(None, {"input": x1})) for k, s in sessions.items()}, runs=runs)
    for r in rows:
        r["latency_ms_median"] = ms(times[r["variant"]], 0.5)
        r["latency_ms_p90"] = ms(times[r["variant"]], 0.9)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
