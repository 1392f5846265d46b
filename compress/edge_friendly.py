"""The edge-friendly swap: quantization-friendly activations, optionally without squeeze-and-excitation.

Hardswish and SiLU have no fused INT8 kernel in ONNX Runtime's CPU provider: each becomes
HardSigmoid/Sigmoid + Mul wrapped in Q/DQ pairs, and on MobileNetV3-small that was about 40% of INT8
time here. ReLU fuses into the INT8 convolution. EfficientNet-Lite (Google, 2020) and TensorFlow's
"minimalistic" MobileNetV3 make the same trade: ReLU6/ReLU instead of swish/hardswish, and no SE.
Accuracy falls to about chance right after the swap; the fine-tune stage that follows distils it back
from the baseline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.core import Context


@dataclass(frozen=True, kw_only=True)
class EdgeFriendly:
    """Swap hardswish/SiLU for ReLU (and optionally drop the SE blocks).

    >>> friendly = EdgeFriendly(remove_se=True)(model, ctx)  # doctest: +SKIP
    """

    activation: str = "relu"  # relu | relu6
    remove_se: bool = False  # also replace squeeze-and-excitation blocks by identity

    name = "edge_friendly"
    title = "edge-friendly swap"
    accepts = "torch"
    produces = "torch"

    def check(self) -> None:
        if self.activation not in ("relu", "relu6"):
            raise CompressError(f"unknown edge-friendly activation {self.activation!r}: use relu or relu6")

    def __call__(self, model: "nn.Module", ctx: "Context") -> "nn.Module":
        import torch.nn as nn
        from torchvision.ops.misc import SqueezeExcitation

        self.check()
        model = copy.deepcopy(model)
        swapped = removed = 0

        def new_act() -> nn.Module:
            return nn.ReLU() if self.activation == "relu" else nn.ReLU6()

        def walk(parent: nn.Module) -> None:
            nonlocal swapped, removed
            for name, child in parent.named_children():
                if self.remove_se and isinstance(child, SqueezeExcitation):
                    setattr(parent, name, nn.Identity())
                    removed += 1
                elif isinstance(child, (nn.Hardswish, nn.SiLU)):
                    setattr(parent, name, new_act())
                    swapped += 1
                else:
                    walk(child)

        walk(model)
        ctx.note(self.name, activations_swapped=swapped, se_blocks_removed=removed)
        return model.eval()
