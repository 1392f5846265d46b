"""Prune ratio × precision on the default job: accuracy against latency and against size.

For each prune ratio (default 0, 0.25, 0.5, 0.7) runs the default job (``mobilenet_v3`` on Fashion-MNIST, INT8)
through ``compress.pipeline.run``. Every run shares the cached baseline, so only the first trains it. The FP32
point of a ratio is its export step, the INT8 point its quantize step (accuracy on the full test split, from the
run's report). Latencies are then re-measured for all of them together, batch 1, 1 thread, interleaved in one
process. Writes benchmarks/results/sweep[_quick].{csv,md,json} and sweep[_quick]_{latency,size}.png.

    python -m benchmarks.sweep                        # 6 fine-tune epochs per ratio (~10 min with a cached baseline)
    python -m benchmarks.sweep --finetune-epochs 12   # the default job's recovery schedule (~16 min)
    python -m benchmarks.sweep --quick                # 6,000 training images, short schedules (~3 min)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks._common import RESULTS, env_markdown, environment, finish_environment, md_table, ms, write_results
from benchmarks.accuracy import DEFAULT_JOB, QUICK
from compress.measure import interleaved

# Latency is re-measured interleaved at the end, so the per-step measurement only needs to be short.
SHORT_MEASURE = {"warmup_runs": 10, "min_runs": 100, "min_seconds": 0.3, "throughput_seconds": 0.3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.7])
    p.add_argument("--finetune-epochs", type=int, help="recovery epochs per pruned run (default 6; quick 1)")
    p.add_argument("--quick", action="store_true", help="6,000 training images and short schedules (~3 min)")
    p.add_argument("--runs", type=int, default=300, help="interleaved batch-1 runs per model (default 300)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)

    from compress.config import merge, resolve
    from compress.core import session
    from compress.errors import CompressError
    from compress.pipeline import run
    from compress.records import RunReport

    if any(not 0 <= r < 1 for r in a.ratios):
        raise CompressError("prune ratios must be in [0, 1)")
    suffix = "_quick" if a.quick else ""
    epochs = a.finetune_epochs or (1 if a.quick else 6)
    env = environment([1])
    points: list[dict] = []
    reused: list[str] = []  # finished runs with the same config are read back, not retrained
    for ratio in a.ratios:
        over = merge(DEFAULT_JOB, {"prune": {"ratio": ratio}, "finetune": {"epochs": epochs},
                                   "measure": SHORT_MEASURE})
        if a.quick:
            over = merge(over, {k: v for k, v in QUICK.items() if k != "measure"} | {"finetune": {"epochs": epochs}})
        cfg = resolve(overrides=over)
        run_dir = a.out / "runs" / f"sweep{suffix}_prune{ratio:g}"
        t = time.perf_counter()
        if (run_dir / "report.json").is_file() and resolve(run_dir / "config.yaml") == cfg:
            report = RunReport.load(run_dir / "report.json")
            reused.append(run_dir.name)
            print(f"prune {ratio:g}: reused the finished run {run_dir} (same config; delete it to retrain)", flush=True)
        else:
            report = run(cfg, run_dir)
            print(f"prune {ratio:g}: done in {time.perf_counter() - t:.0f} s", flush=True)
        for step, precision in (("export", "fp32"), ("quantize", "int8")):
            s = report.step(step)
            points.append({"prune_ratio": ratio, "precision": precision, "top1_pct": s.metrics.top1_pct,
                           "size_bytes": s.metrics.size_bytes, "params": s.metrics.params,
                           "macs": s.metrics.macs, "test_images": report.dataset["test_images"],
                           "model": str(run_dir / s.artifact), "quantize_notes": json.dumps(s.notes)
                           if step == "quantize" else ""})
    sessions = {i: session(Path(pt["model"]), 1) for i, pt in enumerate(points)}
    size = cfg.input_size
    import numpy as np

    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    times = interleaved({i: (lambda s=s: s.run(None, {"input": x})) for i, s in sessions.items()}, runs=a.runs)
    for i, pt in enumerate(points):
        pt["latency_ms_median"], pt["latency_ms_p90"] = ms(times[i], 0.5), ms(times[i], 0.9)
    finish_environment(env)
    a.out.mkdir(parents=True, exist_ok=True)
    plot(points, a.out, suffix)
    base = next(pt for pt in points if pt["precision"] == "fp32" and pt["prune_ratio"] == min(a.ratios))
    table = [[f"{pt['prune_ratio']:g}", pt["precision"], f"{pt['top1_pct']:.2f}",
              f"{pt['top1_pct'] - base['top1_pct']:+.2f}", f"{pt['latency_ms_median']:.3f}",
              f"{base['latency_ms_median'] / pt['latency_ms_median']:.2f}×", f"{pt['size_bytes'] / 1e3:.0f}",
              f"{base['size_bytes'] / pt['size_bytes']:.1f}×", f"{pt['macs'] / 1e6:.1f}"] for pt in points]
    md = [f"# sweep{suffix}: prune ratio × precision, {cfg.model} on {cfg.data} at {size}×{size}\n",
          f"Fine-tune {epochs} epoch(s) per pruned run; top-1 on the full test split ({points[0]['test_images']:,} "
          f"images); latency batch 1, 1 thread, median of {a.runs} interleaved runs. Ratios are against the "
          f"FP32 model at prune ratio {min(a.ratios):g}.\n",
          md_table(["prune", "precision", "top-1 %", "Δ points", "latency ms", "speed-up", "size KB", "smaller",
                    "MMACs"], table), "",
          f"![accuracy vs latency](sweep{suffix}_latency.png) ![accuracy vs size](sweep{suffix}_size.png)\n",
          "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s"
          + (f" ({len(reused)} of {len(a.ratios)} runs read back from earlier, finished runs with the same config: "
             f"{', '.join(reused)}; their training time is not included).\n" if reused else ".\n")]
    write_results(a.out, f"sweep{suffix}", md, points, {"environment": env, "points": points})
    print("\n".join(md[:3]))
    return 0


def plot(points: list[dict], out: Path, suffix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, xlabel, name in (("latency_ms_median", "latency, ms (batch 1, 1 thread)", "latency"),
                              ("size_bytes", "model size, KB", "size")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for precision, marker in (("fp32", "o"), ("int8", "s")):
            pts = sorted((p for p in points if p["precision"] == precision), key=lambda p: p["prune_ratio"])
            xs = [p[key] / (1e3 if key == "size_bytes" else 1) for p in pts]
            ax.plot(xs, [p["top1_pct"] for p in pts], marker=marker, label=precision.upper())
            for p, xv in zip(pts, xs):
                ax.annotate(f"{p['prune_ratio']:g}", (xv, p["top1_pct"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 %, full test split")
        ax.set_title("accuracy vs " + name + " (labels: prune ratio)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"sweep{suffix}_{name}.png")
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
