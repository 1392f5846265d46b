"""How to train, and how the recipe adapts to the job instead of being one tuned constant.

The defaults were tuned on one job (MobileNetV3-small from scratch, 60,000 Fashion-MNIST images, batch 256,
peak LR 0.4) and :meth:`Recipe.adapted` returns exactly them for that job. For other jobs it follows three rules
from the literature, and says which it applied:

* **Enough steps per epoch.** The batch shrinks (powers of two, down to 16) until an epoch has at least
  :data:`MIN_STEPS_PER_EPOCH` optimizer steps: 1,800 photos at batch 256 give 7 steps an epoch, too few for a
  one-cycle schedule to warm up and anneal. 64, not 32: EfficientNet-B0 from scratch on 1,584 colour photos in 3
  classes at 64 px, 3 epochs, seeds 0/1/2: at least 32 steps (batch 32) gave 84.1/95.7/86.9% top-1, at least 64
  (batch 16) 99.2/99.2/100%.
* **Square-root LR scaling** with the batch (Krizhevsky 2014, "One weird trick"; Hoffer et al. 2017, "Train
  longer, generalize better"): when the batch shrinks, the peak LR shrinks with the square root of the ratio
  (``lr`` is the peak for ``batch_size``). The linear rule (Goyal et al. 2017) is for growing batches; shrinking
  them with it starved small data sets: on 400 Fashion-MNIST images at batch 16, 20 epochs from scratch,
  EfficientNet-B0 reached 37% at the linear 0.025 and 75% at the square-root 0.1, MobileNetV2 68% and 77%.
* **Transfer learning** (Kornblith et al. 2019; Howard & Ruder 2018): with pretrained weights the new head
  trains alone first (``head_epochs``), then the whole network. On small data the backbone trains at a tenth of
  the head's LR (layer-wise); from 10,000 images on at the head's own: the best fine-tuning LR grows as the target
  domain moves away from the source (Li et al. 2020, "Rethinking the Hyperparameters for Fine-tuning"), and
  EfficientNet-Lite0's ImageNet weights on 20,000 Fashion-MNIST images at 32 px (1 head-only and 1 full epoch)
  reached 61.7% with the backbone at a tenth and 79.6% at the head's LR (benchmarks/results/transfer_lr.md).
  BatchNorm statistics stay frozen when batches are small (few images give noisy batch statistics that would
  overwrite the pretrained ones), and gradients are clipped.

Small data sets also get gradient clipping (a handful of bad batches can blow up a network that has seen little
data) and an **LR range test** (Smith 2017, "Cyclical Learning Rates"; fastai's ``lr_find``): a few dozen steps
with an exponentially growing LR on a copy of the model, then the peak LR is a tenth of the one at which the
smoothed loss has doubled from its lowest value (:mod:`compress.lr_range`). On 1,347 digits a two-layer CNN
wanted 0.4 and MobileNetV2 diverged there: one constant cannot serve both. Divergence that happens anyway is
caught and rolled back by :func:`compress.train.fit`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from compress.errors import CompressError

SCHEDULES = ("onecycle", "cosine", "step")
OPTIMIZERS = ("sgd", "adamw")
MIN_STEPS_PER_EPOCH = 64
MIN_BATCH = 16
SMALL_DATA = 10_000  # training images below which the small-data rules apply
CLIP_NORM = 2.0  # gradient-norm clip for small data and fine-tuning (a no-op for well-behaved steps)
# Optimizer steps below which training is unlikely to learn anything, from scratch and from pretrained weights.
MIN_STEPS_SCRATCH, MIN_STEPS_PRETRAINED = 300, 40
DEFAULT_LR = 0.4  # peak LR for batch 256, tuned on the default job
SMALL_DATA_BACKBONE_LR_SCALE = 0.1  # transfer learning on small data: the backbone's LR as a fraction of the head's


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How to train. The defaults reach 92% on Fashion-MNIST with MobileNetV3-small from scratch."""

    epochs: int = 25
    batch_size: int = 256  # the largest batch; adapt lowers it for small data sets
    optimizer: str = "sgd"  # SGD + Nesterov momentum 0.9
    # Peak LR for batch_size (one-cycle tolerates a high peak); adapt scales it with the batch. None: DEFAULT_LR, or
    # on small data the LR range test's pick. An LR that is given is used as given (scaled with the batch), untested.
    lr: float | None = None
    weight_decay: float = 5e-5  # MobileNet papers use 4e-5..1e-5: depthwise filters have few weights
    schedule: str = "onecycle"
    label_smoothing: float = 0.1
    augment: bool = True  # horizontal flips and ±2 px shifts
    head_epochs: int = 1  # transfer learning: train only the new head first (ignored from scratch)
    adapt: bool = True  # adapt batch, LR, clipping and BatchNorm to the data size and the init (module docstring)
    # Transfer learning: the backbone's LR as a fraction of the head's. None: SMALL_DATA_BACKBONE_LR_SCALE on small
    # data, where the pretrained features must survive few noisy steps; the head's LR (1.0) on larger data sets.
    backbone_lr_scale: float | None = None
    clip_grad_norm: float | None = None  # set by adapt (small data, fine-tuning); None: no clipping
    freeze_bn: bool = False  # keep BatchNorm running statistics fixed while training (set by adapt)
    probe_lr: bool = False  # set by adapt for small data: pick the peak LR with a short LR range test (train.probe_lr)

    def check(self) -> None:
        if self.epochs < 0:
            raise CompressError(f"epochs must be 0 (use the weights as they are) or more, got {self.epochs}")
        if self.batch_size < 1:
            raise CompressError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise CompressError(f"lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise CompressError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise CompressError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.label_smoothing < 1:
            raise CompressError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.head_epochs < 0:
            raise CompressError(f"head_epochs must not be negative, got {self.head_epochs}")
        if self.backbone_lr_scale is not None and not 0 < self.backbone_lr_scale <= 1:
            raise CompressError(f"backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise CompressError(f"clip_grad_norm must be positive (or null for none), got {self.clip_grad_norm}")

    def adapted(self, *, train_images: int, pretrained: bool,
                default_lr: float = DEFAULT_LR) -> tuple["Recipe", list[str]]:
        """The concrete recipe for this job (``adapt`` off and ``lr`` set in the result), and one line per rule
        applied. ``default_lr`` (for ``batch_size``) stands in for an ``lr`` of None."""
        base_lr = self.lr if self.lr is not None else default_lr
        small = train_images < SMALL_DATA
        scale = self.backbone_lr_scale if self.backbone_lr_scale is not None else (
            SMALL_DATA_BACKBONE_LR_SCALE if small else 1.0)
        if not self.adapt:
            return dataclasses.replace(self, lr=base_lr, backbone_lr_scale=scale), []
        why: list[str] = []
        batch = self.batch_size
        while batch > MIN_BATCH and math.ceil(train_images / batch) < MIN_STEPS_PER_EPOCH:
            batch //= 2
        lr = scale_lr(base_lr, self.batch_size, batch)  # the LR was given for batch_size
        if batch != self.batch_size:
            why.append(f"batch {batch} (not {self.batch_size}) so that an epoch of {train_images:,} images has "
                       f"{math.ceil(train_images / batch)} steps; peak LR {lr:g} by the square-root scaling rule")
        clip = self.clip_grad_norm if self.clip_grad_norm is not None else (CLIP_NORM if small or pretrained else None)
        if clip is not None and self.clip_grad_norm is None:
            why.append(f"gradient norm clipped at {clip:g} ({'fine-tuning pretrained weights' if pretrained else 'a small data set'})")
        head_epochs = min(self.head_epochs, max(0, self.epochs - 1)) if pretrained else 0
        scale = scale if pretrained else 1.0
        freeze_bn = self.freeze_bn or (pretrained and (small or batch < 64))
        if pretrained:
            why.append(f"transfer learning: {head_epochs} head-only epoch(s), then the backbone at {scale:g}× the "
                       "head's LR" + ("" if scale < 1 or self.backbone_lr_scale is not None else
                                      f" ({train_images:,} images are enough to adapt the pretrained features)")
                       + ("; BatchNorm statistics frozen (small batches or data)" if freeze_bn else ""))
        probe = self.probe_lr or (small and self.lr is None)
        if probe:
            why.append("peak LR from a short LR range test (small data: no single LR suits every architecture)")
        elif small:
            why.append(f"peak LR {lr:g} from the lr given (no LR range test)")
        return dataclasses.replace(self, batch_size=batch, lr=lr, clip_grad_norm=clip, head_epochs=head_epochs,
                                   backbone_lr_scale=scale, freeze_bn=freeze_bn, probe_lr=probe, adapt=False), why

    def too_short(self, *, train_images: int, pretrained: bool) -> str:
        """A warning when the epochs are too few for the data and the init to learn anything, else ""."""
        steps = self.epochs * math.ceil(train_images / self.batch_size)
        need = MIN_STEPS_PRETRAINED if pretrained else MIN_STEPS_SCRATCH
        if 0 < steps < need:
            return (f"{self.epochs} epoch(s) of {train_images:,} images are only {steps} optimizer steps; "
                    f"{'fine-tuning pretrained weights' if pretrained else 'training from scratch'} usually needs at "
                    f"least {need}: expect a weak baseline, or raise --epochs")
        return ""

    def cache_fields(self) -> dict:
        """The fields that identify a trained baseline: the new knobs count only when they change something, so
        baselines trained before they existed keep their cache entries."""
        d = dataclasses.asdict(self)
        neutral = {"adapt": False, "backbone_lr_scale": 1.0, "clip_grad_norm": None, "freeze_bn": False,
                   "probe_lr": False}
        if self.freeze_bn:  # frozen at the data's statistics now, at the pretraining's before: a new cache entry
            d["freeze_bn"] = "data statistics"
        if self.probe_lr:  # the range test picks where the loss diverges now, at its lowest point before
            d["probe_lr"] = "divergence / 10 (pretrained / 30)"
        return {k: v for k, v in d.items() if not (k in neutral and v == neutral[k])}


def scale_lr(lr: float, from_batch: int, to_batch: int) -> float:
    """The peak LR for ``to_batch`` images a step, given ``lr`` for ``from_batch``: the square-root rule."""
    return lr * math.sqrt(to_batch / from_batch)


@dataclass(frozen=True, kw_only=True)
class Distill:
    """Knowledge distillation (Hinton et al. 2015): soft targets from a teacher at temperature T."""

    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft (teacher) loss; 1 - alpha goes to the hard labels
    attention: float = 0.0  # beta of attention transfer (compress.attention; the paper's 1,000); 0: off


def optimizer(model, recipe: Recipe, head: list):
    """SGD + Nesterov (or AdamW). No weight decay on BN and biases: standard for MobileNets, and it keeps BN
    scales meaningful for pruning. With ``backbone_lr_scale`` < 1 the head's parameters get their own groups
    at the full LR (layer-wise learning rates). A recipe not adapted to a job (None) keeps the small-data scale,
    the default before the scale followed the data size."""
    import torch

    backbone = recipe.backbone_lr_scale if recipe.backbone_lr_scale is not None else SMALL_DATA_BACKBONE_LR_SCALE
    head_ids = {id(p) for p in head} if backbone < 1 else set()
    groups = []
    for part, scale in (("backbone", backbone if head_ids else 1.0), ("head", 1.0)):
        params = [p for p in model.parameters() if (id(p) in head_ids) == (part == "head")]
        if not params:
            continue
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay,
                    "lr": recipe.lr * scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr": recipe.lr * scale}]
    groups = [g for g in groups if g["params"]]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)


def scheduler(opt, recipe: Recipe, total_steps: int):
    import torch

    peaks = [g["lr"] for g in opt.param_groups]
    if recipe.schedule == "onecycle" and total_steps >= 8:  # shorter runs leave one-cycle's phases empty
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total_steps, pct_start=0.25)
    if recipe.schedule in ("cosine", "onecycle"):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total_steps // 3), gamma=0.1)
