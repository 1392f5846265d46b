"""The pipeline: check the chain, then model → stage → measure → stage, one step at a time.

This is the only module that knows about both stages and reports. Stages take a model and
return a new one; ``measure`` never changes a model; reports are built from the records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.config import RunConfig
    from compress.data import Dataset
    from compress.energy import EnergyMeter
    from compress.measure import MeasureConfig
    from compress.report import RunReport


@dataclass(eq=False)
class Context:
    """What stages may use: the data, the run folder, the teacher, and the progress hooks."""

    data: "Dataset"
    run_dir: Path
    seed: int
    device: str
    measure: "MeasureConfig"
    meter: "EnergyMeter"
    teacher: "nn.Module | None" = None
    notes: dict[str, dict] = field(default_factory=dict)
    progress: Any = None  # compress.console.Progress, or None for silence

    @property
    def threads(self) -> int:
        return self.measure.threads

    def artifact(self, step: str, filename: str) -> Path:
        d = self.run_dir / step
        d.mkdir(parents=True, exist_ok=True)
        return d / filename

    def checkpoint(self, step: str) -> Path:
        """Per-epoch training state of ``step``, for resuming an interrupted fine-tune."""
        return self.artifact(step, "train_state.pt")

    def note(self, step: str, **values: Any) -> None:
        self.notes.setdefault(step, {}).update(values)

    def warn(self, step: str, message: str) -> None:
        """A loud warning: shown in the terminal (even when piped) and kept in the report's notes."""
        self.notes.setdefault(step, {}).setdefault("warnings", []).append(message)
        if self.progress:
            self.progress.warn(step, message)

    def epoch_done(self, info: dict) -> None:
        if self.progress:
            self.progress.epoch(info)

    def batch_done(self, done: int, total: int) -> None:
        if self.progress:
            self.progress.tick("train", done, total)

    def tick(self, task: str, done: int, total: int) -> None:
        if self.progress:
            self.progress.tick(task, done, total)


