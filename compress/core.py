"""The words every module shares: the two kinds of model, the run context, the Stage protocol, file helpers.

Nothing here imports another compress module except :mod:`compress.errors`, so any module may import it.

* A model is either a torch ``nn.Module`` or an ONNX file on disk, :class:`OnnxModel`. :func:`kind_of` tells which.
* A stage is a frozen, keyword-only dataclass that declares its ``name``, ``title``, the kind it ``accepts`` and the
  kind it ``produces``, and is called as ``stage(model, ctx) -> new model``. It never mutates its input.
* :class:`Context` is what a stage may use: the data, the run folder, the teacher, and the progress hooks.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from compress.errors import CompressError

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort
    import torch.nn as nn

    from compress.data import Dataset
    from compress.energy import EnergyMeter
    from compress.measure import MeasureConfig

ModelKind = Literal["none", "torch", "onnx"]
KIND_WORDS = {"torch": "a torch model", "onnx": "an ONNX model", "none": "no input model"}


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX model file on disk: the second kind of model a stage can take or return."""

    path: Path
    # Built for another CPU than this one (an arm64 INT8 model measured on x86): run it with basic graph
    # optimisations only, so that ONNX Runtime's fused host kernels (which can saturate on another target's
    # S8S8 recipe) do not decide its accuracy here.
    foreign: bool = False

    def session(self, threads: int = 1) -> "ort.InferenceSession":
        return session(self.path, threads, basic=self.foreign)


def kind_of(model: Any) -> ModelKind:
    if model is None:
        return "none"
    return "onnx" if isinstance(model, OnnxModel) else "torch"


class Stage(Protocol):
    """What the pipeline needs of a stage. ``dataclasses.asdict(stage)`` goes into the report as its config."""

    name: str  # also the run-folder subfolder of its artifact and its field in RunConfig
    title: str  # what the terminal says while it runs
    accepts: ModelKind
    produces: ModelKind

    def check(self) -> None: ...

    def __call__(self, model: Any, ctx: "Context") -> Any: ...


def session(path: Path, threads: int = 1, *, basic: bool = False) -> "ort.InferenceSession":
    """An ORT CPU session with the thread count pinned (intra-op ``threads``, inter-op 1); all graph
    optimisations, or only the basic ones (no fused, host-specific kernels)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if basic
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        raise CompressError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:160]}") from None


def check_onnx(path: Path) -> None:
    """``onnx.checker`` with a one-line error: every ONNX input passes it before use."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # checker raises ValidationError, DecodeError, OSError, ...
        raise CompressError(f"{path} is not a valid ONNX model ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'}): re-export it") from None


def run_onnx(sess: "ort.InferenceSession", x: "np.ndarray", batch_size: int = 500) -> "np.ndarray":
    """Logits of ``x`` through an ORT session, ``batch_size`` images at a time."""
    import numpy as np

    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where baselines and downloaded data sets are cached (``COMPRESS_CACHE``, default ``~/.cache/compress``)."""
    return Path(os.environ.get("COMPRESS_CACHE", Path.home() / ".cache" / "compress"))


@dataclass(eq=False)
class Context:
    """What stages may use: the data, the run folder, the teacher, and the progress hooks."""

    data: "Dataset"
    run_dir: Path
    seed: int
    device: str
    measure: "MeasureConfig"
    meter: "EnergyMeter"
    teacher: "nn.Module | None" = None
    notes: dict[str, dict] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    progress: Any = None  # compress.console.Progress, or None for silence
    given_model: "nn.Module | None" = None  # the caller's own network (Python API), instead of a registry name
    given_pretrained: bool = False  # whether its weights are trained (transfer learning) or to be trained from scratch
    last_torch: "nn.Module | None" = None  # the last torch model of the run so far (LiteRT converts it)

    @property
    def threads(self) -> int:
        return self.measure.threads

    def artifact(self, step: str, filename: str) -> Path:
        d = self.run_dir / step
        d.mkdir(parents=True, exist_ok=True)
        return d / filename

    def checkpoint(self, step: str) -> Path:
        """Per-epoch training state of ``step``, for resuming an interrupted training."""
        return self.artifact(step, "train_state.pt")

    def note(self, step: str, **values: Any) -> None:
        """Free-form details of a step, kept in the report's ``notes``."""
        self.notes.setdefault(step, {}).update(values)

    def warn(self, step: str, message: str) -> None:
        """A loud warning: shown in the terminal (even when piped) and kept in the step's ``warnings``."""
        self.warnings.setdefault(step, []).append(message)
        if self.progress:
            self.progress.warn(step, message)

    def epoch_done(self, info: dict) -> None:
        if self.progress:
            self.progress.epoch(info)

    def batch_done(self, done: int, total: int) -> None:
        if self.progress:
            self.progress.tick("train", done, total)

    def tick(self, task: str, done: int, total: int) -> None:
        if self.progress:
            self.progress.tick(task, done, total)
