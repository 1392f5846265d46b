"""When training has gone wrong: the rules the training loop checks after every epoch before it rolls back
(:func:`compress.train.fit`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compress.data import Dataset


def diverged(loss: float, history: list[float]) -> str:
    """Why this epoch's loss says training diverged, or "" when it did not: a non-finite loss, or one three times
    the best epoch's. (A rule on the first epoch's loss against chance level misfired: EfficientNet-B0 and timm's
    MobileNetV4 start from scratch at 3-6× chance and then learn.)"""
    if not math.isfinite(loss):
        return f"loss {loss}"
    if history and loss > 3 * min(history):
        return f"loss rose from {min(history):.3g} to {loss:.3g}"
    return ""


def majority_pct(data: "Dataset") -> float:
    """The training accuracy of always answering the most common class, %."""
    import torch

    return 100.0 * float(torch.bincount(data.train_y).max()) / max(1, int(data.train_y.shape[0]))


def collapsed(acc_pct: float, history: list[float], chance_pct: float) -> str:
    """Why this epoch's training accuracy says training collapsed, or "" when it did not: it fell back to chance
    (within a tenth of the way from always answering the most common class to the best epoch's) after an epoch at
    least 10 points above it. No loss blows up then. EfficientNet-Lite0's ImageNet weights, pruned 30% and
    recovered on 500 Fashion-MNIST images at 0.106 peak LR, went from 39.6% training accuracy (augmented) to 21.8%
    and stayed at chance (20%) with finite losses (benchmarks/results/recovery_small_data.md)."""
    top = max(history, default=0.0)
    if top >= chance_pct + 10 and acc_pct <= chance_pct + 0.1 * (top - chance_pct):
        return f"training accuracy fell from {top:.1f}% to {acc_pct:.1f}%, chance level"
    return ""
