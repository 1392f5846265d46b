"""LiteRT (TensorFlow Lite) output for phone apps: ``model.tflite`` (FP32), and ``model_int8.tflite`` if it passes a gate.

Conversion runs in an isolated environment, ``.venv-litert`` (``tools/litert/setup.sh`` makes it from the pinned
``tools/litert/requirements.txt``): litert-torch pins its own torch and pulls jax and transformers, which compress's
environment must not carry. compress hands it the model as a ``torch.export`` program (``.pt2``) and the calibration
images as ``.npy``; ``tools/litert/convert.py`` writes the two files. Everything after that runs here, with the
LiteRT ``Interpreter`` (the ``ai-edge-litert`` package, imported only inside functions):

* **Parity.** The FP32 file's logits match torch's on real test images (the tolerance of ONNX export's check).
* **Accuracy.** Both files run on the full test split, batch 1, as a phone runs them.
* **The INT8 gate.** ``model_int8.tflite`` ships only if every op in it computes in integers (a float op left
  behind means the quantizer skipped it: slower, not what the file name promises), its top-1 is within
  ``max_drop_pt`` of the FP32 file's, and, given the ONNX INT8 model's predictions, it agrees with them on at least
  enough of the test images (:func:`required_agreement_pct`). Otherwise only ``model.tflite`` ships and the record
  says why.
* **Latency.** Median and p90 at batch 1, one thread, FP32 and INT8 interleaved, with the interpreter's default
  XNNPACK delegate (what LiteRT uses on a phone's CPU).

Both files take NHWC input ``[1, H, W, 3]``: the bundle's preprocess.json values (RGB, scaled, mean/std), channels
last. The FP32 file takes float32 and returns float32 logits. The INT8 file takes and returns INT8: quantise the
normalised input with the input tensor's scale and zero point (recorded here and stored in the file), dequantise
the logits with the output's.

>>> record = build_litert(model, data, run_dir / "edge", calib=calibration_images(data, 512, 0))  # doctest: +SKIP
>>> record["int8_shipped"], record["why"]
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compress.errors import CompressError
from compress.litert_runtime import (MAX_DROP_PT, MIN_AGREEMENT_PCT, TfliteModel, _first_line, _predictions, gate,
                                     op_census)

if TYPE_CHECKING:
    import numpy as np
    import torch.nn as nn

    from compress.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
TOOL_DIR = ROOT / "tools" / "litert"
CONVERTER = TOOL_DIR / "convert.py"
REQUIREMENTS = TOOL_DIR / "requirements.txt"
SETUP = "tools/litert/setup.sh"
FP32_FILE = "model.tflite"
INT8_FILE = "model_int8.tflite"
LAYOUT = "NHWC"  # LiteRT's image pipelines, Android bitmaps and its GPU/NPU delegates are channels-last

# Agreement with the ONNX INT8 model: each INT8 rounding of one FP32 model flips the few borderline images, and the
# two roundings flip different ones, so they can disagree on up to the sum of their own disagreements with FP32.
# By default the LiteRT file may stray from FP32 as far as the ONNX INT8 model does (measured here against the FP32
# .tflite, whose logits match torch's): it must agree with the ONNX INT8 model on at least 100 - 2 x (the ONNX INT8
# model's disagreement with FP32) - 1 point of test images, and never needs more than 97 % (two plain ONNX INT8
# calibrations of one model agreed on 97.7-98.4 % of images here: more is asking for luck). Measured on
# digits at 32 px: tiny MobileNetV3, ONNX INT8 97.6 % with FP32, LiteRT vs ONNX INT8 97.8 % (needed 94.1 %);
# MobileNetV3-small, 96.0 % and 92.9 % (needed 91.0 %).


def required_agreement_pct(onnx_int8_vs_fp32_pct: float) -> float:
    """The agreement with the ONNX INT8 model the LiteRT INT8 file needs by default (comment above)."""
    return min(MIN_AGREEMENT_PCT, 100.0 - 2.0 * (100.0 - onnx_int8_vs_fp32_pct) - 1.0)


PARITY_IMAGES = 256  # test images the FP32 file is compared with torch on
PARITY_ATOL = 1e-3  # as ONNX export's check: times max(1, largest |logit|), since float32 rounding scales with it
CONVERT_TIMEOUT_S = 3600  # MobileNetV3-large at 224 px converts in minutes on 2 cores; a hang ends here


def tool_python() -> Path:
    """The converter environment's python; a missing or outdated environment is a :class:`CompressError`.

    ``COMPRESS_LITERT_VENV`` names another folder than ``.venv-litert`` in the checkout.
    """
    if not CONVERTER.is_file():
        raise CompressError(f"LiteRT output needs {CONVERTER.relative_to(ROOT)} from compress's source checkout, "
                            "which this install lacks: install compress with `pip install -e .` from a checkout")
    venv = Path(os.environ.get("COMPRESS_LITERT_VENV") or ROOT / ".venv-litert")
    python = venv / "bin" / "python"
    if not python.is_file():
        raise CompressError(f"LiteRT output needs the converter environment {venv}, which is missing: create it "
                            f"with {SETUP} (about 2 GB, a few minutes), or leave out --litert")
    stamp = venv / "requirements.sha256"
    if not stamp.is_file() or stamp.read_text().strip() != _requirements_hash():
        raise CompressError(f"the converter environment {venv} was not made from the current "
                            f"{REQUIREMENTS.relative_to(ROOT)}: update it with {SETUP}")
    return python


def check_ready() -> None:
    """Fail now, before any training, if ``--litert`` cannot run: the interpreter or the converter is missing."""
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None:
        raise CompressError("LiteRT output needs the LiteRT interpreter in compress's environment: pip install "
                            "ai-edge-litert==2.3.0 (or leave out --litert)")
    tool_python()


def _requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Converted:
    """What the converter wrote: the FP32 file, the INT8 file (None without calibration) and its report."""

    fp32: Path
    int8: Path | None
    report: dict


def convert_litert(model: "nn.Module", work_dir: Path, *, input_size: int,
                   calib: "np.ndarray | None" = None) -> Converted:
    """Run ``tools/litert/convert.py`` in the converter environment on ``model``; files land in ``work_dir``.

    ``calib``: normalised float32 NCHW training images ``[N, 3, H, W]``; without them there is no INT8 file.
    """
    import numpy as np
    import torch

    python = tool_python()
    if calib is not None:
        calib = np.asarray(calib, dtype=np.float32)
        if calib.ndim != 4 or calib.shape[1:] != (3, input_size, input_size) or len(calib) < 1:
            raise CompressError(f"LiteRT calibration images have shape {list(calib.shape)}; expected "
                                f"[N, 3, {input_size}, {input_size}] normalised training images")
        if not np.isfinite(calib).all():
            raise CompressError("LiteRT calibration images contain NaN or infinity: pass normalised training images")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    program = work_dir / "model.pt2"
    try:
        with torch.no_grad():
            exported = torch.export.export(copy.deepcopy(model).eval(), (torch.zeros(1, 3, input_size, input_size),))
        torch.export.save(exported, str(program))
    except Exception as e:  # torch.export raises many types for graphs it cannot capture
        raise CompressError(f"LiteRT conversion needs a torch.export graph of the model, and torch.export failed "
                            f"({type(e).__name__}: {_first_line(e)}): leave out --litert for this model") from None
    cmd = [str(python), str(CONVERTER), str(program), str(work_dir), "--report", str(work_dir / "convert.json")]
    if calib is not None:
        np.save(work_dir / "calib.npy", calib)
        cmd += ["--calib", str(work_dir / "calib.npy")]
    log = work_dir / "convert.log"
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)  # the converter sees its own environment only
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=CONVERT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CompressError(f"the LiteRT converter ran past {CONVERT_TIMEOUT_S} s (log: {log}): leave out "
                                "--litert, or report it with the model name") from None
    if proc.returncode != 0:
        last = _last_error_line(log.read_text(errors="replace"))
        if proc.returncode == 2:
            raise CompressError(f"the LiteRT converter refused its input: {last}")
        raise CompressError(f"the LiteRT converter failed (exit {proc.returncode}: {last}; log: {log}): leave out "
                            "--litert, and report it with the model name")
    fp32, int8 = work_dir / "model.tflite", work_dir / "model_int8.tflite"
    return Converted(fp32=fp32, int8=int8 if calib is not None else None,
                     report=json.loads((work_dir / "convert.json").read_text()))


def _last_error_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("convert.py: error:"):
            return line.removeprefix("convert.py: error:").strip()[:300]
    errors = [line for line in lines if "Error" in line.split(":", 1)[0]]
    return (errors or lines or ["no output"])[-1][:300]


def verify_litert(converted: Converted, model: "nn.Module", data: "Dataset", out_dir: Path, *,
                  onnx_int8_predictions: "np.ndarray | None" = None, max_drop_pt: float | None = None,
                  min_agreement_pct: float | None = None, latency_runs: int = 300,
                  tick: Callable[[str, int, int], None] | None = None) -> dict:
    """Check the converted files (module docstring), copy what passes into ``out_dir``; the flat record."""
    import numpy as np

    max_drop_pt = MAX_DROP_PT if max_drop_pt is None else max_drop_pt
    n = len(data.test_y)
    labels = data.test_y.numpy()
    if onnx_int8_predictions is not None:
        onnx_int8_predictions = np.asarray(onnx_int8_predictions).reshape(-1)
        if len(onnx_int8_predictions) != n:
            raise CompressError(f"{len(onnx_int8_predictions)} ONNX INT8 predictions for {n} test images: pass the "
                                "ONNX INT8 model's predictions on the same test split")
    step = (lambda task: (lambda done, total: tick(task, done, total))) if tick else (lambda task: None)

    fp32 = TfliteModel(converted.fp32)
    diff, limit, checked = _parity(fp32, model, data)
    fp32_pred = _predictions(fp32, data, step("litert fp32"))
    record: dict[str, Any] = {
        "layout": LAYOUT, "input_shape": [int(d) for d in fp32.input["shape"]], "test_images": n,
        "parity_max_abs_diff": diff, "parity_limit": limit, "parity_images": checked,
        "fp32_top1_pct": 100.0 * float((fp32_pred == labels).mean()) if n else 0.0,
        "fp32_size_bytes": converted.fp32.stat().st_size,
        "max_drop_pt": max_drop_pt,
        "versions": {**converted.report.get("versions", {}), "ai-edge-litert (runtime)": _version("ai-edge-litert")},
        "convert_seconds": sum(converted.report.get(k, {}).get("seconds", 0.0) for k in ("fp32", "int8")),
    }
    models = {"fp32": fp32}
    shipped = False
    if converted.int8 is None:
        why = "model_int8.tflite not built: no calibration images"
    else:
        int8 = TfliteModel(converted.int8)
        census = op_census(converted.int8)
        int8_pred = _predictions(int8, data, step("litert int8"))
        agreement = required = onnx_vs_fp32 = None
        if onnx_int8_predictions is not None and n:
            agreement = 100.0 * float((int8_pred == onnx_int8_predictions).mean())
            onnx_vs_fp32 = 100.0 * float((onnx_int8_predictions == fp32_pred).mean())
            required = min_agreement_pct if min_agreement_pct is not None else required_agreement_pct(onnx_vs_fp32)
        record.update({
            "int8_top1_pct": 100.0 * float((int8_pred == labels).mean()) if n else 0.0,
            "int8_size_bytes": converted.int8.stat().st_size,
            "int8_agreement_onnx_int8_pct": agreement, "min_agreement_pct": required,
            "onnx_int8_agreement_fp32_pct": onnx_vs_fp32,
            "int8_agreement_fp32_pct": 100.0 * float((int8_pred == fp32_pred).mean()) if n else 0.0,
            "int8_ops": census["ops"], "int8_float_ops": census["float_ops"],
            "int8_xnnpack_partitions": census["xnnpack_partitions"],
            "fp32_xnnpack_partitions": op_census(converted.fp32)["xnnpack_partitions"],
            "int8_float_op_types": census["float_op_types"], "int8_input_dtype": int8.input["dtype"].__name__,
            "int8_input_scale": float(int8.input["quantization"][0]),
            "int8_input_zero_point": int(int8.input["quantization"][1]),
            "int8_output_scale": float(int8.output["quantization"][0]),
            "int8_output_zero_point": int(int8.output["quantization"][1]),
            "calibration_images": converted.report.get("int8", {}).get("calibration_images"),
            "int8_recipe": converted.report.get("int8", {}).get("recipe"),
        })
        record["int8_drop_pt"] = record["fp32_top1_pct"] - record["int8_top1_pct"]
        shipped, why = gate(fp32_top1_pct=record["fp32_top1_pct"], int8_top1_pct=record["int8_top1_pct"],
                            float_ops=census["float_ops"], agreement_pct=agreement, max_drop_pt=max_drop_pt,
                            min_agreement_pct=required if required is not None else MIN_AGREEMENT_PCT)
        models["int8"] = int8

    record.update(_latency(models, data, latency_runs))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [FP32_FILE] + ([INT8_FILE] if shipped else [])
    shutil.copyfile(converted.fp32, out_dir / FP32_FILE)
    if shipped:
        shutil.copyfile(converted.int8, out_dir / INT8_FILE)
    else:
        (out_dir / INT8_FILE).unlink(missing_ok=True)
    record.update({"files": written, "int8_shipped": shipped, "why": why})
    return record


def _parity(fp32: "TfliteModel", model: "nn.Module", data: "Dataset") -> tuple[float, float, int]:
    """model.tflite against torch on real test images, with export's tolerance; a failure stops the run."""
    import numpy as np
    import torch

    x = data.normalize(data.test_x[:PARITY_IMAGES])
    with torch.inference_mode():
        ref = copy.deepcopy(model).eval()(x).numpy()
    diff = float(np.abs(fp32.logits(x.numpy()) - ref).max())
    limit = PARITY_ATOL * max(1.0, float(np.abs(ref).max()))
    if not diff <= limit:
        raise CompressError(f"LiteRT parity check failed: model.tflite differs from torch by {diff:.2e} "
                            f"(> {limit:.2e}) on {len(x)} test images; the converted graph is wrong: leave out "
                            "--litert, and report it with the model name")
    return diff, limit, len(x)


