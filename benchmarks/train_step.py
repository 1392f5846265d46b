"""How much faster one training step is with compress's depthwise weight gradient (compress/depthwise_grad.py).

For each model and input size: one SGD step (forward, cross-entropy, backward, update) on a batch of random images,
``channels_last`` as compress trains, timed with PyTorch's own depthwise weight gradient (oneDNN) and with
compress's for convolutions whose input is smaller than their kernel, taking turns in one process
(:func:`compress.measure.interleaved`). Also checks that both give the same gradients.
Writes benchmarks/results/train_step[_quick].{csv,md,json}.

    python -m benchmarks.train_step           # four models at 32 and 64 px, ~4 min on 2 cores
    python -m benchmarks.train_step --quick   # MobileNetV3-small at 32 px, under a minute
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path

from benchmarks._common import RESULTS, env_markdown, environment, finish_environment, md_table, write_results

MODELS = ("mobilenet_v3", "mobilenet_v2", "efficientnet_b0", "efficientnet_lite0")


def _gradient_gap(model, x, y) -> float:
    """The largest difference between the two paths' gradients, relative to each tensor's largest gradient."""
    import torch
    import torch.nn.functional as F

    from compress.depthwise_grad import fast_small_input_depthwise

    def grads(patch: bool) -> list:
        model.zero_grad(set_to_none=True)
        with fast_small_input_depthwise(model) if patch else contextlib.nullcontext(), torch.random.fork_rng():
            F.cross_entropy(model(x), y).backward()
        return [p.grad.clone() for p in model.parameters()]

    return max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in zip(grads(False), grads(True)))


def measure(name: str, size: int, batch: int, runs: int) -> dict:
    import torch
    import torch.nn.functional as F

    from compress.depthwise_grad import fast_small_input_depthwise
    from compress.measure import interleaved
    from compress.models import create_model

    torch.manual_seed(0)
    model, _ = create_model(name, num_classes=10)
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gap = _gradient_gap(model, x, y)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def patched() -> None:
        with fast_small_input_depthwise(model):
            step()

    times = interleaved({"onednn": step, "compress": patched}, runs=runs, block=2, warmup=2)
    a, b = statistics.median(times["onednn"]), statistics.median(times["compress"])
    return {"model": name, "input_px": size, "batch": batch, "steps_each": len(times["onednn"]),
            "onednn_step_ms": round(a * 1e3, 1), "compress_step_ms": round(b * 1e3, 1),
            "speedup_vs_onednn": round(a / b, 2), "max_relative_gradient_gap": gap}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="MobileNetV3-small at 32 px only, fewer steps")
    p.add_argument("--out", type=Path, default=RESULTS, help="where results go (default benchmarks/results)")
    args = p.parse_args(argv)
    import torch

    env = environment([torch.get_num_threads()])
    cells = [("mobilenet_v3", 32)] if args.quick else [(m, s) for s in (32, 64) for m in MODELS]
    rows = []
    for name, size in cells:
        rows.append(measure(name, size, batch=256, runs=4 if args.quick else 12))
        print(rows[-1], flush=True)
    finish_environment(env)
    md = ["# One training step: compress's depthwise weight gradient against PyTorch's (oneDNN)", "",
          "Batch 256, SGD, `channels_last`, random images and weights, all cores; medians of steps taken in turns. "
          "`speed-up` = oneDNN's step time / compress's. `gradient gap`: the largest difference between the two "
          "paths' gradients relative to the tensor's largest (float32 rounding).", "",
          md_table(["model", "input px", "oneDNN ms/step", "compress ms/step", "speed-up vs oneDNN", "steps each",
                    "gradient gap"],
                   [[r["model"], r["input_px"], r["onednn_step_ms"], r["compress_step_ms"], r["speedup_vs_onednn"],
                     r["steps_each"], f"{r['max_relative_gradient_gap']:.1e}"] for r in rows]),
          "", "## Environment\n", env_markdown(env), f"  \nWall time {env['seconds']} s.\n"]
    stem = "train_step_quick" if args.quick else "train_step"
    write_results(args.out, stem, md, rows, {"environment": env, "rows": rows})
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
