"""The realistic job: EfficientNet-Lite0's ImageNet weights fine-tuned on Fashion-MNIST, pruned 30% and quantized,
next to the same network trained from scratch for at least as long. Both on the full 60,000/10,000 split.

    compress run efficientnet_lite0 --weights imagenet --prune 0.3 --int8 --input-size S --epochs E \\
        --finetune-epochs F
    compress run efficientnet_lite0 --weights none --prune 0 --input-size S --epochs E     # the from-scratch check

The scratch run gets the same number of baseline epochs, so at least the transfer run's training time: its first
epoch trains the whole network where the transfer run's trains only the new head.

    python -m benchmarks.headline                        # 48 px, 11 + 4 epochs: about 45 min on 2 Zen 5 cores
    python -m benchmarks.headline --input-size 32 --epochs 16 --finetune-epochs 6    # the earlier 32-px job
    python -m benchmarks.headline --transfer-run DIR --transfer-wall-s S   # reuse a finished transfer run
    python -m benchmarks.headline --transfer-run DIR --scratch-run DIR2      # and a finished scratch run

Runs cold: a fresh baseline cache, so nothing is reused between the two runs or from earlier ones. Writes
``benchmarks/results/headline.{md,json,csv}``: one row per target of issue #10, measured, and whether it was met.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks._common import RESULTS, env_markdown, environment, finish_environment, md_table, write_results
from compress.records import RunReport

MODEL = "efficientnet_lite0"
MEASURE = {"min_runs": 100, "min_seconds": 0.5, "throughput_seconds": 0.3, "warmup_runs": 10}


def run_job(out: Path, *, size: int, epochs: int, transfer: bool, finetune_epochs: int) -> tuple[object, float]:
    """One cold ``compress run`` of the job (or of its from-scratch baseline); the report and the wall seconds."""
    from compress.config import resolve
    from compress.pipeline import run

    overrides: dict = {"model": MODEL, "input_size": size, "weights": "imagenet" if transfer else "none",
                       "train": {"epochs": epochs}, "measure": MEASURE}
    if transfer:
        overrides |= {"prune": {"ratio": 0.3}, "finetune": {"epochs": finetune_epochs}, "quantize": {}}
    start = time.monotonic()
    report = run(resolve(overrides=overrides), out)
    return report, time.monotonic() - start


def targets(transfer, scratch, transfer_wall_s: float | None) -> list[dict]:
    """Issue #10's targets for the realistic job, each with what was measured."""
    base, final = transfer.baseline, transfer.deployed()
    speed = transfer.step("quantize").notes.get("speed_check", {}) if transfer.has_step("quantize") else {}
    s_base = scratch.baseline
    t_train, s_train = base.work.seconds, s_base.work.seconds
    rows = [
        ("transfer baseline top-1 (full test split)", "≥ 94.0%", f"{base.metrics.top1_pct:.2f}%",
         base.metrics.top1_pct >= 94.0),
        ("transfer baseline vs the same model from scratch, at least as long (training s: transfer, scratch)",
         "≥ +2.0 pt", f"{base.metrics.top1_pct - s_base.metrics.top1_pct:+.2f} pt ({base.metrics.top1_pct:.2f}% "
         f"vs {s_base.metrics.top1_pct:.2f}%; {t_train:.0f} s vs {s_train:.0f} s)",
         base.metrics.top1_pct - s_base.metrics.top1_pct >= 2.0 and s_train >= 0.95 * t_train),
        ("final INT8 model vs the baseline", "within 1.0 pt",
         f"{final.step}: {final.metrics.top1_pct:.2f}% ({final.metrics.top1_pct - base.metrics.top1_pct:+.2f} pt)",
         final.step == "quantize" and base.metrics.top1_pct - final.metrics.top1_pct <= 1.0),
        ("INT8 vs its own FP32 export, batch 1, 1 thread (speed check, 95% CI)", "≥ 1.5×",
         f"{speed['speedup']:.2f}× ({speed['speedup_low']:.2f}–{speed['speedup_high']:.2f})" if speed else "n/a",
         bool(speed) and speed["speedup_low"] >= 1.5),
        ("cold wall time of the transfer run, set-up excluded", "≤ 30 min",
         f"{transfer_wall_s / 60:.1f} min" if transfer_wall_s else "n/a (reused run, no wall time given)",
         bool(transfer_wall_s) and transfer_wall_s <= 1800),
    ]
    return [{"target": t, "goal": g, "measured": m, "met": bool(ok)} for t, g, m, ok in rows]


