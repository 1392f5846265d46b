"""Quantization-aware training: round the activations the INT8 model will round, with straight-through gradients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch.nn as nn


def fake_quant_activations(model: "nn.Module") -> tuple["nn.ModuleList", Callable[[], None]]:
    """Round the activations ONNX Runtime's INT8 model will round, until the returned remover is called.

    Quantization-aware recovery: per-tensor asymmetric uint8 with moving-average min/max ranges
    (what ``Quantize`` calibrates), applied to the outputs of BatchNorm (a conv's output once BN is
    folded), activations, biased convs and linears (squeeze-and-excitation, classifier), pooling,
    the SE multiply and residual blocks; gradients pass straight through the rounding. Weights stay
    float: per-channel INT8 weights cost under 0.1 point here, activations the rest. The model's
    parameters are untouched, so a plain FP32 export follows and ``Quantize`` calibrates as usual.
    Returns the rounding modules (their ``state_dict`` holds the observed ranges, for checkpoints) and
    the function that removes the hooks.
    """
    import torch
    import torch.nn as nn
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
    from torchvision.ops.misc import SqueezeExcitation

    plain = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid,
             nn.Linear, nn.AdaptiveAvgPool2d, SqueezeExcitation)
    handles, rounding = [], nn.ModuleList()
    for module in model.modules():
        residual = getattr(module, "use_res_connect", False)  # torchvision's InvertedResidual: x + block(x)
        biased_conv = isinstance(module, nn.Conv2d) and module.bias is not None  # no BN after it
        if isinstance(module, plain) or residual or biased_conv:
            fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                              qscheme=torch.per_tensor_affine)
            rounding.append(fq)
            handles.append(module.register_forward_hook(lambda _m, _i, out, fq=fq: fq(out)))

    param = next(model.parameters(), None)
    rounding.to(param.device if param is not None else "cpu")  # the observers' ranges live beside the activations

    def remove() -> None:
        for handle in handles:
            handle.remove()
    return rounding, remove
