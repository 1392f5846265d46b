"""The edge bundle: everything a device needs, nothing that needs torch.

Format ``compress-edge/1``, documented in ``edge_demo/BUNDLE.md``. The folder is assembled under a
temporary name and renamed into place, so a half-written bundle never looks complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from compress.core import sha256_file
from compress.errors import CompressError
from compress.host import host_arch

if TYPE_CHECKING:
    from compress.core import Context
    from compress.records import RunReport

FORMAT = "compress-edge/1"
REQUIRED = ("model.onnx", "labels.json", "preprocess.json", "manifest.json")


def write_bundle(report: "RunReport", ctx: "Context", edge_dir: Path, *, web: bool = False, reason: str = "",
                 target: str | None = None, litert: "Callable[[Path], dict] | None" = None) -> Path:
    """Write ``edge_dir`` for the report's deployed step: model.onnx is that step's model.

    When the run quantized, the bundle holds both precisions: ``model_fp32.onnx`` beside an INT8 model.onnx, or
    ``model_int8.onnx`` beside an FP32 model.onnx when INT8 was made but not deployed. ``manifest.json`` names
    each in ``models`` and says why the deployed one was chosen.
    """
    chosen = report.deployed()
    if chosen.kind != "onnx":
        raise CompressError("the bundle needs an ONNX model: export must run before bundle")
    tmp = edge_dir.with_name(edge_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(ctx.run_dir / chosen.artifact, tmp / "model.onnx")
    precision = "int8" if chosen.step == "quantize" else "fp32"
    models: dict[str, str | None] = {"fp32": "model.onnx", "int8": None}
    if report.has_step("quantize"):
        if precision == "int8":
            shutil.copyfile(ctx.run_dir / report.step("export").artifact, tmp / "model_fp32.onnx")
            models = {"fp32": "model_fp32.onnx", "int8": "model.onnx"}
        else:
            shutil.copyfile(ctx.run_dir / report.step("quantize").artifact, tmp / "model_int8.onnx")
            models = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
    (tmp / "labels.json").write_text(json.dumps(ctx.data.classes, indent=1))
    (tmp / "preprocess.json").write_text(json.dumps(ctx.data.preprocess(), indent=1))
    ort_note = _convert_to_ort(tmp, ctx)
    web_note = _add_web_page(tmp) if web else "not included (add --web)"
    litert_record = litert(tmp) if litert is not None else None  # model.tflite (+ model_int8.tflite if it passed)
    if litert_record is not None and not litert_record.get("int8_shipped", True):
        ctx.warn("bundle", f"model_int8.tflite was not shipped: {litert_record.get('why')}")
    files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "size_bytes": p.stat().st_size}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {
        "format": FORMAT, "model": report.model, "dataset": ctx.data.name, "num_classes": len(ctx.data.classes),
        "precision": precision, "models": models, "deployed_reason": reason,
        "target": _target_arch(target) if models["int8"] else None,
        "opset": report.step("export").stage.get("opset"), "files": files,
        "step": chosen.step, "metrics": dataclasses.asdict(chosen.metrics), "versions": report.environment["versions"],
        "created_utc": report.created_utc, "ort_format": ort_note, "web_page": web_note,
        "litert": litert_record if litert_record is not None else "not included (add --litert)",
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(edge_dir, ignore_errors=True)
    tmp.rename(edge_dir)
    return edge_dir


def _target_arch(target: str | None) -> str:
    """The CPU architecture the INT8 recipe was built for (``host`` means this machine's)."""
    return host_arch() if target in (None, "host") else target


def _convert_to_ort(folder: Path, ctx: "Context") -> str:
    """``model.ort`` for ONNX Runtime Mobile. Optional: a failure is a loud warning, not fatal."""
    import contextlib
    import io
    import tempfile

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as work:
        src = Path(work) / "model.onnx"
        shutil.copyfile(folder / "model.onnx", src)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                convert_onnx_models_to_ort(src, output_dir=Path(work) / "out",
                                           optimization_styles=[OptimizationStyle.Fixed])
            made = next((Path(work) / "out").rglob("*.ort"))
        except Exception as e:  # the converter raises many types; the ONNX model is still the deliverable
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
            ctx.warn("bundle", f"model.ort (ONNX Runtime Mobile) could not be made ({why}); the bundle has "
                               "model.onnx only, which ONNX Runtime Mobile's full build also loads")
            return f"not converted ({why})"
        shutil.copyfile(made, folder / "model.ort")
    import onnxruntime

    return f"model.ort, converted with onnxruntime {onnxruntime.__version__} (load with this version or newer)"


def _add_web_page(folder: Path) -> str:
    from compress.webpage import add_web_page

    add_web_page(folder)
    return "web/index.html (serve the bundle folder and open web/)"


def verify_bundle(edge_dir: Path) -> dict:
    """Check a bundle's files against its manifest; refuse anything missing or tampered with."""
    edge_dir = Path(edge_dir)
    if not edge_dir.is_dir():
        raise CompressError(f"{edge_dir} is not a bundle folder: give the edge/ folder of a compress run")
    for name in REQUIRED:
        if not (edge_dir / name).is_file():
            raise CompressError(f"bundle {edge_dir} has no {name}: copy the whole edge/ folder of a compress run")
    try:
        manifest = json.loads((edge_dir / "manifest.json").read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CompressError(f"{edge_dir}/manifest.json is not a compress manifest: re-copy the bundle") from None
    for name, info in files.items():
        p = edge_dir / name
        if not p.is_file():
            raise CompressError(f"bundle {edge_dir} is missing {name}, listed in its manifest: re-copy the bundle")
        if sha256_file(p) != info.get("sha256"):
            raise CompressError(f"{p} does not match its sha256 in manifest.json: the file was changed or "
                                "corrupted; refusing to use it (re-copy the bundle)")
    return manifest
