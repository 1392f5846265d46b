"""Structured channel pruning with torch-pruning's dependency graph.

``ratio`` is the fraction of output channels removed from every prunable layer group (torch-pruning's
``pruning_ratio`` with local, per-layer pruning). Coupled layers (depthwise convs, the
squeeze-and-excitation multiply, residual additions, BatchNorm) are pruned together through the
dependency graph, so the network stays valid. Because both a layer's inputs and outputs shrink,
params and MACs fall by roughly ``(1 - ratio)²``: ratio 0.5 leaves about a quarter. The report
records the achieved params and MACs, not just this ratio.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.errors import CompressError
from compress.models import head_layer

if TYPE_CHECKING:
    import torch.nn as nn
    import torch_pruning as tp

    from compress.core import Context

IMPORTANCES = ("l2", "taylor", "bn")


@dataclass(frozen=True, kw_only=True)
class Prune:
    """Remove ``ratio`` of the channels of every layer; the classifier's output layer is never pruned.

    >>> pruned = Prune(ratio=0.5)(model, ctx)  # doctest: +SKIP
    """

    ratio: float = 0.5
    importance: str = "l2"  # l2: weight magnitude; taylor: |weight × gradient| on training batches; bn: BN scale
    steps: int = 1  # iterative pruning: reach the ratio in this many steps, re-scoring channels each time
    round_to: int = 8  # SIMD-friendly channel counts on ARM NEON and AVX
    taylor_batches: int = 8  # training batches whose gradients score channels (taylor only)

    name = "prune"
    title = "pruning"
    accepts = "torch"
    produces = "torch"

    def check(self) -> None:
        if not 0 <= self.ratio < 1:
            raise CompressError(f"prune ratio must be in [0, 1), got {self.ratio}: 0.5 removes half the channels "
                                "of every layer; use 0 to skip pruning")
        if self.importance not in IMPORTANCES:
            raise CompressError(f"unknown importance {self.importance!r}: choose one of {', '.join(IMPORTANCES)}")
        if self.steps < 1:
            raise CompressError(f"prune steps must be at least 1, got {self.steps}")
        if self.round_to < 1:
            raise CompressError(f"round_to must be at least 1, got {self.round_to}")

    def __call__(self, model: "nn.Module", ctx: "Context") -> "nn.Module":
        import torch
        import torch.nn.functional as F

        from compress.train import recalibrate_bn

        self.check()
        model = copy.deepcopy(model).cpu().eval()
        pruner = self.pruner(model, ctx.data.input_size)
        gen = torch.Generator().manual_seed(ctx.seed)
        for _ in range(self.steps):
            if self.importance == "taylor":
                model.zero_grad()
                n = ctx.data.train_x.shape[0]
                for _ in range(self.taylor_batches):
                    idx = torch.randint(0, n, (64,), generator=gen)
                    F.cross_entropy(model(ctx.data.normalize(ctx.data.train_x[idx])), ctx.data.train_y[idx]).backward()
            pruner.step()
        model.zero_grad(set_to_none=True)
        # Removing a layer's input channels changes its outputs, so downstream BN statistics are stale;
        # re-estimating them costs one forward pass and recovers much of the accuracy before fine-tuning.
        recalibrate_bn(model, ctx.data)
        return model.eval()

    def pruner(self, model: "nn.Module", input_size: int) -> "tp.pruner.MetaPruner":
        """torch-pruning's pruner for ``model`` (changed in place by each ``step()``) as this stage configures it:
        what ``benchmarks/pruned_shape.py`` builds the stage's pruned shape with."""
        import torch
        import torch_pruning as tp

        importance = {
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
            "bn": lambda: tp.importance.BNScaleImportance(),
        }[self.importance]()
        head = head_layer(model)
        return tp.pruner.MetaPruner(
            model, torch.zeros(1, 3, input_size, input_size), importance=importance, pruning_ratio=self.ratio,
            iterative_steps=self.steps, ignored_layers=[head] if head is not None else [], round_to=self.round_to,
        )