@dataclass(frozen=True, kw_only=True)
class Baseline:
    """Step 0: build the model, adapt its head, and train it (or load it from the baseline cache).

    The cache key covers the model, weights, data fingerprint, input size, recipe, seed and the
    torch version, so another compression setting reuses the same trained baseline.
    """

    model: str
    weights: str
    recipe: Any  # compress.train.Recipe

    accepts = "none"
    name = "baseline"

    def cache_key(self, ctx: Context, recipe: Any) -> str:
        import torch

        blob = json.dumps({"model": self.model, "weights": self.weights, "data": ctx.data.fingerprint,
                           "classes": ctx.data.classes, "input_size": ctx.data.input_size,
                           "recipe": dataclasses.asdict(recipe), "seed": ctx.seed,
                           "torch": torch.__version__.split("+")[0]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def __call__(self, model: None, ctx: Context) -> "nn.Module":
        import torch

        from compress import checkpoint as ckpt
        from compress.models import create_model
        from compress.train import fit

        torch.manual_seed(ctx.seed)  # the random init of the new layers is part of what the seed fixes
        net, init = create_model(self.model, num_classes=len(ctx.data.classes), weights=self.weights)
        recipe = self.recipe
        if init.startswith("random"):  # nothing pretrained to protect: train everything from the start
            recipe = dataclasses.replace(recipe, head_epochs=0)
        else:  # leave at least one epoch for the whole network
            recipe = dataclasses.replace(recipe, head_epochs=min(recipe.head_epochs, recipe.epochs - 1))
        cached = cache_dir() / "baselines" / f"{self.cache_key(ctx, recipe)}.pt"
        meta_file = cached.with_suffix(".json")
        if cached.exists() and meta_file.exists():
            ckpt.load_state_dict(cached, net)
            meta = json.loads(meta_file.read_text())
            ctx.note(self.name, init=meta.get("init", init), cache=str(cached), cache_hit=True,
                     original_training=meta.get("work"))
            return net.eval()
        trained = fit(net, ctx.data, recipe, seed=ctx.seed, device=ctx.device, on_epoch=ctx.epoch_done,
                      on_batch=ctx.batch_done, checkpoint=ctx.checkpoint(self.name))
        ckpt.save(ckpt.model_record(trained), cached)
        meta = {"init": init, "model": self.model, "recipe": dataclasses.asdict(recipe), "data": ctx.data.summary()}
        ckpt.atomic_write(meta_file, lambda p: p.write_text(json.dumps(meta, indent=1)))
        ctx.note(self.name, init=init, cache=str(cached), cache_hit=False)
        return trained

    def remember_work(self, ctx: Context, work: dict) -> None:
        """Store the training's time and CO2 beside the cached weights, so later runs can report it."""
        notes = ctx.notes.get(self.name, {})
        if not notes.get("cache") or notes.get("cache_hit"):
            return
        meta_file = Path(notes["cache"]).with_suffix(".json")
        if meta_file.exists():
            from compress.checkpoint import atomic_write

            meta = json.loads(meta_file.read_text())
            meta["work"] = work
            atomic_write(meta_file, lambda p: p.write_text(json.dumps(meta, indent=1)))


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESS_CACHE", Path.home() / ".cache" / "compress"))


def stages(cfg: "RunConfig") -> list:
    """The chain for a config: a literal sequence, switched by the config."""
    chain: list = [Baseline(model=cfg.model, weights=cfg.weights, recipe=cfg.train)]
    if cfg.prune.ratio > 0:
        chain.append(cfg.prune)
    if cfg.edge_friendly.enabled:
        chain.append(cfg.edge_friendly)
    if cfg.prune.ratio > 0 or cfg.edge_friendly.enabled:
        # Quantization-aware epochs only help a model that will be quantized.
        chain.append(cfg.finetune if cfg.int8 else dataclasses.replace(cfg.finetune, quant_aware_epochs=0))
    chain.append(cfg.export)
    if cfg.int8:
        chain.append(cfg.quantize)
    return chain


def check_chain(chain: list) -> None:
    """Each stage must get the kind of model it accepts; checked before any work starts."""
    kind = "none"
    produces = {"none": "torch", "torch": "torch", "onnx": "onnx"}
    for stage in chain:
        if stage.accepts != kind:
            what = {"torch": "a torch model", "onnx": "an ONNX model", "none": "no input model"}[stage.accepts]
            fix = " put export before it" if stage.accepts == "onnx" else ""
            raise CompressError(f"{stage.name} needs {what} but gets {kind}:{fix}")
        kind = "onnx" if stage.name == "export" else produces[stage.accepts]


def run(cfg: "RunConfig", run_dir: Path, *, progress: Any = None) -> "RunReport":
    """Run every stage of ``cfg``, measuring after each, and write the run folder.

    >>> report = run(resolve(overrides={"model": "mobilenet_v3", "int8": True}), Path("runs/x"))  # doctest: +SKIP
    """
    import torch

    from compress.bundle import write_bundle
    from compress.checkpoint import atomic_write
    from compress.config import dump_yaml
    from compress.console import library_output_to
    from compress.data import load_dataset
    from compress.energy import EnergyMeter
    from compress.export import OnnxModel
    from compress.report import RunReport, environment, write_reports
    from compress.train import resolve_device

    cfg.check()
    chain = stages(cfg)
    check_chain(chain)
    device = resolve_device(cfg.device)
    if cfg.web:
        from compress.webpage import web_sources

        web_sources()  # fail now, not after training, if the page's npm packages are missing
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = _completed_steps(run_dir, cfg, chain)
    if not done:
        atomic_write(run_dir / "config.yaml", lambda p: p.write_text(dump_yaml(cfg)))
    if cfg.train_threads:
        torch.set_num_threads(cfg.train_threads)
    with library_output_to(run_dir / "compress.log"):
        data = load_dataset(cfg.data, input_size=cfg.input_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                            limit_train=cfg.limit_train, limit_test=cfg.limit_test)
        report = RunReport(config=dataclasses.asdict(cfg), environment=environment(device, cfg.measure.threads),
                           dataset=data.summary(), model=cfg.model, steps=done)
        with EnergyMeter(country=cfg.country, power_watts=cfg.power_watts, log_file=run_dir / "compress.log") as meter:
            ctx = Context(data=data, run_dir=run_dir, seed=cfg.seed, device=device, measure=cfg.measure,
                          meter=meter, progress=progress)
            model = _restore(done, chain, cfg, ctx) if done else None
            for stage in chain[len(done):]:
                model = _step(stage, model, ctx, report)
                atomic_write(run_dir / PROGRESS, lambda p: p.write_text(report.to_json()))
            chosen = _within_budget(report, cfg.max_drop, ctx)
            write_bundle(OnnxModel(run_dir / chosen.artifact), ctx, report, run_dir / "edge", web=cfg.web,
                         step=chosen.step)
    report.finish()
    write_reports(report, run_dir)
    (run_dir / PROGRESS).unlink(missing_ok=True)
    return report


def _within_budget(report: "RunReport", max_drop: float | None, ctx: Context) -> Any:
    """The ONNX step to deploy: the most compressed one whose top-1 is within ``max_drop`` points of the
    baseline (all compression steps count together); without a budget, the last step."""
    onnx_steps = [s for s in report.steps if s.kind == "onnx"]
    if max_drop is None:
        return onnx_steps[-1]
    base = report.steps[0].metrics["top1_pct"]
    inside = [s for s in onnx_steps if base - s.metrics["top1_pct"] <= max_drop]
    if inside:
        chosen = min(inside, key=lambda s: s.metrics["size_bytes"])
    else:
        chosen = max(onnx_steps, key=lambda s: s.metrics["top1_pct"])
        ctx.warn(chosen.step, f"no variant stays within --max-drop {max_drop:g} pt of the baseline's "
                              f"{base:.2f}%; the bundle holds the most accurate one ({chosen.step}, "
                              f"{chosen.metrics['top1_pct']:.2f}%); try a lower --prune or more --finetune-epochs")
    ctx.note(chosen.step, deployed=True, max_drop_pt=max_drop)
    chosen.notes = ctx.notes[chosen.step]
    return chosen


PROGRESS = "progress.json"  # the finished steps of an unfinished run; removed when report.json is written


def _completed_steps(run_dir: Path, cfg: "RunConfig", chain: list) -> list:
    """The verified records of steps an earlier, interrupted run into ``run_dir`` finished."""
    from compress.config import resolve
    from compress.report import RunReport

    progress = run_dir / PROGRESS
    if not progress.exists():
        return []
    if (run_dir / "config.yaml").exists() and resolve(run_dir / "config.yaml") != cfg:
        raise CompressError(f"{run_dir} holds an unfinished run with another config: resume it with "
                            f"`compress run --config {run_dir / 'config.yaml'} --out {run_dir}`, start over with "
                            "--force, or choose another --out")
    steps = RunReport.load(progress).steps
    names = [s.name for s in chain]
    if [s.step for s in steps] != names[:len(steps)]:
        raise CompressError(f"{run_dir}/{PROGRESS} does not match this config's steps: start over with --force")
    for s in steps:
        f = run_dir / s.artifact
        if not f.is_file() or sha256_file(f) != s.artifact_sha256:
            raise CompressError(f"{f} is missing or changed since its step finished (sha256 mismatch): "
                                "start over with --force")
    return steps


def _restore(done: list, chain: list, cfg: "RunConfig", ctx: Context) -> Any:
    """Rebuild the teacher and the last finished step's model from their artifacts."""
    from compress import checkpoint as ckpt
    from compress.export import OnnxModel
    from compress.models import create_model

    for s in done:
        ctx.notes[s.step] = dict(s.notes)

    def torch_model(step) -> "nn.Module":
        net, _ = create_model(cfg.model, num_classes=len(ctx.data.classes), weights="none")
        if any(d.step == "edge_friendly" for d in done[:done.index(step) + 1]):
            net = cfg.edge_friendly(net, ctx)  # structural swap only; the weights come from the artifact
        return ckpt.restore_model(ckpt.load(ctx.run_dir / step.artifact), net)

    ctx.teacher = torch_model(done[0])
    last = done[-1]
    if ctx.progress:
        ctx.progress.resumed([s.step for s in done])
    if last.kind == "onnx":
        return OnnxModel(ctx.run_dir / last.artifact)
    return ctx.teacher if last is done[0] else torch_model(last)  # stages never mutate their input


def _step(stage: Any, model: Any, ctx: Context, report: "RunReport") -> Any:
    """One step: run the stage, save its artifact, measure the result, append the record."""
    from compress.export import OnnxModel
    from compress.measure import measure
    from compress.report import StepReport

    progress = ctx.progress
    if progress:
        progress.step_started(stage.name)
    with ctx.meter.track(stage.name) as work:
        model = stage(model, ctx)
    work_record = {"seconds": work.seconds, "energy_j": work.energy_j, "co2_g": work.co2_g,
                   "energy_method": work.method}
    if isinstance(stage, Baseline):
        ctx.teacher = model
        stage.remember_work(ctx, work_record)
    artifact = _save_artifact(model, ctx, stage.name)
    if progress:
        progress.step_measuring(stage.name)
    m = measure(model, ctx, step=stage.name)
    step = StepReport(
        step=stage.name, kind="onnx" if isinstance(model, OnnxModel) else "torch", stage=dataclasses.asdict(stage),
        artifact=str(artifact.relative_to(ctx.run_dir)), artifact_sha256=sha256_file(artifact),
        metrics=dataclasses.asdict(m.metrics), confusion=m.confusion,
        work=work_record, notes=ctx.notes.get(stage.name, {}),
    )
    report.steps.append(step)
    if progress:
        progress.step_done(step, report)
    return model



def _save_artifact(model: Any, ctx: Context, step: str) -> Path:
    """ONNX stages already wrote their file; torch steps save their state_dict (atomically)."""
    from compress import checkpoint as ckpt
    from compress.export import OnnxModel

    if isinstance(model, OnnxModel):
        return model.path
    path = ctx.artifact(step, "model.pt")
    ckpt.save(ckpt.model_record(model), path)
    ctx.checkpoint(step).unlink(missing_ok=True)  # the finished artifact supersedes the training state
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


STAGE_NAMES = ("baseline", "prune", "edge_friendly", "finetune", "export", "quantize")
