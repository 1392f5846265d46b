"""Resuming an interrupted run: verify what an earlier run into the folder finished, and rebuild its last model.

``progress.json`` holds the records of the finished steps while a run is under way; ``report.json`` replaces
it at the end. A step counts as finished only if its artifact is still there with the sha256 recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress import checkpoint as ckpt
from compress.baseline import given_model
from compress.config import resolve
from compress.core import Context, OnnxModel, sha256_file
from compress.errors import CompressError
from compress.models import create_model
from compress.records import RunReport, StepReport

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.config import RunConfig

PROGRESS = "progress.json"  # the finished steps of an unfinished run; removed when report.json is written


def completed(run_dir: Path, cfg: "RunConfig", chain: list[Any]) -> RunReport | None:
    """The verified record of what an earlier, interrupted run into ``run_dir`` finished, or None."""
    progress = run_dir / PROGRESS
    if not progress.exists():
        return None
    if (run_dir / "config.yaml").exists() and resolve(run_dir / "config.yaml") != cfg:
        raise CompressError(f"{run_dir} holds an unfinished run with another config: resume it with "
                            f"`compress run --out {run_dir} --resume`, start over with --force, or choose another "
                            "--out")
    report = RunReport.load(progress)
    names = [s.name for s in chain]
    if [s.step for s in report.steps] != names[:len(report.steps)]:
        raise CompressError(f"{run_dir}/{PROGRESS} does not match this config's steps: start over with --force")
    for s in report.steps:
        f = run_dir / s.artifact
        if not f.is_file() or sha256_file(f) != s.artifact_sha256:
            raise CompressError(f"{f} is missing or changed since its step finished (sha256 mismatch): "
                                "start over with --force")
    return report


def last_torch_model(done: list[StepReport], cfg: "RunConfig", ctx: Context) -> "nn.Module":
    """The last torch step's model, rebuilt from its artifact (a resumed run that had passed export)."""
    return _torch_model([s for s in done if s.kind == "torch"][-1], done, cfg, ctx)


def _torch_model(step: StepReport, done: list[StepReport], cfg: "RunConfig", ctx: Context) -> "nn.Module":
    if ctx.given_model is not None:
        net, _ = given_model(ctx.given_model, len(ctx.data.classes), pretrained=ctx.given_pretrained)
    else:
        net, _ = create_model(cfg.model, num_classes=len(ctx.data.classes), weights="none")
    if any(d.step == "edge_friendly" for d in done[:done.index(step) + 1]):
        net = cfg.edge_friendly(net, ctx)  # structural swap only; the weights come from the artifact
    return ckpt.restore_model(ckpt.load(ctx.run_dir / step.artifact), net)


def restore(done: list[StepReport], cfg: "RunConfig", ctx: Context) -> Any:
    """Rebuild the teacher and the last finished step's model from their artifacts."""
    for s in done:
        ctx.notes[s.step] = dict(s.notes)

    ctx.teacher = _torch_model(done[0], done, cfg, ctx)
    last = done[-1]
    if ctx.progress:
        ctx.progress.resumed([s.step for s in done])
    if last.kind == "onnx":
        return OnnxModel(ctx.run_dir / last.artifact)
    return ctx.teacher if last is done[0] else _torch_model(last, done, cfg, ctx)  # stages never mutate their input
