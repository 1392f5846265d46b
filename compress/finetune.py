"""Recovery fine-tuning after pruning or the edge-friendly swap, distilled from the unpruned baseline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.errors import CompressError
from compress.recipe import SCHEDULES, Distill, Recipe
from compress.train import fit

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.core import Context


@dataclass(frozen=True, kw_only=True)
class Finetune:
    """Recover the accuracy a structural change cost, with the baseline as the teacher.

    >>> recovered = Finetune(epochs=4)(pruned, ctx)  # doctest: +SKIP
    """

    epochs: int = 12
    lr: float = 0.2  # peak of the one-cycle schedule; half the baseline's, the weights are already good
    batch_size: int = 256
    schedule: str = "onecycle"
    weight_decay: float = 5e-5
    label_smoothing: float = 0.0  # the teacher's soft targets already smooth the labels
    distill: bool = True  # knowledge distillation from the unpruned baseline
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the distillation loss against the hard-label loss
    quant_aware_epochs: int = 4  # with --int8, the last epochs (all, if fewer) train with INT8-rounded activations

    name = "finetune"
    title = "recovery fine-tuning"
    accepts = "torch"
    produces = "torch"

    def check(self) -> None:
        if self.epochs < 1:
            raise CompressError(f"finetune epochs must be at least 1, got {self.epochs}: recovery needs training "
                                "(set prune ratio 0 to skip pruning and recovery)")
        if self.schedule not in SCHEDULES:
            raise CompressError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if not 0 <= self.alpha <= 1 or not self.temperature > 0:
            raise CompressError("finetune alpha must be in [0, 1] and temperature positive")
        if self.quant_aware_epochs < 0:
            raise CompressError(f"finetune quant_aware_epochs must be 0 (off) or more, got {self.quant_aware_epochs}")

    def recipe(self) -> Recipe:
        return Recipe(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, schedule=self.schedule,
                      weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                      head_epochs=0)  # recovery trains the whole network from the first step

    def __call__(self, model: "nn.Module", ctx: "Context") -> "nn.Module":
        self.check()
        teacher = ctx.teacher if self.distill else None
        # Recovery starts from trained weights but changes every layer: adapt batch and LR to the data size only.
        recipe, why = self.recipe().adapted(train_images=int(ctx.data.train_x.shape[0]), pretrained=False)
        ctx.note(self.name, recipe=dataclasses.asdict(recipe), recipe_adapted=why)
        return fit(model, ctx.data, recipe, seed=ctx.seed + 1, device=ctx.device, teacher=teacher,
                   distill=Distill(temperature=self.temperature, alpha=self.alpha) if teacher is not None else None,
                   on_epoch=ctx.epoch_done, on_batch=ctx.batch_done, checkpoint=ctx.checkpoint(self.name),
                   quant_aware_epochs=self.quant_aware_epochs, on_warning=lambda msg: ctx.warn(self.name, msg))
