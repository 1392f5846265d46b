"""Prune ratio × precision on the default job, as a ``compress sweep``: accuracy against latency and against size.

The grid (prune ratios, default 0, 0.25, 0.5, 0.7; FP32 and INT8) of the default job (``mobilenet_v3`` on
Fashion-MNIST) runs through :func:`compress.sweep.run_sweep`: each point is a Ray Tune trial and an ordinary run
folder under ``OUT/runs/sweep[_quick]/trials/``; the trials share one cached baseline, and a second invocation
reuses finished trials. The sweep then re-measures every deployed model on this machine, batch 1, 1 thread,
interleaved in one process; this script plots those latencies against accuracy (full test split) and size.
Writes benchmarks/results/sweep[_quick].{csv,md,json} and sweep[_quick]_{latency,size}.png, next to the sweep's own
sweep.md/sweep.html in the sweep folder.

    python -m benchmarks.sweep                        # 6 fine-tune epochs per pruned run
    python -m benchmarks.sweep --finetune-epochs 12   # the default job's recovery schedule
    python -m benchmarks.sweep --quick                # ratios 0 and 0.5, 6,000 training images, short schedules
    python -m benchmarks.sweep --config sweep.yaml    # your own grid (``compress sweep --config``'s format)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._common import RESULTS, env_markdown, environment, finish_environment, md_table, write_results
from benchmarks.accuracy import DEFAULT_JOB, QUICK


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--ratios", type=float, nargs="+", help="prune ratios (default 0 0.25 0.5 0.7; quick 0 0.5)")
    p.add_argument("--finetune-epochs", type=int, help="recovery epochs per pruned run (default 6; quick 1)")
    p.add_argument("--quick", action="store_true", help="6,000 training images and short schedules")
    p.add_argument("--runs", type=int, default=300, help="interleaved batch-1 runs per model (default 300)")
    p.add_argument("--max-concurrent", type=int, help="trials at a time (default: Ray's, one per CPU)")
    p.add_argument("--config", type=Path, help="a sweep grid YAML (compress sweep --config) instead of the default "
                   "job's; --ratios and --finetune-epochs still override it when given")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)

    from compress.config import load_yaml, merge
    from compress.sweep import run_sweep

    suffix = "_quick" if a.quick else ""
    if a.config:
        grid = merge(load_yaml(a.config), {**({"finetune": {"epochs": a.finetune_epochs}} if a.finetune_epochs else {}),
                                           **({"sweep": {"prune": a.ratios}} if a.ratios else {})})
    else:
        grid = merge(DEFAULT_JOB, {k: v for k, v in QUICK.items() if k != "measure"} if a.quick else {})
        grid = merge(grid, {"finetune": {"epochs": a.finetune_epochs or (1 if a.quick else 6)},
                            "sweep": {"prune": a.ratios or ([0.0, 0.5] if a.quick else [0.0, 0.25, 0.5, 0.7]),
                                      "int8": [False, True]}})
    epochs = (grid.get("finetune") or {}).get("epochs")
    env = environment([1])
    sweep_dir = a.out / "runs" / f"sweep{suffix}"
    summary = run_sweep(grid, sweep_dir, max_concurrent=a.max_concurrent, runs=a.runs, energy_seconds=0,
                        log=lambda line: print(f"sweep: {line}", flush=True))
    finish_environment(env)
    points = [{"prune_ratio": r["prune_ratio"], "precision": "int8" if r["deployed_step"] == "quantize" else "fp32",
               **{k: r[k] for k in ("top1_pct", "size_bytes", "macs", "latency_ms_median", "latency_ms_p90",
                                    "status", "attempts", "frontier", "name")}}
              for r in summary["trials"] if r["status"] != "failed"]
    if summary["failed"]:
        print(f"failed trials: {', '.join(summary['failed'])} (see {sweep_dir / 'sweep.md'})", flush=True)
    if not points:
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    plot(points, a.out, suffix)
    base = min((pt for pt in points if pt["precision"] == "fp32"), key=lambda pt: pt["prune_ratio"], default=None)
    base = base or points[0]
    table = [[f"{pt['prune_ratio']:g}", pt["precision"], f"{pt['top1_pct']:.2f}",
              f"{pt['top1_pct'] - base['top1_pct']:+.2f}", f"{pt['latency_ms_median']:.3f}",
              f"{base['latency_ms_median'] / pt['latency_ms_median']:.2f}×", f"{pt['size_bytes'] / 1e3:.0f}",
              f"{base['size_bytes'] / pt['size_bytes']:.1f}×", f"{pt['macs'] / 1e6:.1f}",
              "yes" if pt["frontier"] else "", pt["status"]]
             for pt in sorted(points, key=lambda pt: (pt["prune_ratio"], pt["precision"]))]
    reused = sum(pt["status"] == "reused" for pt in points)
    md = [f"# sweep{suffix}: prune ratio × precision, {grid.get('model', 'mobilenet_v3')} on "
          f"{grid.get('data', 'the default data set')}\n",
          f"`compress sweep` (Ray Tune) into `{sweep_dir.name}/`: "
          + (f"fine-tune {epochs} epoch(s)" if epochs else "the default fine-tuning") + " per pruned run; top-1 "
          f"on the full test split; latency re-measured after the trials, batch 1, 1 thread, median of {a.runs} "
          f"interleaved runs. Ratios (speed-up, smaller) are against the FP32 model at prune ratio "
          f"{base['prune_ratio']:g}; \"frontier\" is the sweep's accuracy/latency/size Pareto frontier. "
          f"Recommended under a {summary['max_drop']:g}-point budget: {summary['recommendation']}.\n",
          md_table(["prune", "precision", "top-1 %", "Δ points", "latency ms", "speed-up", "size KB", "smaller",
                    "MMACs", "frontier", "trial"], table), "",
          f"![accuracy vs latency](sweep{suffix}_latency.png) ![accuracy vs size](sweep{suffix}_size.png)\n",
          "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s"
          + (f" ({reused} of {len(points)} trials reused from an earlier sweep into the same folder; their training "
             "time is not included)" if reused else "")
          + ". Ray's trial workers are not this process's children: their CPU time counts as other processes'.\n"]
    write_results(a.out, f"sweep{suffix}", md, points, {"environment": env, "points": points, "sweep": summary})
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
