"""Which step ships: one policy, on the pipeline side, applied after every stage has run and been measured.

Stages always return what they made; nothing reads a stage's notes to steer. The policy:

1. **Speed check** (when INT8 was made): the INT8 model is timed against its FP32 input at batch 1 in
   interleaved rounds, giving a speed-up with a 95% interval (:func:`compress.measure.compare_speed`). Only an
   INT8 model that is slower *beyond noise* (the whole interval below 1) counts as slower. It then ships anyway
   with a warning in the headline (``if_slower: warn``), or the FP32 export ships and the INT8 step is marked
   ``fallback`` (``if_slower: fallback``). Either way the INT8 step stays in the report, measured.
2. **Accuracy budget** (``--max-drop``): the most compressed ONNX step within the budget of the baseline's top-1.
3. **Chance guard**: a deployed model at or near chance is an error unless ``allow_chance`` is set; any step near
   chance gets a loud warning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.core import Context, OnnxModel
from compress.errors import CompressError
from compress.host import host_arch
from compress.measure import SPEED_CHECK_RUNS, compare_speed, onnx_call
from compress.records import RunReport, StepReport, chance_pct

if TYPE_CHECKING:
    from pathlib import Path

    from compress.config import RunConfig

# "Near chance": within a tenth of the way from always answering the most common class to a perfect score.
NEAR_CHANCE_FRACTION = 0.10


@dataclass(frozen=True)
class Decision:
    step: str  # the step whose model ships as edge/model.onnx
    reason: str  # one sentence, for the manifest and the report


def near_chance(step: StepReport) -> float | None:
    """The chance level if ``step``'s top-1 is at or near it, else None."""
    chance = chance_pct(step.confusion)
    if chance is None:
        return None
    return chance if step.metrics.top1_pct <= chance + NEAR_CHANCE_FRACTION * (100.0 - chance) else None


def warn_near_chance(report: RunReport, ctx: Context) -> None:
    """A loud warning on every step at or near chance, except those a recovery fine-tune follows (pruning and the
    edge-friendly swap often fall to chance until it has run)."""
    names = [s.step for s in report.steps]
    for i, s in enumerate(report.steps):
        if "finetune" in names[i + 1:] and s.step != "baseline":
            continue
        chance = near_chance(s)
        if chance is None:
            continue
        message = (f"top-1 {s.metrics.top1_pct:.2f}% is at or near chance ({chance:.1f}%, always answering the most "
                   "common class): the model has not learned the task")
        if message not in s.warnings:
            ctx.warn(s.step, message)
            s.warnings.append(message)


def speed_check(report: RunReport, cfg: "RunConfig", ctx: Context) -> None:
    """Time the INT8 step against the export step and record the result on the INT8 step (notes, warnings)."""
    q = cfg.quantize
    if q is None or q.speed_check_runs == 0 or not report.has_step("quantize") or not report.has_step("export"):
        return
    int8, fp32 = report.step("quantize"), report.step("export")
    if q.target not in ("host", host_arch()):
        int8.notes["speed_check"] = (f"skipped: the INT8 model is built for {q.target} and its kernels' speed there "
                                     f"cannot be measured on this {host_arch()} machine; measure it on the device "
                                     "(edge_demo/pi/runner.py --bench)")
        return
    result = _timed_in_turns(ctx.run_dir / fp32.artifact, ctx.run_dir / int8.artifact, ctx, q.speed_check_runs)
    int8.notes["speed_check"] = {**dataclasses.asdict(result), "verdict": result.verdict, "threads": ctx.threads,
                                 "batch": 1, "reference": "export (FP32 ONNX)"}
    if result.verdict != "slower":
        return
    what = (f"INT8 is {1 / result.speedup:.2f}× slower than its FP32 export on this CPU ({result.candidate_ms:.3f} vs "
            f"{result.reference_ms:.3f} ms at batch 1, {ctx.threads} thread(s); 95% interval of the speed-up "
            f"{result.speedup_low:.2f}–{result.speedup_high:.2f}×)")
    if q.if_slower == "fallback":
        int8.fallback = True
        message = f"{what}; the FP32 export ships as model.onnx and the INT8 model as model_int8.onnx"
    else:
        # Not "a larger input": for hardswish networks INT8 lost at every size from 32 to 224 px
        # (benchmarks/results/*/input_size.md). XNNPACK has an INT8 hardswish kernel.
        tips = []
        if cfg.edge_friendly is None:
            tips.append("--edge-friendly (ReLU instead of hardswish)")
        if not cfg.litert:
            tips.append("--litert (LiteRT's XNNPACK runs hardswish in INT8)")
        tips.append("--if-int8-slower fallback")
        message = f"{what}; it ships anyway (model_fp32.onnx is in the bundle): try {', '.join(tips)}"
    int8.warnings.append(message)
    ctx.warn(int8.step, message)


