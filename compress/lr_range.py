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

# The LR range test's pick: the LR at which the smoothed loss has doubled from its lowest value, divided by 10 (Smith
# 2018, "A disciplined approach to neural network hyper-parameters": the peak sits a little below where the loss
# diverges). That point is steady where the lowest point is not. From scratch on 1,584 photos (batch 16), four batch
# draws each: EfficientNet-B0's lowest smoothed loss came at LRs 0.02-0.34 (the old pick was a quarter of it) and
# its doubling at 0.82-1.3; MobileNetV2's at 0.001-0.34 and 1.3-1.6; MobileNetV3-small's at 0.14-0.52 and 1.3. One
# such B0 trained 3 epochs at the old pick 0.053 reached 78.5% top-1 where 0.084 reached 99.2%.
PROBE_DIVISOR = 10
# Fine-tuning pretrained weights takes a third of that: the new head tolerates a high LR long after the pretrained
# features it sits on would be wrecked. EfficientNet-Lite0 (ImageNet) at 32 px, divergence / 10: 0.20 on 1,584
# photos and 0.32 on 500 Fashion-MNIST images, and both baselines stayed at chance (the old pick's 0.067 and 0.21
# reached 99.5% and 80.1%).
PRETRAINED_PROBE_DIVISOR = 30
DIVERGED = 2.0  # the smoothed loss at this multiple of its lowest value: diverged


def resolve_lr(model: "nn.Module", data: "Dataset", recipe: Recipe, *, device: str, seed: int,
               checkpoint: Path | None = None, warn: Callable[[str], None] = lambda _msg: None,
               pretrained: bool = False) -> Recipe:
    """``recipe`` with its peak LR settled: the LR range test's pick when ``probe_lr`` is set (a resumed training
    takes the pick its checkpoint kept, never a new test's), else ``lr`` (:data:`DEFAULT_LR` when None).

    A test in which the loss never diverged is inconclusive: it bounds the LR from neither side (the steps did not
    move the loss at all, or the network took every LR in the range). The recipe's LR, scaled with the batch, is
    then kept and the warning says so."""
    rule = recipe.lr if recipe.lr is not None else DEFAULT_LR
    if not recipe.probe_lr:
        return dataclasses.replace(recipe, lr=rule)
    resuming = checkpoint is not None and checkpoint.exists()
    found = _checkpointed_lr(checkpoint) if resuming else None
    if found is None:
        picked = probe_lr(model, data, dataclasses.replace(recipe, lr=rule), device=device, seed=seed,
                          divisor=PRETRAINED_PROBE_DIVISOR if pretrained else PROBE_DIVISOR)
        conclusive = picked is not None
        found = distributed.from_main(picked if conclusive else rule)  # distributed (#11): rank 0's pick
        warn(f"LR range test: peak LR {found:g} (the recipe's {rule:g} before the test)" if conclusive else
             f"LR range test inconclusive (the loss did not diverge at any LR it tried): peak LR {rule:g}, the "
             "recipe's")
    return dataclasses.replace(recipe, lr=found, probe_lr=False)


def probe_lr(model: "nn.Module", data: "Dataset", recipe: Recipe, *, device: str, seed: int, steps: int = 48,
             low: float = 1e-4, high: float = 4.0, divisor: float = PROBE_DIVISOR) -> float | None:
    """LR range test on a copy of ``model``: ``steps`` SGD steps with the LR growing exponentially from ``low`` to
    ``high``. Returns the LR at which the smoothed loss reached :data:`DIVERGED` times its lowest value (or went
    non-finite) divided by ``divisor``, or None if it never did.

    A loss that fell and never diverged used to give ``high / divisor`` (0.4): the network seemed to take every LR.
    That guess failed: on 1,347 digits with clipped gradients (batch 16, 3 epochs, seeds 0-3), compress's tiny
    MobileNetV3 trained at 0.4 reached 57-69% top-1 and at the recipe's 0.1 86-91% (a 2-rank run at 0.4 stayed at
    chance); the tests' small CNN (tests/fixtures/tiny_net.py) got 92-96% at 0.4 and 91-94% at 0.1. Too high costs
    far more than too low."""
    import torch
    import torch.nn.functional as F

    probe = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last).train()
    opt = optimizer(probe, dataclasses.replace(recipe, lr=low), head_params(probe))
    gen = torch.Generator().manual_seed(seed + 7)
    n = data.train_x.shape[0]
    best, avg = math.inf, 0.0
    with fast_small_input_depthwise(probe):
        for i in range(steps):
            lr = low * (high / low) ** (i / (steps - 1))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(0, n, (min(recipe.batch_size, n),), generator=gen)
            x = data.normalize(data.train_x[idx]).to(device).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(probe(x), data.train_y[idx].to(device), label_smoothing=recipe.label_smoothing)
            if not torch.isfinite(loss):
                return lr / divisor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(probe.parameters(), recipe.clip_grad_norm)
            opt.step()
            avg = 0.8 * avg + 0.2 * loss.item()
            smooth = avg / (1 - 0.8 ** (i + 1))
            best = min(best, smooth)
            if smooth >= DIVERGED * best:
                return lr / divisor
    return None


def _checkpointed_lr(checkpoint: Path) -> float | None:
    try:
        lr = ckpt.load(checkpoint).get("peak_lr")
    except (CompressError, AttributeError):
        return None
    return float(lr) if lr else None
