"""The main job's pruned network trained from scratch: how far can its shape get on its own? Issue #12's ceiling.

``build`` returns MobileNetV3-small with the channels the main job's prune stage left with uniform allocation
(``Prune(ratio=0.5, allocation="uniform")``, the default until the sensitivity scan: L2 importance, ``round_to`` 8,
the classifier's output layer kept), freshly initialised as torchvision initialises it. Trained with the
baseline's recipe, it shows what that shape reaches without the baseline's weights, against
which the main job's recovery (the pruned baseline, fine-tuned with distillation) can be read:

    compress run benchmarks/pruned_shape.py:build --epochs 25 --prune 0     # the main job's data, size and recipe

Channel counts do not depend on the input size for these networks; the pruner traces at 32 px.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn


def build(num_classes: int = 10, ratio: float = 0.5) -> "nn.Module":
    import torch
    import torch.nn as nn

    from compress.models import create_model
    from compress.prune import Prune

    torch.manual_seed(0)
    model, _ = create_model("mobilenet_v3_small", num_classes=num_classes, weights="none")
    Prune(ratio=ratio, allocation="uniform").pruner(model.eval(), input_size=32).step()
    for m in model.modules():  # torchvision's MobileNetV3 initialisation, at the pruned widths
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model
