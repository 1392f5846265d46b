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
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CompressError(f"{path} is not a state_dict checkpoint: save one with torch.save(model.state_dict())")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:150]
        raise CompressError(f"{path} does not fit this model ({first}): it was saved for another model, "
                            "class count or pruning; use the matching --model / data set") from None
