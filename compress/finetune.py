"""Recovery fine-tuning after pruning or the edge-friendly swap, distilled from the unpruned baseline (on data sets
large enough for the baseline to teach)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.errors import CompressError
from compress.recipe import DEFAULT_LR, SCHEDULES, SMALL_DATA, Distill, Recipe, scale_lr
from compress.train import fit

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.core import Context


RECOVERY_LR = DEFAULT_LR / 2  # for batch 256, when no baseline LR is known (a small data set then probes instead)
RECOVERY_EPOCHS = 15
# After a baseline that fine-tuned pretrained weights with a slow backbone (small data): the backbone learns at a tenth
# of the head's LR, and pruning cut into its features. EfficientNet-Lite0 from ImageNet on 500 Fashion-MNIST images at
# 64 px, pruned 30%: 15 epochs recovered to 83.76% from an 85.68% baseline, 30 to 84.84% (FP32; Zen 3, 2026-12-02;
# at 15 epochs, twice the LR gave 83.34%, half 82.06%, distillation 83.78%, Taylor importance 83.16%).
SLOW_BACKBONE_RECOVERY_EPOCHS = 30


@dataclass(frozen=True, kw_only=True)
class Finetune:
    """Recover the accuracy a structural change cost, with the baseline as the teacher.

    >>> recovered = Finetune(epochs=4)(pruned, ctx)  # doctest: +SKIP
    """

    # None: RECOVERY_EPOCHS, or SLOW_BACKBONE_RECOVERY_EPOCHS after fine-tuning pretrained weights with a slow backbone
    # (with_baseline_recipe fills it in)
    epochs: int | None = None
    # Peak LR for batch_size. None: half the baseline's peak LR (the pipeline fills it in from the baseline's record:
    # 0.2 for the default job), the weights being trained already; the baseline's own after fine-tuning pretrained
    # weights with a slow backbone (with_baseline_recipe); without a baseline record, RECOVERY_LR.
    lr: float | None = None
    batch_size: int = 256
    schedule: str = "onecycle"
    weight_decay: float = 5e-5
    # None: none when distilling (the teacher's soft targets already smooth the labels), else the baseline's. On 500
    # Fashion-MNIST images at 64 px, MobileNetV3-small pruned 30% recovered 15 epochs from labels alone to 72.4%
    # without smoothing and to 86.8% with the baseline's 0.1 (baseline 86.8%; benchmarks/results/
    # recovery_small_data.md).
    label_smoothing: float | None = None
    distill: bool | None = None  # distil from the unpruned baseline; None: on SMALL_DATA training images or more
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the distillation loss against the hard-label loss
    attention: float = 0.0  # attention transfer from the baseline when distilling (compress.attention): beta; 0 off
    quant_aware_epochs: int = 4  # with --int8, the last epochs (all, if fewer) train with INT8-rounded activations
    # Transfer learning: the backbone's LR as a fraction of the head's, and BatchNorm statistics frozen. None: as the
    # baseline trained (with_baseline_recipe fills them in), so that recovery keeps the pretrained features the
    # baseline's recipe was careful to keep.
    backbone_lr_scale: float | None = None
    freeze_bn: bool | None = None

    name = "finetune"
    title = "recovery fine-tuning"
    accepts = "torch"
    produces = "torch"

    def check(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise CompressError(f"finetune epochs must be at least 1, got {self.epochs}: recovery needs training "
                                "(set prune ratio 0 to skip pruning and recovery)")
        if self.schedule not in SCHEDULES:
            raise CompressError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise CompressError(f"finetune label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.alpha <= 1 or not self.temperature > 0:
            raise CompressError("finetune alpha must be in [0, 1] and temperature positive")
        if not self.attention >= 0:
            raise CompressError(f"finetune attention must be 0 (off) or more, got {self.attention}: it weighs attention "
                                "transfer (the paper's beta, 1000)")
        if self.quant_aware_epochs < 0:
            raise CompressError(f"finetune quant_aware_epochs must be 0 (off) or more, got {self.quant_aware_epochs}")
        if self.backbone_lr_scale is not None and not 0 < self.backbone_lr_scale <= 1:
            raise CompressError(f"finetune backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale}")

    def with_baseline_recipe(self, baseline_recipe: dict) -> "Finetune":
        """This stage learning at the pace of ``baseline_recipe`` (a baseline's recorded recipe), where it does not
        say otherwise:

        * ``lr``: half the baseline's peak LR, scaled from its batch to this stage's
          (:func:`compress.recipe.scale_lr`; adapt scales it back). An LR range test on the pruned model picked
          too low an LR for recovery (MobileNetV3-small, 1,584 photos: 0.022 recovered to 82%; half the
          baseline's 0.10 gave 99.5%), and the baseline's own did worse on the main job (90.70% against 90.86%).
          After fine-tuning pretrained weights with a slow backbone, the baseline's own LR: the backbone then
          learns at a tenth of it, and pruning has cut into features that half of that does not rebuild
          (EfficientNet-Lite0 on 500 Fashion-MNIST images, pruned 30%, 15 epochs, FP32: 71.9% at half and 74.1%
          at the baseline's at 32 px, baseline 74.5%; 82.1% and 83.8% at 64 px). At the baseline's LR one of two
          runs collapsed to chance, which training rolls back (:func:`compress.divergence.collapsed`). Kept when the
          baseline's LR is unknown.
        * ``backbone_lr_scale`` and ``freeze_bn``: the baseline's. Fine-tuned pretrained weights on small data
          train their backbone at a tenth of the head's LR with frozen BatchNorm statistics; recovery at the
          full LR with live statistics unlearnt them (module docstring of :mod:`compress.recipe`).
        * ``epochs``: SLOW_BACKBONE_RECOVERY_EPOCHS after such a baseline, the backbone then learning slowly."""
        lr, batch = baseline_recipe.get("lr"), baseline_recipe.get("batch_size")
        known = lr and batch and baseline_recipe.get("epochs") and not baseline_recipe.get("probe_lr")
        slow_backbone = (baseline_recipe.get("backbone_lr_scale") or 1.0) < 1
        changes: dict = {}
        if self.lr is None and known:
            changes["lr"] = float(f"{scale_lr((1.0 if slow_backbone else 0.5) * lr, batch, self.batch_size):.4g}")
        # Filled in only where they change something: a from-scratch baseline's stage stays what its config says.
        if self.backbone_lr_scale is None and slow_backbone:
            changes["backbone_lr_scale"] = float(baseline_recipe["backbone_lr_scale"])
        if self.freeze_bn is None and baseline_recipe.get("freeze_bn"):
            changes["freeze_bn"] = True
        if self.epochs is None and slow_backbone:
            changes["epochs"] = SLOW_BACKBONE_RECOVERY_EPOCHS
        return dataclasses.replace(self, **changes) if changes else self

    def distils(self, train_images: int) -> bool:
        """Whether recovery learns from the baseline's soft targets. On small data sets it learns from the labels
        alone: a baseline trained on a few hundred or thousand images teaches its own errors. Measured with 6
        recovery epochs after pruning 30% (test top-1, distilled → labels only): EfficientNet-B0 on 1,584 photos
        77.8% → 100%, MobileNetV3-small on the same 97.7% → 100%, EfficientNet-B0 on 400 Fashion-MNIST images
        66% → 79%."""
        return self.distill if self.distill is not None else train_images >= SMALL_DATA

    @property
    def recovery_epochs(self) -> int:
        """The epochs this stage trains: its own, or the default."""
        return self.epochs if self.epochs is not None else RECOVERY_EPOCHS

    def recipe(self) -> Recipe:
        return Recipe(epochs=self.recovery_epochs, lr=self.lr, batch_size=self.batch_size, schedule=self.schedule,
                      weight_decay=self.weight_decay, label_smoothing=self.label_smoothing or 0.0,
                      head_epochs=0)  # recovery trains the whole network from the first step

    def __call__(self, model: "nn.Module", ctx: "Context") -> "nn.Module":
        self.check()
        images = int(ctx.data.train_x.shape[0])
        teacher = ctx.teacher if self.distils(images) else None
        # Recovery starts from trained weights but changes every layer: adapt batch and LR to the data size only.
        recipe, why = self.recipe().adapted(train_images=images, pretrained=False, default_lr=RECOVERY_LR)
        if (self.backbone_lr_scale or 1.0) < 1 or self.freeze_bn:
            recipe = dataclasses.replace(recipe, backbone_lr_scale=self.backbone_lr_scale or 1.0,
                                         freeze_bn=bool(self.freeze_bn))
            epochs = f"{recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}" + (
                ", the default after such a baseline" if recipe.epochs == SLOW_BACKBONE_RECOVERY_EPOCHS else
                f" (the default after such a baseline: {SLOW_BACKBONE_RECOVERY_EPOCHS})")
            why.append(f"as the baseline fine-tuned its pretrained weights: the backbone at "
                       f"{recipe.backbone_lr_scale:g}× the head's LR"
                       + ("; BatchNorm statistics frozen" if recipe.freeze_bn else "") + f"; {epochs}")
        if self.distill is None and teacher is None:
            why.append(f"labels only, no distillation from the baseline (under {SMALL_DATA:,} training images)")
        if self.label_smoothing is None and teacher is None:  # hard labels alone: smooth them as the baseline did
            baseline = ctx.notes.get("baseline", {}).get("recipe", {})
            smoothing = baseline.get("label_smoothing", Recipe().label_smoothing)
            recipe = dataclasses.replace(recipe, label_smoothing=smoothing)
            why.append(f"label smoothing {smoothing:g}, the baseline's (no teacher's soft targets to smooth them)")
        ctx.note(self.name, recipe=dataclasses.asdict(recipe), recipe_adapted=why, distilled=teacher is not None)
        return fit(model, ctx.data, recipe, seed=ctx.seed + 1, device=ctx.device, teacher=teacher,
                   distill=Distill(temperature=self.temperature, alpha=self.alpha, attention=self.attention)
                   if teacher is not None else None,
                   on_epoch=ctx.epoch_done, on_batch=ctx.batch_done, checkpoint=ctx.checkpoint(self.name),
                   quant_aware_epochs=self.quant_aware_epochs, on_warning=lambda msg: ctx.warn(self.name, msg))
