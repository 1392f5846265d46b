"""Safe, atomic checkpoint files.

Loading always uses ``torch.load(weights_only=True)``: a pickle that would run code is refused,
never executed. Saving writes to a temporary name and renames, so a killed run never leaves a
file that looks complete but is not.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch.nn as nn


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared like any file
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(obj: Any, path: Path) -> Path:
    """Serialise through memory: torch names the zip's inner folder after the file, so saving to the
    temporary name directly would make identical weights hash differently."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, lambda p: p.write_bytes(buf.getvalue()))


def load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors a user can act on."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CompressError(f"refusing to load {path}: it holds Python objects that would run code when "
                            f"unpickled ({str(e).splitlines()[0][:100]}); only load checkpoints you trust "
                            "after converting them to a plain state_dict") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CompressError(f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:100]}): "
                            "the file is truncated or not a torch checkpoint; delete it and rerun") from None


def load_state_dict(path: Path, model: "nn.Module") -> None:
    """Load a state_dict file into ``model``; a checkpoint of another model is a clear error."""
    state = load(path)
    record = state if isinstance(state, dict) and "state_dict" in state else {"state_dict": state}
    if not isinstance(record["state_dict"], dict):
        raise CompressError(f"{path} is not a state_dict checkpoint: save one with torch.save(model.state_dict())")
    try:
        restore_model(record, model)
    except CompressError as e:
        raise CompressError(f"{path} does not fit this model: {e}") from None


# Pruned models have other channel counts than the architecture their builder makes. Instead of
# pickling modules (unsafe to load), a model artifact stores plain integers describing each resized
# layer next to its state_dict; loading rebuilds the architecture and resizes those layers.
SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features")


def model_record(model: "nn.Module") -> dict:
    """``{"state_dict": ..., "structure": {module: {attr: int}}}``, loadable with ``weights_only=True``."""
    structure = {}
    for name, m in model.named_modules():
        attrs = {a: getattr(m, a) for a in SHAPE_ATTRS if isinstance(getattr(m, a, None), int)}
        if attrs:
            structure[name] = attrs
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return {"state_dict": state, "structure": structure}


def restore_model(record: dict, model: "nn.Module") -> "nn.Module":
    """Resize ``model``'s layers to ``record['structure']`` and load its weights (strictly)."""
    import torch
    import torch.nn as nn

    state = record["state_dict"]
    for name, attrs in record.get("structure", {}).items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise CompressError(f"checkpoint layer {name!r} does not exist in this model: it was saved for another "
                                "model; use the matching --model") from None
        for a, v in attrs.items():
            setattr(m, a, v)
        for pname, p in list(m.named_parameters(recurse=False)):
            key = f"{name}.{pname}" if name else pname
            if key in state and state[key].shape != p.shape:
                m._parameters[pname] = nn.Parameter(torch.empty_like(state[key]))
        for bname, b in list(m.named_buffers(recurse=False)):
            key = f"{name}.{bname}" if name else bname
            if key in state and state[key].shape != b.shape:
                m._buffers[bname] = torch.empty_like(state[key])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CompressError(f"checkpoint does not fit this model ({str(e).splitlines()[0][:150]}): it was saved "
                            "for another model or class count") from None
    return model.eval()