def reused(a: argparse.Namespace, transfer, scratch) -> list[str]:
    """Where runs were reused rather than run here, the CPU each report records."""
    return [f"  \nThe {name} run was reused from `{path}`; it was measured on {r.environment.get('cpu')} (family "
            f"{r.environment.get('cpu_family')} model {r.environment.get('cpu_model')}, "
            f"{', '.join(r.environment.get('cpu_flags', []))})"
            + (f", and its cold wall time ({a.transfer_wall_s:.0f} s) was timed around it and given with "
               "`--transfer-wall-s`." if name == "transfer" and a.transfer_wall_s else ".")
            for name, path, r in (("transfer", a.transfer_run, transfer), ("scratch", a.scratch_run, scratch)) if path]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.headline", description=__doc__.splitlines()[0])
    p.add_argument("--input-size", type=int, default=48, help="input pixels (default 48)")
    p.add_argument("--epochs", type=int, default=11, help="baseline epochs, the first head-only (default 11)")
    p.add_argument("--finetune-epochs", type=int, default=4, help="recovery epochs after pruning (default 4)")
    p.add_argument("--transfer-run", type=Path, help="a finished transfer run folder to reuse")
    p.add_argument("--transfer-wall-s", type=float, help="its measured cold wall time in seconds, if known")
    p.add_argument("--scratch-run", type=Path, help="a finished from-scratch run folder to reuse")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    env = environment([1])
    work = a.out / "runs" / "headline"
    with tempfile.TemporaryDirectory() as cache:
        os.environ["COMPRESS_CACHE"] = cache  # cold: no baseline from an earlier run
        if a.transfer_run:
            transfer, wall = RunReport.load(a.transfer_run), a.transfer_wall_s
        else:
            transfer, wall = run_job(work / "transfer", size=a.input_size, epochs=a.epochs, transfer=True,
                                     finetune_epochs=a.finetune_epochs)
        recipe = transfer.baseline.notes.get("recipe", {})
        if a.scratch_run:
            scratch = RunReport.load(a.scratch_run)
        else:
            scratch, _ = run_job(work / "scratch", size=transfer.config["input_size"],
                                 epochs=recipe.get("epochs", a.epochs), transfer=False, finetune_epochs=0)
    finish_environment(env)
    rows = targets(transfer, scratch, wall)
    cfg = transfer.config
    md = ["# The realistic job: EfficientNet-Lite0 (ImageNet) on Fashion-MNIST", "",
          f"`compress run {MODEL} --weights imagenet --prune 0.3 --int8 --input-size {cfg['input_size']} --epochs "
          f"{recipe.get('epochs')} --finetune-epochs {cfg['finetune']['epochs']}` on the full Fashion-MNIST split "
          f"({transfer.dataset['train_images']:,} training, {transfer.dataset['test_images']:,} test images), and the "
          f"same network from scratch (`--weights none --prune 0`, "
          f"{scratch.baseline.notes.get('recipe', {}).get('epochs')} epochs). Targets from issue #10.", "",
          md_table(["target", "goal", "measured", "met"], [[r["target"], r["goal"], r["measured"],
                                                             "yes" if r["met"] else "**no**"] for r in rows]), "",
          "Steps of the transfer run (top-1 %, latency ms at batch 1, 1 thread):", "",
          md_table(["step", "top-1 %", "latency ms", "size bytes", "work s"],
                   [[s.step, f"{s.metrics.top1_pct:.2f}", f"{s.metrics.latency_ms_median:.3f}", s.metrics.size_bytes,
                     f"{s.work.seconds:.0f}"] for s in transfer.steps]), "",
          "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s.", *reused(a, transfer, scratch),
          ""]
    write_results(a.out, "headline", md, rows, {"environment": env, "rows": rows,
                                                "transfer_recipe": recipe, "scratch_recipe":
                                                scratch.baseline.notes.get("recipe", {})})
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