def _timed_in_turns(reference: "Path", candidate: "Path", ctx: Context, runs: int):
    """Two ONNX models timed at batch 1 in 10 interleaved rounds (:func:`compress.measure.compare_speed`)."""
    x = ctx.data.normalize(ctx.data.test_x[:1]).numpy()
    rounds = 10
    return compare_speed(onnx_call(reference, x, ctx.threads), onnx_call(candidate, x, ctx.threads),
                         rounds=rounds, runs_per_round=max(10, runs // rounds))


def speed_against_reference(report: RunReport, cfg: "RunConfig", ctx: Context, reference: "Path") -> None:
    """Time the deployed ONNX model against the baseline's FP32 ONNX export (``reference``) in interleaved rounds
    and record it on the deployed step (``notes.speed_vs_reference``): the headline's ratio. The two models' own
    latency measurements are minutes apart, and load in between moves their ratio (the same reference measured
    0.60 ms in one run of a job and 0.81 ms in the next); interleaved rounds share the load."""
    final = report.deployed()
    q = cfg.quantize
    runs = q.speed_check_runs if q is not None else SPEED_CHECK_RUNS
    if final.kind != "onnx" or not reference.is_file() or runs == 0:
        return
    if q is not None and final.step == "quantize" and q.target not in ("host", host_arch()):
        return  # built for another CPU: its speed here says nothing (speed_check says so)
    result = _timed_in_turns(reference, ctx.run_dir / final.artifact, ctx, runs)
    final.notes["speed_vs_reference"] = {**dataclasses.asdict(result), "verdict": result.verdict,
                                         "threads": ctx.threads, "batch": 1,
                                         "reference": "the baseline's FP32 ONNX export"}


def choose(report: RunReport, cfg: "RunConfig", ctx: Context) -> Decision:
    """Apply the policy; marks the chosen step ``deployed`` in ``report`` and returns the decision."""
    speed_check(report, cfg, ctx)
    warn_near_chance(report, ctx)
    candidates = [s for s in report.steps if s.kind == "onnx" and not s.fallback]
    chosen, reason = candidates[-1], "the last step of the chain"
    if report.has_step("quantize") and report.step("quantize").fallback:
        reason = "INT8 ran slower than FP32 on this CPU beyond measurement noise (if_slower: fallback)"
    if cfg.max_drop is not None:
        chosen, reason = _within_budget(report, candidates, cfg.max_drop, ctx)
    chance = near_chance(chosen)
    if chance is not None and not cfg.allow_chance:
        peak = report.baseline.notes.get("recipe", {}).get("lr")
        raise CompressError(f"the model to deploy ({chosen.step}) reaches {chosen.metrics.top1_pct:.2f}% top-1, at "
                            f"or near chance ({chance:.1f}%): nothing was bundled. Train longer or with another "
                            f"--lr (the baseline's peak LR was {peak if peak else 'not trained'}), check the data, "
                            "or add --allow-chance to bundle it anyway")
    for s in report.steps:
        s.deployed = s is chosen
    return Decision(step=chosen.step, reason=reason)


def _within_budget(report: RunReport, candidates: list[StepReport], max_drop: float,
                   ctx: Context) -> tuple[StepReport, str]:
    base = report.baseline.metrics.top1_pct
    inside = [s for s in candidates if base - s.metrics.top1_pct <= max_drop]
    if inside:
        chosen = min(inside, key=lambda s: s.metrics.size_bytes)
        return chosen, f"the most compressed step within --max-drop {max_drop:g} pt of the baseline's {base:.2f}%"
    chosen = max(candidates, key=lambda s: s.metrics.top1_pct)
    message = (f"no step stays within --max-drop {max_drop:g} pt of the baseline's {base:.2f}%; the bundle holds the "
               f"most accurate one ({chosen.step}, {chosen.metrics.top1_pct:.2f}%); try a lower --prune or more "
               "--finetune-epochs")
    chosen.warnings.append(message)
    ctx.warn(chosen.step, message)
    return chosen, f"no step within --max-drop {max_drop:g} pt; the most accurate one"


def deployed_model(report: RunReport, ctx: Context) -> OnnxModel:
    return OnnxModel(ctx.run_dir / report.deployed().artifact)
