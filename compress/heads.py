"""Classifier heads: find the layer that produces the logits, fit it to a class count, and load a
user's state_dict whose classifier was trained for another class count (the rest loads, the head stays fresh).

Every builder in :mod:`compress.models` and :mod:`compress.model_specs` goes through these, so a head is
found and replaced one way whatever made the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch.nn as nn


def head_layer(model: "nn.Module") -> "nn.Module | None":
    """The layer that produces the class logits: never pruned, and trained alone in head-only epochs.

    timm models: ``get_classifier()``; torchvision's MobileNets/EfficientNets: ``classifier[-1]``; any
    other model: its last registered ``nn.Linear``. None when the model has no such layer.
    """
    import torch.nn as nn

    def last_layer(m: "nn.Module") -> "nn.Module":
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            return m
        layers = [x for x in m.modules() if isinstance(x, (nn.Linear, nn.Conv2d))]
        return layers[-1] if layers else m

    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return last_layer(head)
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        return last_layer(head)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def head_params(model: "nn.Module") -> list:
    """The parameters of :func:`head_layer` (none when the model has no such layer)."""
    last = head_layer(model)
    return list(last.parameters()) if last is not None else []


def head_note(num_classes: int) -> str:
    return ("ImageNet classifier kept (1000 classes)" if num_classes == 1000
            else f"classifier replaced for {num_classes} classes")


def replace_head(model: "nn.Module", num_classes: int) -> "nn.Module":
    """Swap the last Linear of ``model.classifier`` for a fresh one with ``num_classes`` outputs
    (ImageNet's own is kept for 1000 classes)."""
    import torch.nn as nn

    last = model.classifier[-1]
    if last.out_features != num_classes:
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


def classifier_safe(model: "nn.Module") -> "nn.Module":
    """torchvision's classifiers use ``Dropout(inplace=True)`` after an activation, which breaks
    backward once activations are swapped or distillation reuses outputs; use out-of-place dropout."""
    import torch.nn as nn

    for i, m in enumerate(model.classifier):
        if isinstance(m, nn.Dropout) and m.inplace:
            model.classifier[i] = nn.Dropout(p=m.p, inplace=False)
    return model


def set_submodule(model: "nn.Module", name: str, new: "nn.Module") -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def fit_head(model: "nn.Module", num_classes: int, spec: str, *, factory_took_classes: bool) -> str:
    """Replace the classifier (``head_layer``) when it is an ``nn.Linear`` with another class count.
    A head that is not an ``nn.Linear`` is trusted only when the factory was given ``num_classes``."""
    import torch.nn as nn

    head = head_layer(model)
    if isinstance(head, nn.Linear):
        if head.out_features == num_classes:
            return ""
        name = next(n for n, m in model.named_modules() if m is head)
        set_submodule(model, name, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
        return f", classifier {name} replaced for {num_classes} classes"
    if factory_took_classes and getattr(head, "out_channels", num_classes) == num_classes:
        return ""
    raise CompressError(f"the model from {spec} has no nn.Linear classifier to resize for {num_classes} classes: "
                        "give the factory a num_classes parameter")


NAMED_WEIGHTS = ("auto", "imagenet", "none")


def user_weights_path(weights: str) -> Path:
    """``--weights PATH`` as a file that exists, or the one-line error (checked before any work starts)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CompressError(f"weights file {str(path)!r} not found: give --weights {', '.join(NAMED_WEIGHTS)}, "
                            "or a .pt/.pth/.safetensors path")
    return path


def read_user_weights(weights: str) -> tuple[Path, dict]:
    """``--weights PATH`` read safely (``weights_only``, or safetensors) as a dict, or the one-line error. The
    pipeline calls it before any work too, so that a truncated, foreign or unsafe file fails in seconds."""
    path = user_weights_path(weights)
    from compress import checkpoint

    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise CompressError(f"cannot read {path} ({type(e).__name__}: {str(e)[:100]}): "
                                "the file is not a safetensors state_dict") from None
    else:
        state = checkpoint.load(path)
    if not isinstance(state, dict):
        raise CompressError(f"{path} is not a state_dict checkpoint: save one with torch.save(model.state_dict())")
    return path, state


def load_user_weights(model: "nn.Module", weights: str, num_classes: int) -> str:
    """Load ``--weights PATH`` into ``model``; returns the init description.

    A compress checkpoint (pruned or not) is restored exactly. A plain state_dict (``torch.save(
    model.state_dict())`` or a ``.safetensors`` file) whose classifier has another class count loads
    all other tensors and keeps the fresh classifier; any other mismatch is an error.
    """
    from compress import checkpoint

    path, record = read_user_weights(weights)  # read once: a compress checkpoint is restored from it as it is
    dropped: list[str] = []
    if "state_dict" not in record:  # a plain state_dict: a classifier for another class count stays fresh
        state = record
        head = head_layer(model)
        prefix = next((n + "." for n, m in model.named_modules() if m is head), None) if head is not None else None
        ours = model.state_dict()
        dropped = [k for k, v in state.items() if prefix and k.startswith(prefix) and k in ours
                   and getattr(v, "shape", None) != ours[k].shape]
        record = {"state_dict": {**state, **{k: ours[k] for k in dropped}}}
    elif not isinstance(record["state_dict"], dict):
        raise CompressError(f"{path} is not a state_dict checkpoint: save one with torch.save(model.state_dict())")
    try:
        checkpoint.restore_model(record, model)
    except CompressError as e:
        raise CompressError(f"{path} does not fit this model: {e}") from None
    if dropped:
        return f"loaded from {path}, classifier replaced for {num_classes} classes"
    return f"loaded from {path}"
