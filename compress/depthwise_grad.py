"""A faster weight gradient for depthwise convolutions whose kernel is larger than their input, used while training.

At 32×32 input, MobileNetV3 and EfficientNet run their 5×5 depthwise convolutions on 4×4, 2×2 and 1×1 feature maps.
On CPU, PyTorch's oneDNN weight gradient for that shape is pathological: measured on an AMD EPYC family 25 (Zen 3,
AVX2, torch 2.14.1), batch 256, 240 channels, 2×2 input, 5×5 kernel: forward 0.18 ms, input gradient 0.24 ms,
weight gradient 22 ms, where summing the k×k shifted products directly takes 3.6 ms. In MobileNetV3-small's
training step at 32 px, convolution backward was 80% of the time. Where the input is at least as large as the
kernel, oneDNN is faster (e.g. 3×3 on 16×16: 0.22 ms against 3.5 ms), so only convolutions whose input is smaller
than their kernel take this path; forward and input gradient stay oneDNN's. ``benchmarks/train_step.py`` measures
a whole training step with and without it.
"""
from __future__ import annotations

import contextlib
import functools
import types
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch
    from torch import nn


def weight_grad(grad_out: "torch.Tensor", x: "torch.Tensor", kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> "torch.Tensor":
    """The weight gradient of a depthwise (``groups == channels``, dilation 1) convolution, one kernel tap at a time.

    ``grad_w[c, 0, i, j] = Σ_{n,h,w} grad_out[n, c, h, w] · x_padded[n, c, h·s + i, w·s + j]``, where each tap
    sums only over the outputs whose input lies inside the image (the padding is zeros): on a 1×1 input a 5×5
    kernel has one such tap, on 2×2 nine, each over fewer outputs, so nothing is padded or multiplied by zero.
    """
    import torch

    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = grad_out.shape[-2:]
    rows, cols = _taps(x.shape[-2], ho, kh, sh, ph), _taps(x.shape[-1], wo, kw, sw, pw)
    grad = torch.zeros(x.shape[1], 1, kh, kw, dtype=grad_out.dtype, device=grad_out.device)
    for i, r in rows:
        for j, c in cols:
            tap = x[:, :, r.start * sh + i - ph::sh, c.start * sw + j - pw::sw][:, :, :len(r), :len(c)]
            grad[:, 0, i, j] = (grad_out[:, :, r.start:r.stop, c.start:c.stop] * tap).sum((0, 2, 3))
    return grad


def _taps(size_in: int, size_out: int, k: int, stride: int, pad: int) -> list[tuple[int, range]]:
    """Along one axis, each kernel tap that reaches inside the input, with the outputs for which it does:
    output ``o`` reads input ``o·stride + tap - pad``."""
    taps = []
    for tap in range(k):
        first = max(0, -((tap - pad) // stride))  # ceil((pad - tap) / stride)
        last = min(size_out - 1, (size_in - 1 + pad - tap) // stride)
        if last >= first:
            taps.append((tap, range(first, last + 1)))
    return taps


@functools.cache
def _function() -> type:
    import torch

    class SmallInputDepthwise(torch.autograd.Function):
        """``F.conv2d`` for a depthwise convolution, with :func:`weight_grad` as its weight gradient."""

        @staticmethod
        def forward(ctx, x, weight, bias, stride, padding):  # noqa: ANN001, ANN205 (torch's autograd signature)
            ctx.save_for_backward(x, weight)
            ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
            return torch.nn.functional.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])

        @staticmethod
        def backward(ctx, grad_out):  # noqa: ANN001, ANN205
            x, weight = ctx.saved_tensors
            grad_out = grad_out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
                memory_format=torch.channels_last) else grad_out.contiguous()
            grad_x = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = torch.ops.aten.convolution_backward(
                    grad_out, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), x.shape[1],
                    (True, False, False))[0]
            if ctx.needs_input_grad[1]:
                grad_w = weight_grad(grad_out, x, tuple(weight.shape[-2:]), ctx.stride, ctx.padding)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad_out.sum((0, 2, 3))
            return grad_x, grad_w, grad_b, None, None

    return SmallInputDepthwise


def _eligible(m: "nn.Module") -> bool:
    from torch import nn

    return (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.dilation == (1, 1)
            and m.padding_mode == "zeros" and isinstance(m.padding, tuple))


def _forward(m: "nn.Conv2d", x: "torch.Tensor") -> "torch.Tensor":
    kh, kw = m.kernel_size
    if x.dim() == 4 and (x.shape[-2] < kh or x.shape[-1] < kw) and m.weight.requires_grad:
        return _function().apply(x, m.weight, m.bias, m.stride, m.padding)
    return m._conv_forward(x, m.weight, m.bias)


@contextlib.contextmanager
def fast_small_input_depthwise(model: "nn.Module") -> Iterator["nn.Module"]:
    """Within the block, ``model``'s depthwise convolutions take :func:`weight_grad` when the input is smaller than
    the kernel; the module types, parameters and state_dict are unchanged, and so is every result but rounding."""
    patched = []
    for m in model.modules():
        if not _eligible(m):
            continue
        m.forward = types.MethodType(_forward, m)  # a bound method: a deepcopy of the model binds its own copy
        patched.append(m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward
