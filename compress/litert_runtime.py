"""The LiteRT side of compress's LiteRT output: loading a ``.tflite`` in the interpreter, what it computes in, and
the gate an INT8 file must pass (:mod:`compress.litert` converts and verifies with these)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from compress.errors import CompressError

if TYPE_CHECKING:
    import numpy as np

    from compress.data import Dataset

MAX_DROP_PT = 1.0  # the INT8 top-1 budget against the FP32 .tflite, in percentage points
MIN_AGREEMENT_PCT = 97.0  # the fixed agreement floor with ONNX INT8 (compress.litert explains the default)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else "no message"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the interpreter's C++ line ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") on fd 2."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedding host)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TfliteModel:
    """A ``.tflite`` classifier in the LiteRT interpreter, batch 1, taking and returning what torch does.

    ``logits(x)`` takes normalised float32 NCHW images and returns float32 logits: it transposes to NHWC, and
    for an INT8 file quantises the input and dequantises the output with the file's own scales.
    """

    def __init__(self, path: Path, threads: int = 1, *, xnnpack: bool = True):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        # xnnpack=False: the interpreter's reference kernels, to show what the default delegate is worth
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                           experimental_op_resolver_type=resolver)
            with _quiet_stderr():
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise CompressError(f"the LiteRT interpreter cannot load {path}: {_first_line(e)}") from None
        self.path = Path(path)
        (self.input,) = self.interpreter.get_input_details()
        (self.output,) = self.interpreter.get_output_details()

    def quantize_input(self, x_nhwc: "np.ndarray") -> "np.ndarray":
        import numpy as np

        dtype = self.input["dtype"]
        if dtype == np.float32:
            return np.ascontiguousarray(x_nhwc, dtype=np.float32)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x_nhwc / scale) + zero, info.min, info.max).astype(dtype)

    def run(self, x: "np.ndarray") -> "np.ndarray":
        """One invocation on an input already in the file's layout and type; the raw output."""
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def logits(self, x_nchw: "np.ndarray") -> "np.ndarray":
        import numpy as np

        out = []
        for image in x_nchw:
            raw = self.run(self.quantize_input(image.transpose(1, 2, 0)[None]))
            if raw.dtype != np.float32:
                scale, zero = self.output["quantization"]
                raw = (raw.astype(np.float32) - zero) * scale
            out.append(raw[0])
        return np.stack(out)


def op_census(path: Path) -> dict:
    """How the file computes: its ops, the ops whose results are float32 (none in a full-integer model), and into
    how many XNNPACK partitions the interpreter splits it (1: XNNPACK runs every op; more: the ops between them,
    such as INT8 HARD_SWISH in ai-edge-litert 2.3.0, run on the interpreter's slower reference kernels)."""
    import numpy as np

    nodes = TfliteModel(path).interpreter._get_ops_details()  # the only way the interpreter lists ops and types
    ops = [op for op in nodes if op["op_name"] != "DELEGATE"]
    floats = [op for op in ops if any(t == np.float32 for t in op.get("result_types", []))]
    return {"ops": len(ops), "float_ops": len(floats), "float_op_types": sorted({op["op_name"] for op in floats}),
            "op_types": sorted({op["op_name"] for op in ops}),
            "xnnpack_partitions": sum(1 for op in nodes if op["op_name"] == "DELEGATE")}


def _predictions(model: TfliteModel, data: "Dataset", tick: Callable[[int, int], None] | None = None,
                 batch: int = 500) -> "np.ndarray":
    import numpy as np

    preds = []
    for i in range(0, len(data.test_x), batch):
        preds.append(model.logits(data.normalize(data.test_x[i:i + batch]).numpy()).argmax(1))
        if tick:
            tick(min(i + batch, len(data.test_x)), len(data.test_x))
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def gate(*, fp32_top1_pct: float, int8_top1_pct: float, float_ops: int, agreement_pct: float | None,
         max_drop_pt: float = MAX_DROP_PT, min_agreement_pct: float = MIN_AGREEMENT_PCT) -> tuple[bool, str]:
    """Whether the INT8 file ships, and why, in one sentence."""
    drop = fp32_top1_pct - int8_top1_pct
    if float_ops:
        return False, (f"model_int8.tflite not shipped: {float_ops} op(s) still compute in float32, so it is not "
                       "a full-integer model")
    if drop > max_drop_pt:
        return False, (f"model_int8.tflite not shipped: its top-1 is {drop:.2f} points below model.tflite's "
                       f"({int8_top1_pct:.2f} % vs {fp32_top1_pct:.2f} %), over the {max_drop_pt:g}-point budget")
    if agreement_pct is not None and agreement_pct < min_agreement_pct:
        return False, (f"model_int8.tflite not shipped: it agrees with the ONNX INT8 model on {agreement_pct:.1f} % "
                       f"of test images, under the {min_agreement_pct:.1f} % it needs")
    agree = f" and agrees with the ONNX INT8 model on {agreement_pct:.1f} % of test images" \
        if agreement_pct is not None else " (no ONNX INT8 predictions to compare with)"
    return True, (f"model_int8.tflite shipped: top-1 {int8_top1_pct:.2f} % vs {fp32_top1_pct:.2f} % FP32, within "
                  f"the {max_drop_pt:g}-point budget,{agree}")
