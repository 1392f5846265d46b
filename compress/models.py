"""Model registry: ``register_model``, ``create_model``, ``list_models``.

The set of models is open, so it is a registry; a duplicate name is an error, as in torchvision.
``mobilenet_v3`` is an alias for ``mobilenet_v3_small``: on a 2-core CPU or a Raspberry Pi it is
the variant that trains in minutes and runs in well under a millisecond at 32×32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch.nn as nn

ALIASES = {"mobilenet_v3": "mobilenet_v3_small"}
_REGISTRY: dict[str, Callable[..., "nn.Module"]] = {}
_WEIGHTS: dict[str, str] = {}  # model name → torchvision weights enum name (ImageNet), where one exists


def register_model(name: str, *, imagenet_weights: str | None = None):
    """Register ``fn(num_classes, imagenet: bool) -> nn.Module`` under ``name``."""

    def deco(fn):
        if name in _REGISTRY or name in ALIASES:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        if imagenet_weights:
            _WEIGHTS[name] = imagenet_weights
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def resolve_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise CompressError(f"unknown model {name!r}: choose one of {', '.join(list_models() + sorted(ALIASES))}")
    return name


def weights_file(name: str) -> Path | None:
    """Where torch hub caches this model's ImageNet weights (whether or not the file is there)."""
    import torchvision.models as tvm
    from torch.hub import get_dir

    enum_name = _WEIGHTS.get(resolve_name(name))
    if enum_name is None:
        return None
    url = tvm.get_weight(enum_name).url
    return Path(get_dir()) / "checkpoints" / os.path.basename(url)


def create_model(name: str, *, num_classes: int, weights: str = "none") -> tuple["nn.Module", str]:
    """Build a model with a ``num_classes`` head. Returns ``(model, how the weights were initialised)``.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (torchvision's download and cache code path,
    then the classifier is replaced), ``"auto"`` (ImageNet if the file is already in the torch hub
    cache, else random: never touches the network) or a path to a state_dict saved by compress.

    >>> model, how = create_model("tiny_mobilenet_v3", num_classes=10)
    """
    name = resolve_name(name)
    builder = _REGISTRY[name]
    if weights == "auto":
        f = weights_file(name)
        weights = "imagenet" if f is not None and f.exists() else "none"
    if weights == "none":
        return builder(num_classes, imagenet=False), "random init (trained from scratch)"
    if weights == "imagenet":
        if name not in _WEIGHTS:
            raise CompressError(f"{name} has no ImageNet weights: use --weights none")
        try:
            model = builder(num_classes, imagenet=True)
        except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; a bad file is a RuntimeError
            raise CompressError(
                f"could not load ImageNet weights for {name} ({type(e).__name__}: {str(e)[:120]}): "
                f"download {_weights_url(name)} to {weights_file(name)}, or use --weights none") from None
        return model, f"ImageNet ({_WEIGHTS[name]}), classifier replaced for {num_classes} classes"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CompressError(f"weights file {str(path)!r} not found: give --weights imagenet, none, or a .pt path")
    model = builder(num_classes, imagenet=False)
    from compress.checkpoint import load_state_dict

    load_state_dict(path, model)
    return model, f"loaded from {path}"


def _weights_url(name: str) -> str:
    import torchvision.models as tvm

    return tvm.get_weight(_WEIGHTS[name]).url


def _replace_head(model: "nn.Module", num_classes: int) -> "nn.Module":
    """Swap the last Linear of ``model.classifier`` for a fresh one with ``num_classes`` outputs."""
    import torch.nn as nn

    last = model.classifier[-1]
    model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


def _classifier_safe(model: "nn.Module") -> "nn.Module":
    """torchvision's classifiers use ``Dropout(inplace=True)`` after an activation, which breaks
    backward once activations are swapped or distillation reuses outputs; use out-of-place dropout."""
    import torch.nn as nn

    for i, m in enumerate(model.classifier):
        if isinstance(m, nn.Dropout) and m.inplace:
            model.classifier[i] = nn.Dropout(p=m.p, inplace=False)
    return model


def _torchvision(fn_name: str, weights_enum: str):
    def build(num_classes: int, imagenet: bool) -> "nn.Module":
        import torchvision.models as tvm

        fn = getattr(tvm, fn_name)
        if imagenet:
            model = _replace_head(fn(weights=tvm.get_weight(weights_enum)), num_classes)
        else:
            model = fn(weights=None, num_classes=num_classes)
        return _classifier_safe(model)

    return build


for _name, _enum in [
    ("mobilenet_v3_small", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
    ("mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V1"),
    ("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1"),
    ("efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1"),
]:
    register_model(_name, imagenet_weights=_enum)(_torchvision(_name, _enum))


@register_model("tiny_mobilenet_v3")
def _tiny_mobilenet_v3(num_classes: int, imagenet: bool) -> "nn.Module":
    """MobileNetV3-small at width 0.5 for tests: the same SE blocks, hardswish and depthwise convs,
    a tenth of the compute."""
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    setting, last_channel = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    return _classifier_safe(MobileNetV3(setting, last_channel // 2, num_classes=num_classes))
