"""ONNX export at a pinned opset, checked by ``onnx.checker`` and by parity with torch on real images."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from compress.checkpoint import atomic_write
from compress.core import OnnxModel, check_onnx, run_onnx, session
from compress.errors import CompressError

if TYPE_CHECKING:
    import torch.nn as nn

    from compress.core import Context

OPSET = 17  # supported by onnxruntime ≥ 1.12, onnxruntime-web and ORT Mobile; QDQ per-channel needs ≥ 13


@dataclass(frozen=True, kw_only=True)
class Export:
    """Export to ONNX (input ``input`` ``[N,3,H,W]``, N dynamic; output ``logits``) and verify it.

    The parity check runs ONNX Runtime and torch on ``parity_images`` real test images; a max
    absolute logit difference above ``atol × max(1, largest |logit|)`` stops the run (the tolerance
    scales with the logits, since float32 rounding does).
    """

    opset: int = OPSET
    atol: float = 1e-3  # FP32 kernels differ in summation order; measured diffs are ~1e-5
    parity_images: int = 256

    name = "export"
    title = "exporting to ONNX"
    accepts = "torch"
    produces = "onnx"

    def check(self) -> None:
        if not 13 <= self.opset <= 21:
            raise CompressError(f"opset {self.opset} is not supported: use 13..21 (default {OPSET})")
        if not self.atol > 0 or self.parity_images < 1:
            raise CompressError("export atol must be positive and parity_images at least 1")

    def __call__(self, model: "nn.Module", ctx: "Context") -> OnnxModel:
        return self.write(model, ctx, ctx.artifact(self.name, "model.onnx"), step=self.name)

    def write(self, model: "nn.Module", ctx: "Context", path: Path, *, step: str) -> OnnxModel:
        """Export ``model`` to ``path`` and check parity; details go into ``step``'s notes."""
        import numpy as np
        import torch

        self.check()
        model = model.eval()
        size = ctx.data.input_size

        def write(tmp: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # exporter deprecation chatter; it goes to the run log
                torch.onnx.export(
                    model, (torch.zeros(1, 3, size, size),), str(tmp), dynamo=False, opset_version=self.opset,
                    input_names=["input"], output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True,
                )
            drop_empty_trailing_inputs(tmp)
            check_onnx(tmp)

        atomic_write(path, write)
        x = ctx.data.normalize(ctx.data.test_x[:self.parity_images])
        with torch.inference_mode():
            ref = model(x).numpy()
        got = run_onnx(session(path, ctx.threads), x.numpy())
        diff = float(np.abs(got - ref).max())
        limit = self.atol * max(1.0, float(np.abs(ref).max()))
        ctx.note(step, parity_max_abs_diff=diff, parity_limit=limit, parity_images=len(x),
                 parity_atol=self.atol, opset=self.opset)
        if not diff <= limit:
            path.unlink(missing_ok=True)
            raise CompressError(f"ONNX parity check failed: ONNX Runtime differs from torch by {diff:.2e} "
                                f"(> {limit:.2e}) on {len(x)} test images; the exported graph is wrong, "
                                "report it with the model name")
        return OnnxModel(path)


def drop_empty_trailing_inputs(path: Path) -> int:
    """Remove the empty names that torch's exporter writes for omitted trailing optional inputs, as in
    ``Pad(x, pads, "")``; ONNX allows leaving them out. Returns how many nodes changed.

    ONNX Runtime's PadFusion folds a zero Pad into the Conv after it only when every Pad input is a constant, and
    it does not read an empty name as "absent". So each TensorFlow "same" Pad of EfficientNet-Lite stayed a kernel
    of its own: in FP32 with NCHWc layout reorders around it, in INT8 with a DequantizeLinear/QuantizeLinear pair.
    """
    import onnx

    model = onnx.load(str(path))
    changed = 0
    for node in model.graph.node:
        before = len(node.input)
        while node.input and node.input[-1] == "":
            node.input.pop()
        changed += len(node.input) < before
    if changed:
        onnx.save(model, str(path))
    return changed
