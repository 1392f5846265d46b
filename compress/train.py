"""Training: the baseline recipe and recovery fine-tuning with knowledge distillation.

One loop serves both. It trains a *copy* of the model (stages never mutate their input), in ``channels_last``
memory format (measured here: 2.7× faster per epoch on a 2-core CPU than NCHW for MobileNetV3 at 32×32), with
batch-level augmentation on uint8 tensors, and with :mod:`compress.depthwise_grad` for depthwise convolutions whose
input is smaller than their kernel.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compress import checkpoint as ckpt
from compress import distributed
from compress.depthwise_grad import fast_small_input_depthwise
from compress.divergence import collapsed, diverged, majority_pct
from compress.errors import CompressError
from compress.heads import head_params
from compress.lr_range import resolve_lr
from compress.qat import fake_quant_activations
from compress.recipe import Distill, Recipe, optimizer, scheduler

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from compress.data import Dataset

EpochCallback = Callable[[dict], None]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CompressError("--device cuda was asked for but no CUDA device is available: use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise CompressError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


@dataclass
class _State:
    """Everything one training run carries from epoch to epoch: what a checkpoint saves and a snapshot restores."""

    student: "nn.Module"
    opt: Any
    sched: Any
    gen: "torch.Generator"
    epoch: int = 0
    lr_scale: float = 1.0  # lowered after a divergence
    peak_lr: float = 0.0  # the recipe's peak LR (after an LR range test): a resumed run must use the same
    rounding: Any = None  # quantization-aware rounding modules, once those epochs begin
    attention: Any = None  # compress.attention.Transfer when distilling with attention transfer
    stop_rounding: Callable[[], None] | None = None
    rounding_dropped: bool = False  # a quantization-aware epoch diverged: the rest of training is plain

    def save(self) -> dict:
        import torch

        return {"model": self.student.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "generator": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(), "epoch": self.epoch, "lr_scale": self.lr_scale,
                "peak_lr": self.peak_lr, "rounding_dropped": self.rounding_dropped,
                "fake_quant": self.rounding.state_dict() if self.rounding is not None else None}


MAX_RECOVERIES = 3  # each halves the learning rate: at most 1/8 of the recipe's before giving up


def fit(model: "nn.Module", data: "Dataset", recipe: Recipe, *, seed: int, device: str = "cpu",
        teacher: "nn.Module | None" = None, distill: Distill | None = None,
        on_epoch: EpochCallback | None = None, on_batch: Callable[[int, int], None] | None = None,
        checkpoint: Path | None = None, quant_aware_epochs: int = 0,
        on_warning: Callable[[str], None] | None = None) -> "nn.Module":
    """Train a copy of ``model`` and return it in eval mode on the CPU.

    With ``teacher``, the loss is ``alpha·T²·KL(student/T ‖ teacher/T) + (1-alpha)·CE``, plus attention transfer
    (:mod:`compress.attention`) when ``distill.attention`` is above 0.
    The last ``quant_aware_epochs`` epochs (all of them, if more) train under :func:`compress.qat.fake_quant_activations`.
    With ``checkpoint``, the state is saved after every epoch and a matching checkpoint is resumed from, so an
    interrupted run loses at most one epoch. A diverging epoch (a non-finite loss, or a loss that blew up) is rolled
    back and retried at half the learning rate, up to :data:`MAX_RECOVERIES` times, each said through ``on_warning``;
    so is an epoch whose training accuracy collapsed to chance, from the most accurate epoch.
    """
    import torch

    recipe.check()
    if recipe.epochs == 0:  # use the weights as they are
        return copy.deepcopy(model).cpu().eval()
    warn = on_warning or (lambda _msg: None)
    torch.manual_seed(seed)
    student = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher = copy.deepcopy(teacher).to(device).to(memory_format=torch.channels_last).eval()
        distill = distill or Distill()
    steps_per_epoch = math.ceil(data.train_x.shape[0] / recipe.batch_size)
    resuming = checkpoint is not None and checkpoint.exists()
    if recipe.probe_lr or recipe.lr is None:
        recipe = resolve_lr(student, data, recipe, device=device, seed=seed, checkpoint=checkpoint, warn=warn)
        torch.manual_seed(seed)
    if recipe.freeze_bn and not resuming:
        # Statistics held fixed are this data's, not the pretraining's: at 32 px on grey images ImageNet's are far off
        # (EfficientNet-Lite0, ImageNet weights, 400 Fashion-MNIST images at 32 px: 30% with ImageNet's, 84% with these).
        recalibrate_bn(student, data)
    state = _new_state(student, recipe, steps_per_epoch, seed)
    if resuming:
        _resume(state, checkpoint, recipe, steps_per_epoch, seed, quant_aware_epochs, warn)
    with fast_small_input_depthwise(student), contextlib.ExitStack() as stack:
        if teacher is not None and distill.attention > 0:
            from compress.attention import Transfer, stage_names

            names = stage_names(teacher, data.normalize(data.train_x[:1]).to(device))
            state.attention = stack.enter_context(Transfer(student, teacher, names, distill.attention))
        _train(state, data, recipe, device, teacher, distill, quant_aware_epochs, on_batch, on_epoch, checkpoint, warn)
    _stop_rounding(state)
    student = state.student
    for p in student.parameters():
        p.requires_grad_(True)
    student = student.to("cpu").to(memory_format=torch.contiguous_format)
    if not recipe.freeze_bn:  # frozen statistics are the ones the weights were trained with: keep them
        recalibrate_bn(student, data)
    return student.eval()


def _train(state: _State, data: "Dataset", recipe: Recipe, device: str, teacher: "nn.Module | None",
           distill: Distill | None, quant_aware_epochs: int, on_batch: Callable[[int, int], None] | None,
           on_epoch: EpochCallback | None, checkpoint: Path | None, warn: Callable[[str], None]) -> None:
    """The epochs, from ``state.epoch`` to the recipe's last, each rolled back and retried at half the LR if it
    diverges (at most :data:`MAX_RECOVERIES` times); a quantization-aware one is retried without the rounding."""
    steps_per_epoch = math.ceil(data.train_x.shape[0] / recipe.batch_size)
    chance = majority_pct(data)
    losses: list[float] = []
    accs: list[float] = []  # each good epoch's training accuracy, %
    snapshot, recoveries = copy.deepcopy(state.save()), 0
    best = snapshot  # the most accurate epoch's: a collapse may begin inside the last good epoch
    while state.epoch < recipe.epochs:
        qat = 0 if state.rounding_dropped else quant_aware_epochs
        info = _epoch(state, data, recipe, device, teacher, distill, qat, on_batch)
        blew_up = diverged(info["loss"], losses)
        collapse = "" if blew_up else collapsed(info["train_acc_pct"], accs, chance)
        problem = blew_up or collapse
        if problem:
            if recoveries == MAX_RECOVERIES:
                raise CompressError(f"training diverged ({problem}) at epoch {state.epoch + 1} even at "
                                    f"{recipe.lr * state.lr_scale:g} peak LR after {recoveries} automatic retries: "
                                    "lower the lr (--lr / --finetune-lr), or check the data")
            recoveries += 1
            _restore(state, best if collapse else snapshot, recipe, steps_per_epoch, state.lr_scale / 2)
            plain = ""
            if info["quant_aware"]:  # halving the LR did not save EfficientNet-B0's (#10): the rounding goes instead
                _stop_rounding(state)
                state.rounding_dropped = True
                plain = ", without quantization-aware rounding (the INT8 step still calibrates)"
            if collapse:  # later epochs are gone: a later divergence goes back here, not to one of them
                del losses[state.epoch:], accs[state.epoch:]
                snapshot = best
            warn(f"training diverged at epoch {state.epoch + 1} ({problem}); went back to the "
                 f"{'most accurate' if collapse else 'last good'} epoch and continued at half the learning rate "
                 f"(peak {recipe.lr * state.lr_scale:g}){plain}")
            continue
        state.epoch += 1
        losses.append(info["loss"])
        accs.append(info["train_acc_pct"])
        snapshot = copy.deepcopy(state.save())
        if accs[-1] >= max(accs):
            best = snapshot
        if checkpoint is not None and distributed.is_main():  # distributed (#11): rank 0 writes, all ranks read
            ckpt.save(state.save(), checkpoint)
        if on_epoch:
            on_epoch({**info, "epoch": state.epoch, "epochs": recipe.epochs, "lr": state.sched.get_last_lr()[0]})


def _new_state(student: "nn.Module", recipe: Recipe, steps_per_epoch: int, seed: int, lr_scale: float = 1.0) -> _State:
    import torch

    scaled = dataclasses.replace(recipe, lr=recipe.lr * lr_scale)
    opt = optimizer(student, scaled, head_params(student))
    return _State(student=student, opt=opt, sched=scheduler(opt, scaled, steps_per_epoch * recipe.epochs),
                  gen=torch.Generator().manual_seed(seed), lr_scale=lr_scale, peak_lr=recipe.lr)


def _restore(state: _State, saved: dict, recipe: Recipe, steps_per_epoch: int, lr_scale: float) -> None:
    """Back to ``saved`` (a :meth:`_State.save`), with the learning rate schedule scaled by ``lr_scale``."""
    import warnings

    import torch

    state.student.load_state_dict(saved["model"])
    scaled = dataclasses.replace(recipe, lr=recipe.lr * lr_scale)
    opt = optimizer(state.student, scaled, head_params(state.student))
    peaks = [g["lr"] for g in opt.param_groups]
    opt.load_state_dict(saved["optimizer"])  # momentum buffers; the learning rates come from the schedule
    for g, peak in zip(opt.param_groups, peaks):
        g["lr"] = peak
    sched = scheduler(opt, scaled, steps_per_epoch * recipe.epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": we are fast-forwarding
        for _ in range(saved["epoch"] * steps_per_epoch):
            sched.step()
    state.opt, state.sched, state.lr_scale, state.epoch = opt, sched, lr_scale, saved["epoch"]
    state.gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if state.rounding is not None and saved.get("fake_quant") is not None:
        state.rounding.load_state_dict(saved["fake_quant"])
    else:  # back to before the quantization-aware epochs: their observers go too (a diverged epoch leaves NaN
        _stop_rounding(state)  # ranges in them, and every retry would round with NaN and diverge again)


def _resume(state: _State, checkpoint: Path, recipe: Recipe, steps_per_epoch: int, seed: int,
            quant_aware_epochs: int, warn: Callable[[str], None]) -> None:
    """Continue from a per-epoch checkpoint; one that does not fit this model and recipe is set aside, loudly."""
    import torch

    saved = ckpt.load(checkpoint)
    try:
        if saved.get("fake_quant") is not None:
            _start_rounding(state)
        _restore(state, saved, recipe, steps_per_epoch, float(saved.get("lr_scale", 1.0)))
        state.rounding_dropped = bool(saved.get("rounding_dropped", False))
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        fresh = _new_state(state.student, recipe, steps_per_epoch, seed)
        state.opt, state.sched, state.gen, state.epoch, state.lr_scale = fresh.opt, fresh.sched, fresh.gen, 0, 1.0
        torch.manual_seed(seed)
        warn(f"the training checkpoint {checkpoint} does not fit this model or recipe ({type(e).__name__}); "
             "training starts over from epoch 1")


def _start_rounding(state: _State) -> None:
    state.rounding, state.stop_rounding = fake_quant_activations(state.student)


def _stop_rounding(state: _State) -> None:
    if state.stop_rounding is not None:
        state.stop_rounding()
    state.rounding = state.stop_rounding = None


def _epoch(state: _State, data: "Dataset", recipe: Recipe, device: str, teacher: "nn.Module | None",
           distill: Distill | None, quant_aware_epochs: int, on_batch: Callable[[int, int], None] | None) -> dict:
    """One pass over the training split in a seeded order; returns the epoch's loss and accuracy."""
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    student, epoch = state.student, state.epoch
    student.train()
    if recipe.freeze_bn:  # small data: keep the pretrained running statistics (the affine parameters still train)
        for m in student.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    frozen = epoch < recipe.head_epochs
    head = head_params(student)
    for p in student.parameters():
        p.requires_grad_(not frozen)
    for p in head:
        p.requires_grad_(True)
    quant_aware = epoch >= recipe.epochs - quant_aware_epochs
    if quant_aware and state.rounding is None:
        _start_rounding(state)
    n = data.train_x.shape[0]
    steps = math.ceil(n / recipe.batch_size)
    perm = torch.randperm(n, generator=state.gen)
    world = distributed.world_size()  # distributed (#11): 1 in one process
    net = distributed.wrap(student, device)  # DDP when distributed, else the student itself
    loss_sum, correct, seen = 0.0, 0, 0
    for step in range(steps):
        idx = perm[step * recipe.batch_size:(step + 1) * recipe.batch_size]
        xb = _augment(data.train_x[idx], state.gen) if recipe.augment else data.train_x[idx]
        if world > 1:  # distributed (#11): the global batch drawn and augmented alike on every rank, then sharded
            if len(idx) < 2 * world:  # a last batch too small for 2 images a rank (BatchNorm): all ranks skip it
                state.sched.step()
                continue
            share = len(idx) / world  # the rank's loss is scaled so that DDP's gradient mean is the global batch's
            xb, idx = distributed.shard(xb), distributed.shard(idx)
            grad_scale = len(idx) / share
        x = data.normalize(xb).to(device).contiguous(memory_format=torch.channels_last)
        y = data.train_y[idx].to(device)
        out = net(x)
        loss = F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing)
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(x)
            T = distill.temperature
            kd = F.kl_div(F.log_softmax(out / T, 1), F.log_softmax(t_out / T, 1),
                          reduction="batchmean", log_target=True) * T * T
            loss = distill.alpha * kd + (1 - distill.alpha) * loss
            if state.attention is not None:  # the teacher's forward pass above filled its side of the hooks
                loss = loss + state.attention.loss()
        if not (distributed.all_finite(loss) if world > 1 else torch.isfinite(loss)):
            return {"loss": float("nan"), "train_acc_pct": 0.0, "seconds": time.perf_counter() - t0,
                    "quant_aware": quant_aware}
        state.opt.zero_grad(set_to_none=True)
        (loss * grad_scale if world > 1 else loss).backward()
        if recipe.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(student.parameters(), recipe.clip_grad_norm)
        state.opt.step()
        state.sched.step()
        loss_sum += loss.item() * len(idx)
        correct += (out.argmax(1) == y).sum().item()
        seen += len(idx)
        if on_batch:
            on_batch(step + 1, steps)
    if world > 1:  # distributed (#11): the whole epoch's loss and accuracy, so every rank decides alike
        loss_sum, correct, seen = distributed.all_sum(loss_sum, correct, seen)
    return {"loss": loss_sum / seen, "train_acc_pct": 100.0 * correct / seen, "seconds": time.perf_counter() - t0,
            "head_only": frozen, "quant_aware": quant_aware}


