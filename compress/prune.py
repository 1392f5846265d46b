"""Structured channel pruning with torch-pruning's dependency graph.

``ratio`` sets the budget: the MACs and parameters left when that fraction of the output channels of every
prunable layer group is removed (torch-pruning's ``pruning_ratio``, local pruning). ``allocation`` says where it
is spent. ``uniform`` removes exactly that fraction from every group. ``sensitivity`` (the default) first prunes
each group alone and measures what that costs in accuracy (:mod:`compress.allocation`). It keeps the groups that
lose more than ``protect_above_pt`` points and prunes the others harder, within the same MACs and parameters.
Coupled layers (depthwise convs, the squeeze-and-excitation multiply, residual additions, BatchNorm) are pruned
together through the dependency graph, so the network stays valid. Because both a layer's inputs and outputs
shrink, params and MACs fall by roughly ``(1 - ratio)²``: ratio 0.5 leaves about a quarter. The report records
the achieved params and MACs, and with ``sensitivity`` the groups it kept and the scan's most sensitive groups.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.errors import CompressError
from compress.models import head_layer

if TYPE_CHECKING:
    import torch.nn as nn
    import torch_pruning as tp

    from compress.core import Context

IMPORTANCES = ("l2", "taylor", "bn")
ALLOCATIONS = ("uniform", "sensitivity")


@dataclass(frozen=True, kw_only=True)
class Prune:
    """Prune to the budget ``ratio`` sets, where ``allocation`` says; the classifier's output layer is never pruned.

    >>> pruned = Prune(ratio=0.5)(model, ctx)  # doctest: +SKIP
    """

    ratio: float = 0.5
    importance: str = "l2"  # l2: weight magnitude; taylor: |weight × gradient| on training batches; bn: BN scale
    steps: int = 1  # iterative pruning: reach the ratio in this many steps, re-scoring channels each time
    round_to: int = 8  # SIMD-friendly channel counts on ARM NEON and AVX
    taylor_batches: int = 8  # training batches whose gradients score channels (taylor only)
    # uniform: every group loses ``ratio``; sensitivity: the same MACs and params, spent where a scan finds that
    # pruning costs least accuracy (compress/allocation.py)
    allocation: str = "sensitivity"
    protect_above_pt: float = 1.0  # sensitivity: a group that loses more top-1 points than this alone is kept
    scan_images: int = 2048  # sensitivity: training images each group is scored on at 32 px (as many pixels at others)

    name = "prune"
    title = "pruning"
    accepts = "torch"
    produces = "torch"

    def check(self) -> None:
        if not 0 <= self.ratio < 1:
            raise CompressError(f"prune ratio must be in [0, 1), got {self.ratio}: 0.5 prunes to what removing "
                                "half the channels of every layer leaves; use 0 to skip pruning")
        if self.importance not in IMPORTANCES:
            raise CompressError(f"unknown importance {self.importance!r}: choose one of {', '.join(IMPORTANCES)}")
        if self.steps < 1:
            raise CompressError(f"prune steps must be at least 1, got {self.steps}")
        if self.allocation not in ALLOCATIONS:
            raise CompressError(f"unknown allocation {self.allocation!r}: choose one of {', '.join(ALLOCATIONS)}")
        if self.scan_images < 1:
            raise CompressError(f"scan_images must be at least 1, got {self.scan_images}")
        if self.protect_above_pt < 0:
            raise CompressError(f"protect_above_pt must be at least 0, got {self.protect_above_pt}")
        if self.round_to < 1:
            raise CompressError(f"round_to must be at least 1, got {self.round_to}")

    def __call__(self, model: "nn.Module", ctx: "Context") -> "nn.Module":
        import torch
        import torch.nn.functional as F

        from compress.train import recalibrate_bn

        self.check()
        model = copy.deepcopy(model).cpu().eval()
        pruner = self.pruner(model, ctx.data.input_size, self.allocate(model, ctx))
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

    def allocate(self, model: "nn.Module", ctx: "Context") -> dict[str, float]:
        """Per-group ratios (root module name → ratio) from the sensitivity scan; {} for uniform pruning."""
        if self.allocation != "sensitivity" or self.ratio == 0:
            return {}
        from compress import distributed
        from compress.allocation import plan

        if not distributed.is_main():  # distributed (#11): rank 0 scans, and every rank prunes to its plan
            return distributed.from_main(None)
        # the scan's one-shot prunings rank channels by weight magnitude where Taylor would need gradients
        probe = dataclasses.replace(self, steps=1, importance={"taylor": "l2"}.get(self.importance, self.importance))
        chosen = plan(model, ctx.data, lambda m, r: probe.pruner(m, ctx.data.input_size, r), ratio=self.ratio,
                      protect_above_pt=self.protect_above_pt, images=self.scan_images, seed=ctx.seed)
        ctx.note(self.name, **chosen.note())
        return distributed.from_main(chosen.ratios)

    def pruner(self, model: "nn.Module", input_size: int, ratios: "dict[str, float] | None" = None
               ) -> "tp.pruner.MetaPruner":
        """torch-pruning's pruner for ``model`` (changed in place by each ``step()``) as this stage configures it:
        what ``benchmarks/pruned_shape.py`` builds the stage's pruned shape with. ``ratios`` gives some layer
        groups, named by their root module, their own ratio; the others get ``ratio``."""
        import torch
        import torch_pruning as tp

        importance = {
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
            "bn": lambda: tp.importance.BNScaleImportance(),
        }[self.importance]()
        head = head_layer(model)
        modules = dict(model.named_modules())
        return tp.pruner.MetaPruner(
            model, torch.zeros(1, 3, input_size, input_size), importance=importance, pruning_ratio=self.ratio,
            pruning_ratio_dict={modules[name]: r for name, r in (ratios or {}).items()}, iterative_steps=self.steps,
            ignored_layers=[head] if head is not None else [], round_to=self.round_to,
        )