def _latency(models: dict, data: "Dataset", runs: int) -> dict:
    """Batch-1 latency of each LiteRT file, interleaved, 1 thread, with the interpreter's default XNNPACK."""
    import numpy as np

    from compress.measure import interleaved

    sample = data.normalize(data.test_x[:1]).numpy()[0].transpose(1, 2, 0)[None]
    inputs = {k: m.quantize_input(sample) for k, m in models.items()}
    times = interleaved({k: (lambda m=m, x=inputs[k]: m.run(x)) for k, m in models.items()}, runs=runs,
                        max_seconds=60)
    out: dict = {}
    for k, t in times.items():
        out[f"{k}_latency_ms_median"] = float(np.median(t)) * 1e3
        out[f"{k}_latency_ms_p90"] = float(np.quantile(t, 0.9)) * 1e3
    out.update({"latency_batch": 1, "latency_threads": 1, "latency_runs": min(len(t) for t in times.values()),
                "latency_delegate": "XNNPACK (the interpreter's default CPU delegate)"})
    return out


def _version(package: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def build_litert(model: "nn.Module", data: "Dataset", out_dir: Path, *, calib: "np.ndarray",
                 onnx_int8_predictions: "np.ndarray | None" = None, max_drop_pt: float | None = None,
                 min_agreement_pct: float | None = None, latency_runs: int = 300, work_dir: Path | None = None,
                 tick: Callable[[str, int, int], None] | None = None) -> dict:
    """Convert ``model`` to LiteRT, verify and gate the files, write ``model.tflite`` (and ``model_int8.tflite``
    if it passes) into ``out_dir``, and return the flat record for the report (module docstring).

    ``calib``: normalised float32 NCHW *training* images (``compress.quantize.calibration_images``).
    ``onnx_int8_predictions``: the ONNX INT8 model's top-1 class per test image, in test-split order.
    ``max_drop_pt``: INT8 top-1 budget against the FP32 file (None: 1.0 point).
    ``min_agreement_pct``: agreement with the ONNX INT8 predictions the INT8 file needs (None: as far from FP32 as
    the ONNX INT8 model strays, :func:`required_agreement_pct`).
    ``work_dir``: where the converter's input, output and log stay (e.g. the run folder's ``litert/``); by default
    a temporary folder, removed afterwards unless the converter failed (its error names the log).

    >>> rec = build_litert(model, data, Path("edge"), calib=calib, onnx_int8_predictions=preds)  # doctest: +SKIP
    >>> rec["files"], rec["int8_top1_pct"], rec["why"]
    """
    max_drop_pt = MAX_DROP_PT if max_drop_pt is None else max_drop_pt
    if not max_drop_pt >= 0 or (min_agreement_pct is not None and not 0 <= min_agreement_pct <= 100):
        raise CompressError(f"LiteRT INT8 gate: max_drop_pt must be 0 or more (got {max_drop_pt}) and "
                            f"min_agreement_pct within 0..100 (got {min_agreement_pct})")
    if onnx_int8_predictions is not None and len(onnx_int8_predictions) != len(data.test_y):
        raise CompressError(f"{len(onnx_int8_predictions)} ONNX INT8 predictions for {len(data.test_y)} test "
                            "images: pass the ONNX INT8 model's predictions on the same test split")
    check_ready()
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="compress-litert-"))
    converted = convert_litert(model, work, input_size=data.input_size, calib=calib)  # a failure keeps its log
    try:
        return verify_litert(converted, model, data, out_dir, onnx_int8_predictions=onnx_int8_predictions,
                             max_drop_pt=max_drop_pt, min_agreement_pct=min_agreement_pct,
                             latency_runs=latency_runs, tick=tick)
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
