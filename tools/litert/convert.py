"""Convert a torch model to LiteRT (TensorFlow Lite): ``model.tflite`` (FP32) and ``model_int8.tflite``.

Runs inside the isolated converter environment (``.venv-litert``, made by ``tools/litert/setup.sh`` from the
pinned ``tools/litert/requirements.txt``), never in compress's own: litert-torch pins its own torch and pulls jax
and transformers. compress calls it in a subprocess (``compress.litert``); it needs nothing from compress.

Input: a ``torch.export`` ExportedProgram (``.pt2``) of the classifier, one NCHW float32 input ``[1, 3, H, W]``
normalised as the bundle's preprocess.json says, logits out. compress saves it with ``torch.export.save``.

Output layout: NHWC, ``[1, H, W, 3]``, the layout LiteRT's image pipelines and Android bitmaps use (and the one
its GPU and NPU delegates run without transposes). The FP32 file takes the same normalised float32 values as the
ONNX model, only channels-last; its output is float32 logits ``[1, classes]``.

With ``--calib`` (a ``.npy`` of normalised float32 NCHW *training* images), also ``model_int8.tflite``:
full-integer static INT8 by ai-edge-quantizer's ``static_wi8_ai8`` recipe (per-channel symmetric INT8 weights,
per-tensor asymmetric INT8 activations, INT32 biases), calibrated with global min-max ranges (``quantize_int8``).
Its input and output are INT8 too: the app quantises the normalised input with the input tensor's scale and zero
point and dequantises the logits with the output's (both are in the file; an argmax can skip the dequantisation).
INT8, not UINT8: UINT8 tensors are TFLite's legacy scheme, and integer-only NPUs and XNNPACK take signed INT8.

    .venv-litert/bin/python tools/litert/convert.py model.pt2 out/ --calib calib.npy --report out/convert.json

Exit status 2 with one line on stderr for an input the caller can fix; anything else is a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

FP32_NAME = "model.tflite"
INT8_NAME = "model_int8.tflite"


class InputError(Exception):
    """An input the caller can fix (missing file, wrong shape); printed as one line, exit status 2."""


def load_program(path: Path):
    """The ExportedProgram's module and its NCHW input shape ``(1, 3, H, W)``."""
    import logging
    import zipfile

    import torch

    if not path.is_file():
        raise InputError(f"{path} does not exist")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a torch.export program (.pt2 is a zip archive): save one with "
                         "torch.export.save")
    logging.getLogger("torch.export").setLevel(logging.ERROR)  # it logs a traceback before raising
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # torch raises many types for a bad or foreign file
        raise InputError(f"{path} is not a torch.export program this torch ({torch.__version__}) can load: "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}") from None
    inputs = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(inputs) != 1:
        raise InputError(f"{path} takes {len(inputs)} inputs; a classifier takes one image tensor")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == inputs[0].arg.name)
    shape = tuple(int(d) for d in node.meta["val"].shape)
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3:
        raise InputError(f"{path} takes input shape {list(shape)}; expected [1, 3, H, W] (batch 1, NCHW, RGB)")
    module = program.module()
    for m in module.modules():  # exported in eval mode already; say so, so litert-torch does not warn
        m.training = False
    return module, shape


def convert_fp32(module, shape: tuple[int, ...], out: Path) -> None:
    import litert_torch
    import torch

    nhwc = litert_torch.to_channel_last_io(module, args=[0])
    nhwc.training = False  # .eval() is refused by exported modules; the graph is in eval mode already
    sample = torch.zeros(shape[0], shape[2], shape[3], shape[1])
    litert_torch.convert(nhwc, (sample,)).export(str(out))


def quantize_int8(fp32: Path, calib_nchw, out: Path) -> dict:
    """Full-integer static INT8 of ``fp32`` (module docstring), calibrated one image at a time (batch 1).

    Ranges are the global min and max over all calibration images, as ONNX Runtime's MinMax calibration (which
    compress's ONNX INT8 uses) takes them. ai-edge-quantizer's own default keeps a moving average of each image's
    min and max instead (weight 0.95 on the past): with batch-1 calibration that converges to a typical image's
    range, so the images with wider activations saturate. On a tiny MobileNetV3 on Fashion-MNIST that cost 5.7
    points of top-1 (87 % agreement with FP32); global min-max cost 0.3 points (97 %).
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    signatures = Interpreter(model_path=str(fp32)).get_signature_list()
    (key, sig), = signatures.items()
    (name,) = sig["inputs"]
    calib = np.ascontiguousarray(calib_nchw.transpose(0, 2, 3, 1), dtype=np.float32)
    int8_recipe = recipe.static_wi8_ai8()
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(int8_recipe)
    ranges = calibrator.Calibrator(fp32.read_bytes(), num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    ranges.calibrate({key: [{name: calib[i:i + 1]} for i in range(len(calib))]}, manager)
    q = quantizer.Quantizer(str(fp32), int8_recipe)
    q.quantize(ranges.get_model_qsvs(), enable_progress_report=False).export_model(str(out), overwrite=True)
    return {"recipe": "ai-edge-quantizer static_wi8_ai8, global min-max calibration",
            "calibration_images": len(calib)}


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for pkg in ("litert-torch", "ai-edge-quantizer", "ai-edge-litert", "litert-converter", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("program", type=Path, help="torch.export ExportedProgram (.pt2), input [1, 3, H, W]")
    p.add_argument("out_dir", type=Path, help=f"folder for {FP32_NAME} (and {INT8_NAME})")
    p.add_argument("--calib", type=Path, help="normalised float32 NCHW training images (.npy) for the INT8 file")
    p.add_argument("--report", type=Path, help="write what was done as JSON here")
    a = p.parse_args(argv)
    try:
        module, shape = load_program(a.program)
        calib = None
        if a.calib is not None:
            try:
                calib = np.load(a.calib)
            except (OSError, ValueError) as e:
                raise InputError(f"cannot read calibration images {a.calib}: {e}") from None
            if calib.ndim != 4 or tuple(calib.shape[1:]) != shape[1:] or len(calib) < 1:
                raise InputError(f"calibration images have shape {list(calib.shape)}; the model takes "
                                 f"[N, {', '.join(map(str, shape[1:]))}]")
    except InputError as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 2
    a.out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"versions": versions(), "input_nchw": list(shape), "layout": "NHWC"}
    start = time.perf_counter()
    convert_fp32(module, shape, a.out_dir / FP32_NAME)
    report["fp32"] = {"file": FP32_NAME, "seconds": round(time.perf_counter() - start, 2)}
    if calib is not None:
        start = time.perf_counter()
        info = quantize_int8(a.out_dir / FP32_NAME, calib, a.out_dir / INT8_NAME)
        report["int8"] = {"file": INT8_NAME, "seconds": round(time.perf_counter() - start, 2), **info}
    if a.report:
        a.report.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
