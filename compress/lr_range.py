"""How a training's peak LR is settled: as given, or by an LR range test (Smith 2017, "Cyclical Learning Rates";
fastai's ``lr_find``) on a copy of the model, with a fallback when the test finds nothing."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from compress import checkpoint as ckpt
from compress import distributed
from compress.depthwise_grad import fast_small_input_depthwise
from compress.errors import CompressError
from compress.heads import head_params
from compress.recipe import DEFAULT_LR, Recipe, optimizer

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.data import Dataset

# The LR range test's pick: the lowest-loss LR / 4. On 1,347 digits, 3-6 epochs: a two-layer CNN reached 62% (0.32;
# its best hand-picked LR gave 65%) and MobileNetV2 64% (0.13; the tuned default 0.4 diverged, 0.05 gave 43%);
# fastai's more cautious /10 gave 54% on the CNN.
PROBE_DIVISOR = 4


def resolve_lr(model: "nn.Module", data: "Dataset", recipe: Recipe, *, device: str, seed: int,
               checkpoint: Path | None = None, warn: Callable[[str], None] = lambda _msg: None) -> Recipe:
    """``recipe`` with its peak LR settled: the LR range test's pick when ``probe_lr`` is set (a resumed training
    takes the pick its checkpoint kept, never a new test's), else ``lr`` (:data:`DEFAULT_LR` when None).

    A test whose lowest loss came at an LR under the recipe's own (a pick under ``lr / PROBE_DIVISOR``) found no LR
    at which the loss fell: from scratch on a few hundred images, 48 noisy steps barely move it (MobileNetV2 on 400
    Fashion-MNIST images picked 3e-5 and stayed at chance; the recipe's 0.1 reached 77%). The recipe's LR, scaled
    with the batch, is then kept and the warning says so."""
    rule = recipe.lr if recipe.lr is not None else DEFAULT_LR
    if not recipe.probe_lr:
        return dataclasses.replace(recipe, lr=rule)
    resuming = checkpoint is not None and checkpoint.exists()
    found = _checkpointed_lr(checkpoint) if resuming else None
    if found is None:
        picked = probe_lr(model, data, dataclasses.replace(recipe, lr=rule), device=device, seed=seed)
        conclusive = picked >= rule / PROBE_DIVISOR
        found = distributed.from_main(picked if conclusive else rule)  # distributed (#11): rank 0's pick
        warn(f"LR range test: peak LR {found:g} (the recipe's {rule:g} before the test)" if conclusive else
             f"LR range test inconclusive (the loss fell at no LR above the recipe's {rule:g}): peak LR {rule:g}")
    return dataclasses.replace(recipe, lr=found, probe_lr=False)


def probe_lr(model: "nn.Module", data: "Dataset", recipe: Recipe, *, device: str, seed: int, steps: int = 48,
             low: float = 1e-4, high: float = 4.0) -> float:
    """LR range test on a copy of ``model``: ``steps`` SGD steps with the LR growing exponentially from ``low`` to
    ``high``; returns the LR with the lowest smoothed loss divided by :data:`PROBE_DIVISOR`."""
    import torch
    import torch.nn.functional as F

    probe = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last).train()
    opt = optimizer(probe, dataclasses.replace(recipe, lr=low), head_params(probe))
    gen = torch.Generator().manual_seed(seed + 7)
    n = data.train_x.shape[0]
    best, best_lr, avg = math.inf, recipe.lr, 0.0
    with fast_small_input_depthwise(probe):
        for i in range(steps):
            lr = low * (high / low) ** (i / (steps - 1))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(0, n, (min(recipe.batch_size, n),), generator=gen)
            x = data.normalize(data.train_x[idx]).to(device).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(probe(x), data.train_y[idx].to(device), label_smoothing=recipe.label_smoothing)
            if not torch.isfinite(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(probe.parameters(), recipe.clip_grad_norm)
            opt.step()
            avg = 0.8 * avg + 0.2 * loss.item()
            smooth = avg / (1 - 0.8 ** (i + 1))
            if smooth < best:
                best, best_lr = smooth, lr
            elif smooth > 4 * best:
                break
    return best_lr / PROBE_DIVISOR


def _checkpointed_lr(checkpoint: Path) -> float | None:
    try:
        lr = ckpt.load(checkpoint).get("peak_lr")
    except (CompressError, AttributeError):
        return None
    return float(lr) if lr else None
