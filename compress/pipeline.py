"""The pipeline: check the chain, then model → stage → measure → stage, one step at a time.

This is the only module that knows about both stages and reports. Stages take a model and return a new
one; ``measure`` never changes a model; the deploy policy (:mod:`compress.deploy`) picks the step that
ships; the bundle and the reports are written from the records.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress import checkpoint as ckpt
from compress import deploy, distributed, resume
from compress.baseline import Baseline
from compress.bundle import write_bundle
from compress.chain import build_chain, check_chain
from compress.config import advice, dump_yaml
from compress.console import library_output_to
from compress.core import Context, OnnxModel, kind_of, run_onnx, sha256_file
from compress.data import check_data, load_dataset
from compress.energy import EnergyMeter
from compress.heads import NAMED_WEIGHTS, read_user_weights
from compress.host import environment
from compress.measure import measure
from compress.models import preprocessing
from compress.records import RunReport, StepReport, Work
from compress.report import write_reports
from compress.train import resolve_device

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.config import RunConfig
    from compress.data import Dataset

PROGRESS = resume.PROGRESS
REFERENCE = "reference"  # run-folder subfolder of the baseline's FP32 ONNX export, the fair speed reference


def run(cfg: "RunConfig", run_dir: Path, *, progress: Any = None, chain: list | None = None,
        model: "nn.Module | None" = None, pretrained: bool = False, data: "Dataset | None" = None) -> RunReport:
    """Run every stage of ``cfg`` (or the given ``chain``), measuring after each, and write the run folder.

    ``model`` and ``data`` (Python API) take the place of ``cfg.model`` and ``cfg.data``: the caller's own network
    (``pretrained``: its weights are trained, so it is fine-tuned as in transfer learning) and a data set from
    :func:`compress.data.load_dataset`.

    >>> report = run(resolve(overrides={"model": "mobilenet_v3", "quantize": {}}), Path("runs/x"))  # doctest: +SKIP
    """
    cfg.check()
    chain = build_chain(cfg) if chain is None else chain
    check_chain(chain)
    if data is None:  # a mistyped path or a badly laid out folder fails in a second, before torch loads
        check_data(cfg.data, input_size=cfg.input_size, seed=cfg.seed, val_fraction=cfg.val_fraction)
    import torch

    if cfg.weights not in NAMED_WEIGHTS:  # a truncated or unsafe file fails now, not once the data set has loaded
        with warnings.catch_warnings():  # torch's warnings go to compress.log when the baseline loads it again
            warnings.simplefilter("ignore")
            read_user_weights(cfg.weights)
    device = resolve_device(cfg.device)
    if distributed.init(device) and not distributed.is_main():  # distributed (#11): ranks > 0 only train
        return _train_only(cfg, Path(run_dir), chain, device=device, model=model, pretrained=pretrained, data=data)
    if cfg.web:
        from compress.webpage import web_sources

        web_sources()  # fail now, not after training, if the page's npm packages are missing
    if cfg.litert:
        from compress.litert import check_ready

        check_ready()  # likewise for the LiteRT interpreter and converter
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()  # distributed (#11): the other ranks read the run folder once rank 0 has it ready
    if cfg.train_threads:
        torch.set_num_threads(cfg.train_threads)
    with library_output_to(run_dir / "compress.log"):
        if data is None:
            data = load_dataset(cfg.data, input_size=cfg.input_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                                limit_train=cfg.limit_train, limit_test=cfg.limit_test)
            if model is None:
                data = data.with_normalization(*preprocessing(cfg.model, cfg.weights))
        earlier = resume.completed(run_dir, cfg, chain)
        if earlier is None:
            ckpt.atomic_write(run_dir / "config.yaml", lambda p: p.write_text(dump_yaml(cfg)))
        report = RunReport(config=dataclasses.asdict(cfg), environment=environment(device, cfg.measure.threads),
                           dataset=data.summary(), model=cfg.model,
                           steps=earlier.steps if earlier else [], references=earlier.references if earlier else {})
        with EnergyMeter(country=cfg.country, power_watts=cfg.power_watts, log_file=run_dir / "compress.log") as meter:
            ctx = Context(data=data, run_dir=run_dir, seed=cfg.seed, device=device, measure=cfg.measure,
                          meter=meter, progress=progress, given_model=model, given_pretrained=pretrained)
            for step, message in advice(cfg):
                ctx.warn(step, message)
            model = resume.restore(report.steps, cfg, ctx) if report.steps else None
            for stage in chain[len(report.steps):]:
                if kind_of(model) == "torch":
                    ctx.last_torch = model  # what the LiteRT converter starts from (Export's input)
                model = _step(_with_budget(_with_baseline_recipe(stage, ctx), cfg, report, ctx), model, ctx, report)
                if "baseline_onnx" not in report.references:  # right after the baseline, or a resumed 0.1 run
                    _measure_reference(cfg, ctx, report)
                ckpt.atomic_write(run_dir / PROGRESS, lambda p: p.write_text(report.to_json()))
            decision = deploy.choose(report, cfg, ctx)
            deploy.speed_against_reference(report, cfg, ctx, ctx.artifact(REFERENCE, "model.onnx"))
            report.energy_by_batch = _energy_by_batch(report, ctx)
            write_bundle(report, ctx, run_dir / "edge", web=cfg.web, reason=decision.reason,
                         target=cfg.quantize.target if cfg.quantize else None,
                         litert=_litert(cfg, ctx, report) if cfg.litert else None)
            report.deployed().warnings.extend(ctx.warnings.get("bundle", []))
    write_reports(report, run_dir)
    (run_dir / PROGRESS).unlink(missing_ok=True)
    return report


def _train_only(cfg: "RunConfig", run_dir: Path, chain: list, *, device: str, model: "nn.Module | None",
                pretrained: bool, data: "Dataset | None") -> None:
    """Distributed (#11), a rank other than 0: the torch stages up to export, from the same resume point as rank 0
    and with the same models, taking part in their training; nothing is measured or written."""
    import torch

    if cfg.train_threads:
        torch.set_num_threads(cfg.train_threads)
    if data is None:
        data = load_dataset(cfg.data, input_size=cfg.input_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                            limit_train=cfg.limit_train, limit_test=cfg.limit_test)
        if model is None:
            data = data.with_normalization(*preprocessing(cfg.model, cfg.weights))
    ctx = distributed.ReadOnlyContext(data=data, run_dir=run_dir, seed=cfg.seed, device=device, measure=cfg.measure,
                                      meter=None, given_model=model, given_pretrained=pretrained)
    distributed.barrier()  # rank 0 has prepared the run folder (with --force, emptied it): what it holds is settled
    earlier = resume.completed(run_dir, cfg, chain)
    done = earlier.steps if earlier else []
    current = resume.restore(done, cfg, ctx) if done else None
    for stage in chain[len(done):]:
        if stage.produces != "torch":
            break  # export and after: rank 0's alone
        current = _with_baseline_recipe(stage, ctx)(current, ctx)
        if isinstance(stage, Baseline):
            ctx.teacher = current
    distributed.finish()


def _with_baseline_recipe(stage: Any, ctx: Context) -> Any:
    """A stage that learns at the baseline's pace (recovery fine-tuning: ``with_baseline_recipe``) gets its peak LR,
    backbone LR scale and BatchNorm freezing from the baseline's recorded recipe (its own record, or the resumed
    run's)."""
    if not hasattr(stage, "with_baseline_recipe"):
        return stage
    return stage.with_baseline_recipe(ctx.notes.get("baseline", {}).get("recipe", {}))


def _with_budget(stage: Any, cfg: "RunConfig", report: RunReport, ctx: Context) -> Any:
    """A stage that takes a top-1 budget (``max_drop_pt``: INT8's mixed precision) gets what is left of
    ``--max-drop`` after the steps before it, measured on the test split like the deploy policy's budget. When
    those steps already spent more than all of it, the stage gets none: keeping nodes in FP32 can at best bring
    INT8 back to its FP32 input's accuracy, which is already outside the budget (the search would only cost time:
    97 s of a 4-minute EfficientNet-B0 run that recovery had left 19 points down)."""
    if cfg.max_drop is None or not hasattr(stage, "max_drop_pt") or stage.max_drop_pt is not None or not report.steps:
        return stage
    spent = report.baseline.metrics.top1_pct - report.steps[-1].metrics.top1_pct
    if spent > cfg.max_drop:
        ctx.note(stage.name, mixed_precision={
            "budget_pt": 0.0, "outcome": f"not tried: the steps before it already lost {spent:.2f} points of the "
                                         f"{cfg.max_drop:g}-point --max-drop on the test split, and keeping nodes in "
                                         "FP32 can at best bring INT8 back to its FP32 input's accuracy"})
        return stage
    return dataclasses.replace(stage, max_drop_pt=round(cfg.max_drop - spent, 3))


def _step(stage: Any, model: Any, ctx: Context, report: RunReport) -> Any:
    """One step: run the stage, save its artifact, measure the result, append the record."""
    if ctx.progress:
        ctx.progress.step_started(stage.name, stage.title)
    with ctx.meter.track(stage.name) as work:
        model = stage(model, ctx)
    if kind_of(model) != stage.produces:
        raise TypeError(f"stage {stage.name} declared it produces {stage.produces} but returned {kind_of(model)}")
    work_record = Work(seconds=work.seconds, energy_j=work.energy_j, co2_g=work.co2_g, energy_method=work.method)
    if isinstance(stage, Baseline):
        ctx.teacher = model
        stage.remember_work(ctx, dataclasses.asdict(work_record))
    artifact = _save_artifact(model, ctx, stage.name)
    if ctx.progress:
        ctx.progress.step_measuring(stage.name)
    m = measure(model, ctx, step=stage.name)
    notes = dict(ctx.notes.get(stage.name, {}))
    step = StepReport(
        step=stage.name, kind=kind_of(model), stage=dataclasses.asdict(stage),
        artifact=str(artifact.relative_to(ctx.run_dir)), artifact_sha256=sha256_file(artifact),
        metrics=m.metrics, confusion=m.confusion, work=work_record, cache_hit=bool(notes.pop("cache_hit", False)),
        warnings=list(ctx.warnings.get(stage.name, [])), notes=notes,
    )
    if report.steps and step.metrics.macs > report.steps[-1].metrics.macs > 0:
        prev = report.steps[-1]
        step.notes["macs_over_input_pct"] = round(100 * (step.metrics.macs / prev.metrics.macs - 1), 1)
        step.notes["why_more_macs"] = (f"{step.step} counts {step.notes['macs_over_input_pct']:g}% more MACs (and more "
                                       f"params) than {prev.step}: zero channels padded in so that ONNX Runtime runs "
                                       "its fast INT8 kernels (see kernel_rewrites); they change no output")
    report.steps.append(step)
    if ctx.progress:
        ctx.progress.step_done(step, report)
    return model


def _litert(cfg: "RunConfig", ctx: Context, report: RunReport):
    """A function the bundle calls with its folder: LiteRT files from the last torch model, gated (compress.litert)."""
    import numpy as np

    from compress.calibration import MIN_CALIBRATION_IMAGES, calibration_images
    from compress.litert import build_litert

    model = ctx.last_torch if ctx.last_torch is not None else resume.last_torch_model(report.steps, cfg, ctx)
    q = cfg.quantize
    predictions = None
    if report.has_step("quantize"):
        sess = OnnxModel(ctx.run_dir / report.step("quantize").artifact).session(ctx.threads)
        x = ctx.data.normalize(ctx.data.test_x).numpy()
        predictions = np.argmax(run_onnx(sess, x), axis=1)
    # LiteRT's converter calibrates image by image in Python: the configured size, else 2,048 (not ONNX's default)
    calib = calibration_images(ctx.data, (q.calibration_size or MIN_CALIBRATION_IMAGES) if q else 512, ctx.seed)

    def build(folder: Path) -> dict:
        return build_litert(model, ctx.data, folder, calib=calib, onnx_int8_predictions=predictions,
                            max_drop_pt=cfg.max_drop, work_dir=ctx.run_dir / "litert", tick=ctx.tick)
    return build


def _measure_reference(cfg: "RunConfig", ctx: Context, report: RunReport) -> None:
    """The baseline exported to FP32 ONNX and measured like any step: what "no compression" costs in the same
    runtime, the reference for every ONNX step's speed, size and energy ratios."""
    if ctx.teacher is None:
        return
    if ctx.progress:
        ctx.progress.step_started(REFERENCE, "measuring the baseline's FP32 ONNX export (the reference)")
    reference = cfg.export.write(ctx.teacher, ctx, ctx.artifact(REFERENCE, "model.onnx"), step=REFERENCE)
    report.references["baseline_onnx"] = measure(reference, ctx, step=REFERENCE).metrics


def _energy_by_batch(report: RunReport, ctx: Context) -> dict[str, dict]:
    """Energy per inference of the deployed model and both references at batch 1 (their own measurements), 8
    and 32 (:func:`compress.measure.energy_by_batch`). Empty when the deployed model is no ONNX model."""
    from compress.measure import energy_by_batch

    deployed = report.deployed()
    reference = ctx.artifact(REFERENCE, "model.onnx")
    if deployed.kind != "onnx" or not reference.is_file() or ctx.teacher is None:
        return {}
    if ctx.progress:
        ctx.progress.step_started("energy", "energy per inference at batch 8 and 32")
    out = {}
    for name, model, metrics in (("deployed", OnnxModel(ctx.run_dir / deployed.artifact), deployed.metrics),
                                 ("baseline_onnx", OnnxModel(reference), report.references.get("baseline_onnx")),
                                 ("baseline_eager", ctx.teacher, report.baseline.metrics)):
        first = {"1": {"energy_per_inference_j": metrics.energy_per_inference_j,
                       "ms_per_image": metrics.latency_ms_median, "images": metrics.latency_runs,
                       "energy_method": metrics.energy_method}} if metrics else {}
        out[name] = first | energy_by_batch(model, ctx, step=f"energy/{name}")
    return out


def _save_artifact(model: Any, ctx: Context, step: str) -> Path:
    """ONNX stages already wrote their file; torch steps save their state_dict (atomically)."""
    if isinstance(model, OnnxModel):
        return model.path
    path = ctx.artifact(step, "model.pt")
    ckpt.save(ckpt.model_record(model), path)
    ctx.checkpoint(step).unlink(missing_ok=True)  # the finished artifact supersedes the training state
    return path