def recalibrate_bn(model: "nn.Module", data: "Dataset", images: int = 2048, batch_size: int = 256) -> None:
    """Re-estimate BatchNorm running statistics with an exact average over training images.

    torchvision's MobileNetV3 and EfficientNet use BN momentum 0.01, so after short training (or
    after pruning and fine-tuning) the running statistics still lag the weights and eval-mode
    accuracy suffers. One no-grad pass in train mode with a cumulative average fixes that.
    """
    import torch
    import torch.nn as nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    with torch.no_grad():
        x = data.train_x[:images]
        for i in range(0, len(x), batch_size):
            model(data.normalize(x[i:i + batch_size]))
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)


def _augment(x: "torch.Tensor", gen: "torch.Generator") -> "torch.Tensor":
    """Per-image random horizontal flip and a random shift of up to ±2 px (zero padding)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    pad = 2
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # [n, h]
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # [n, w]
    bidx = torch.arange(n).view(n, 1, 1)
    return xp.permute(0, 2, 3, 1)[bidx, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)


def evaluate(model: "nn.Module", data: "Dataset", batch_size: int = 500, *, images: "torch.Tensor | None" = None,
             labels: "torch.Tensor | None" = None) -> float:
    """Top-1 accuracy in percent of a torch model on the data set's test split, or on the uint8 ``images``."""
    import torch

    x, y = (data.test_x, data.test_y) if images is None else (images, labels)
    model.eval()
    correct = 0
    with torch.inference_mode():
        for xb, yb in data.batches(x, y, batch_size):
            correct += (model(xb).argmax(1) == yb).sum().item()
    return 100.0 * correct / max(1, len(y))
