"""Attention transfer for recovery fine-tuning: the pruned student learns where the unpruned teacher looks.

Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017): a feature map's spatial attention is the
mean over channels of its squared activations, flattened and L2-normalised. The student is pushed towards the
teacher's attention at the end of each resolution stage, with the paper's loss, ``beta/2 · Σ mean((a_s − a_t)²)``
(their ``beta`` is 1,000). It compares maps, not channels, so it needs no adapter layer for the channels pruning
took away, and pruning keeps every module's name, so the student's stages are found under the teacher's names.

Stages are the children of the network's ``features`` (torchvision's MobileNets and EfficientNets, and what
:mod:`compress.models` builds): the last child at each spatial size above 1×1, found by one forward pass. A network
without ``features`` gets no attention transfer (:func:`stage_names` returns []).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def stage_names(model: "nn.Module", example: "torch.Tensor") -> list[str]:
    """Names of the modules whose outputs are matched: the last child of ``model.features`` at each spatial size
    above 1×1, for inputs like ``example`` (a batch of one normalised image)."""
    import torch

    features = getattr(model, "features", None)
    if not isinstance(features, torch.nn.Sequential):
        return []
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [child.register_forward_hook(lambda _m, _i, out, name=f"features.{name}": sizes.__setitem__(
        name, tuple(out.shape[2:]) if isinstance(out, torch.Tensor) and out.dim() == 4 else ()))
        for name, child in features.named_children()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    last: dict[tuple[int, ...], str] = {}
    for name, size in sizes.items():  # in forward order: a later child at the same size replaces the earlier one
        if size and max(size) > 1:
            last[size] = name
    return list(last.values())


def attention_map(x: "torch.Tensor") -> "torch.Tensor":
    """The spatial attention of a feature map: mean over channels of x², flattened, L2-normalised per image."""
    import torch.nn.functional as F

    return F.normalize(x.float().pow(2).mean(1).flatten(1))


class Transfer:
    """Forward hooks on the same stages of the student and the teacher; :meth:`loss` after a forward pass of both.
    Use as a context manager: the hooks go when it ends."""

    def __init__(self, student: "nn.Module", teacher: "nn.Module", names: list[str], beta: float):
        self.beta, self.names = beta, names
        self.outputs: dict[str, dict[str, "torch.Tensor"]] = {"student": {}, "teacher": {}}
        self._hooks = [dict(net.named_modules())[name].register_forward_hook(
            lambda _m, _i, out, side=side, name=name: self.outputs[side].__setitem__(name, out))
            for side, net in (("student", student), ("teacher", teacher)) for name in names]

    def loss(self) -> "torch.Tensor":
        s, t = self.outputs["student"], self.outputs["teacher"]
        return self.beta / 2 * sum((attention_map(s[n]) - attention_map(t[n])).pow(2).mean() for n in self.names)

    def __enter__(self) -> "Transfer":
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self.outputs = {"student": {}, "teacher": {}}
