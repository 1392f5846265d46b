"""LiteRT output (compress.litert): real conversions by litert-torch and ai-edge-quantizer in the converter
environment (.venv-litert, tools/litert/setup.sh), run by the real LiteRT interpreter, on x86 and in the emulated
aarch64 userland of tests/arm_rootfs.py.

One real ``compress run ... --int8 --litert`` on scikit-learn's digits (RUN_CONFIG, once per module) makes the files
every test reads: its baseline, a real tiny MobileNetV3 (SE blocks, hardswish, depthwise convs), converted in its
litert/ folder, and its ONNX INT8 model, whose predictions the gate compares with. The converter takes about
45 s a model here, so the files are converted once; the corrupted-calibration test re-runs only the
converter's INT8 step on the FP32 file.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.errors import CompressError
from tests.helpers import DIGITS_TRAIN

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CALIBRATION_IMAGES = 256
ARM_IMAGES = 100  # emulation runs about 100x slower than native; this bounds the check's time
# Emulated aarch64 against x86, same file, same interpreter version. FP32: NEON vs AVX kernels sum in another order,
# float32 rounding noise far below 1e-3 of the largest logit. INT8: XNNPACK's integer kernels and its fp32
# requantization give the same codes on both; allow a rare tie rounded the other way (one step, spread a little
# by later layers), as tests/test_edge_arm.py does for ONNX Runtime.
FP32_RTOL = 1e-3
INT8_MAX_STEPS = 16
INT8_MIN_IDENTICAL = 0.95


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


arm_rootfs = _load("arm_rootfs", HERE / "arm_rootfs.py")


# --------------------------------------------------------------------------- fixtures

RUN_CONFIG = {"model": "tiny_mobilenet_v3", "data": "digits", "litert": True, "allow_chance": True,
              "train": DIGITS_TRAIN,
              "quantize": {"calibration_size": CALIBRATION_IMAGES, "speed_check_runs": 0},
              "measure": {"warmup_runs": 2, "min_runs": 20, "min_seconds": 0.05, "throughput_seconds": 0.05}}


@pytest.fixture(scope="module")
def data():
    """The digits (450 test images), normalised as the pipeline feeds RUN_CONFIG's model."""
    from compress.data import load_dataset
    from compress.models import preprocessing

    return load_dataset("digits", input_size=32).with_normalization(*preprocessing(RUN_CONFIG["model"], "none"))


@pytest.fixture(scope="module")
def litert_run(tmp_path_factory):
    """The run folder and report of RUN_CONFIG's run."""
    from compress.config import resolve
    from compress.pipeline import run

    out = tmp_path_factory.mktemp("litert-run") / "run"
    try:
        return out, run(resolve(overrides=RUN_CONFIG), out)
    except CompressError as e:
        pytest.fail(f"LiteRT conversion cannot run: {e}", pytrace=False)


@pytest.fixture(scope="module")
def trained(litert_run):
    """The run's baseline: the model its LiteRT files were converted from (the run prunes nothing)."""
    from compress import checkpoint
    from compress.models import create_model

    net, _ = create_model(RUN_CONFIG["model"], num_classes=10, weights="none")
    return checkpoint.restore_model(checkpoint.load(litert_run[0] / "baseline" / "model.pt"), net).eval()


@pytest.fixture(scope="module")
def calib(data):
    """The training images the run calibrated on (the same count and seed)."""
    from compress.quantize import calibration_images

    return calibration_images(data, CALIBRATION_IMAGES, seed=0)


@pytest.fixture(scope="module")
def onnx_int8_predictions(litert_run, data):
    """The run's ONNX INT8 model's top-1 per test image."""
    from compress.core import run_onnx, session

    out, report = litert_run
    return run_onnx(session(out / report.step("quantize").artifact), data.normalize(data.test_x).numpy()).argmax(1)


@pytest.fixture(scope="module")
def converted(litert_run):
    """What the converter wrote into the run's litert/ folder."""
    from compress.litert import Converted

    work = litert_run[0] / "litert"
    return Converted(fp32=work / "model.tflite", int8=work / "model_int8.tflite",
                     report=json.loads((work / "convert.json").read_text()))


# --------------------------------------------------------------------------- the files

@pytest.mark.slow
def test_fp32_tflite_is_nhwc_and_matches_torch(converted, trained, data):
    from compress.litert import TfliteModel

    # Setup
    model = TfliteModel(converted.fp32)
    x = data.normalize(data.test_x[:64])

    # Execute
    got = model.logits(x.numpy())
    with torch.inference_mode():
        ref = trained(x).numpy()

    # Assert: channels-last float input, float logits, torch's numbers
    assert list(model.input["shape"]) == [1, 32, 32, 3] and model.input["dtype"] == np.float32
    assert list(model.output["shape"]) == [1, 10] and model.output["dtype"] == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())), rtol=0)


@pytest.mark.slow
def test_int8_tflite_is_full_integer_with_int8_io(converted):
    from ai_edge_litert.interpreter import Interpreter

    from compress.litert import TfliteModel, op_census

    # Execute
    census = op_census(converted.int8)
    model = TfliteModel(converted.int8)
    tensors = Interpreter(model_path=str(converted.int8)).get_tensor_details()

    # Assert: every op computes in integers, I/O included; only biases (and shape operands) are int32
    assert census["float_ops"] == 0 and census["float_op_types"] == []
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "HARD_SWISH", "FULLY_CONNECTED"} <= set(census["op_types"])
    assert model.input["dtype"] == np.int8 and model.output["dtype"] == np.int8
    assert {t["dtype"] for t in tensors} <= {np.int8, np.int32}
    scale, _ = model.input["quantization"]
    assert 0 < scale < 0.1  # normalised inputs span about [-2.1, 2.6]: 256 steps of ~0.02
    assert converted.report["int8"]["calibration_images"] == CALIBRATION_IMAGES


@pytest.mark.slow
def test_int8_tflite_predicts_like_torch(converted, trained, data):
    from compress.litert import TfliteModel

    # Execute
    x = data.normalize(data.test_x)
    got = TfliteModel(converted.int8).logits(x.numpy()).argmax(1)
    with torch.inference_mode():
        ref = trained(x).numpy().argmax(1)

    # Assert: INT8 rounding moves only borderline images
    assert (got == ref).mean() > 0.85


# --------------------------------------------------------------------------- the gate

@pytest.mark.slow
def test_gate_ships_int8_when_it_holds_accuracy_and_agrees(converted, trained, data, onnx_int8_predictions,
                                                           tmp_path):
    from compress.litert import required_agreement_pct, verify_litert

    # Execute
    record = verify_litert(converted, trained, data, tmp_path / "edge", onnx_int8_predictions=onnx_int8_predictions,
                           max_drop_pt=100.0, latency_runs=50)

    # Assert: both files, and a record whose numbers are the files'
    assert record["int8_shipped"] and record["why"].startswith("model_int8.tflite shipped")
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == ["model.tflite", "model_int8.tflite"]
    assert record["files"] == ["model.tflite", "model_int8.tflite"]
    assert record["fp32_size_bytes"] == (tmp_path / "edge" / "model.tflite").stat().st_size
    assert record["int8_size_bytes"] == (tmp_path / "edge" / "model_int8.tflite").stat().st_size
    assert record["int8_size_bytes"] < 0.5 * record["fp32_size_bytes"]
    assert record["test_images"] == len(data.test_y) == 450
    agreement = 100.0 * float((record_predictions(tmp_path / "edge" / "model_int8.tflite", data)
                               == onnx_int8_predictions).mean())
    assert record["int8_agreement_onnx_int8_pct"] == pytest.approx(agreement)
    assert record["int8_drop_pt"] == pytest.approx(record["fp32_top1_pct"] - record["int8_top1_pct"])
    assert record["min_agreement_pct"] == required_agreement_pct(record["onnx_int8_agreement_fp32_pct"]) <= 97.0
    assert record["int8_agreement_onnx_int8_pct"] >= record["min_agreement_pct"]
    assert record["parity_max_abs_diff"] < record["parity_limit"]
    assert record["int8_float_ops"] == 0 and record["layout"] == "NHWC"
    for k in ("fp32", "int8"):
        assert 0 < record[f"{k}_latency_ms_median"] <= record[f"{k}_latency_ms_p90"]
    assert record["latency_threads"] == 1 and record["latency_batch"] == 1 and record["latency_runs"] >= 50
    json.dumps(record)  # flat and serialisable: it goes into report.json
    # The Android demo app reads its INT8 input/output quantisation from this record, and the image steps
    # from preprocess.json: every key it asks for is there.
    kotlin = (ROOT / "edge_demo" / "android" / "app" / "src" / "main" / "kotlin" / "dev" / "compress" / "edge"
              / "EdgeClassifier.kt").read_text()
    asked = set(re.findall(r'litert\.get\w+\("(\w+)"\)', kotlin))
    assert asked and asked <= set(record), asked - set(record)
    asked_pre = set(re.findall(r'pre\.get\w+\("(\w+)"\)', kotlin))
    assert {"width", "height", "scale", "mean", "std"} == asked_pre and asked_pre <= set(data.preprocess())


def record_predictions(path: Path, data) -> np.ndarray:
    from compress.litert import TfliteModel

    return TfliteModel(path).logits(data.normalize(data.test_x).numpy()).argmax(1)


@pytest.mark.slow
def test_gate_keeps_int8_out_when_it_disagrees_with_onnx_int8(converted, trained, data, onnx_int8_predictions,
                                                              tmp_path):
    from compress.litert import verify_litert

    # Setup: an ONNX INT8 model that predicts the next class for every image
    other = (onnx_int8_predictions + 1) % 10
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "model_int8.tflite").write_bytes(b"stale file from an earlier bundle")

    # Execute
    record = verify_litert(converted, trained, data, tmp_path / "edge", onnx_int8_predictions=other,
                           max_drop_pt=100.0, min_agreement_pct=97.0, latency_runs=20)

    # Assert
    assert not record["int8_shipped"]
    assert "agrees with the ONNX INT8 model on" in record["why"] and "under the 97.0 % it needs" in record["why"]
    assert record["int8_agreement_onnx_int8_pct"] < 20
    assert [p.name for p in (tmp_path / "edge").iterdir()] == ["model.tflite"]
    assert record["files"] == ["model.tflite"]


@pytest.mark.slow
def test_corrupted_calibration_fails_the_gate_end_to_end(trained, data, calib, converted, onnx_int8_predictions,
                                                        tmp_path):
    """A real INT8 file calibrated on corrupted images, made by the converter's own INT8 step from the run's FP32
    file (the FP32 conversion, about 3/4 of the converter's time, is the run's), then gated as build_litert gates."""
    from compress.litert import CONVERTER, Converted, tool_python, verify_litert

    # Setup: calibration images squashed to 2 % of their range, so every activation range is far too narrow
    np.save(tmp_path / "squashed.npy", calib * 0.02)
    int8 = tmp_path / "model_int8.tflite"
    code = ("import sys, numpy as np; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from convert import quantize_int8; "
            "quantize_int8(Path(sys.argv[2]), np.load(sys.argv[3]), Path(sys.argv[4]))")
    subprocess.run([str(tool_python()), "-c", code, str(CONVERTER.parent), str(converted.fp32),
                    str(tmp_path / "squashed.npy"), str(int8)], check=True, capture_output=True, timeout=600)

    # Execute
    record = verify_litert(Converted(fp32=converted.fp32, int8=int8, report=converted.report), trained, data,
                           tmp_path / "edge", onnx_int8_predictions=onnx_int8_predictions, latency_runs=20)

    # Assert: FP32 ships and is right; INT8 saturates, loses accuracy and stays out
    assert record["files"] == ["model.tflite"] and not record["int8_shipped"]
    assert record["int8_drop_pt"] > 5
    assert "points below model.tflite's" in record["why"] and "over the 1-point budget" in record["why"]
    assert record["parity_max_abs_diff"] < record["parity_limit"]
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == ["model.tflite"]


# --------------------------------------------------------------------------- errors a user can fix

def test_missing_converter_environment_names_the_command_that_creates_it(monkeypatch, tmp_path, data):
    from compress.litert import build_litert

    monkeypatch.setenv("COMPRESS_LITERT_VENV", str(tmp_path / "no-venv"))
    with pytest.raises(CompressError, match=r"tools/litert/setup\.sh") as e:
        build_litert(torch.nn.Identity(), data, tmp_path / "edge", calib=np.zeros((1, 3, 32, 32), np.float32))
    assert "\n" not in str(e.value) and str(tmp_path / "no-venv") in str(e.value)
    assert not (tmp_path / "edge").exists()


def test_outdated_converter_environment_asks_for_an_update(monkeypatch, tmp_path):
    from compress.litert import tool_python

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "requirements.sha256").write_text("made from an older requirements.txt\n")
    monkeypatch.setenv("COMPRESS_LITERT_VENV", str(venv))
    with pytest.raises(CompressError, match=r"update it with tools/litert/setup\.sh"):
        tool_python()


def test_bad_gate_settings_and_prediction_count_fail_before_converting(tmp_path, data):
    from compress.litert import build_litert

    calib = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(CompressError, match="max_drop_pt must be 0 or more"):
        build_litert(torch.nn.Identity(), data, tmp_path, calib=calib, max_drop_pt=-1.0)
    with pytest.raises(CompressError, match="ONNX INT8 predictions for 450 test images"):
        build_litert(torch.nn.Identity(), data, tmp_path, calib=calib, onnx_int8_predictions=np.zeros(5))


@pytest.mark.slow
def test_converter_refuses_a_file_that_is_no_exported_program(tmp_path):
    from compress.litert import CONVERTER, tool_python

    # Setup
    bogus = tmp_path / "model.pt2"
    bogus.write_bytes(b"not a zip")

    # Execute
    result = subprocess.run([str(tool_python()), str(CONVERTER), str(bogus), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)

    # Assert: exit 2 and one line that names the file, no traceback
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("convert.py:")]
    assert len(lines) == 1 and str(bogus) in lines[0] and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- emulated aarch64

GUEST = '''
import json, platform, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

model, images, out = sys.argv[1:4]
it = Interpreter(model_path=model, num_threads=1)
it.allocate_tensors()
i, o = it.get_input_details()[0], it.get_output_details()[0]
outputs = []
for x in np.load(images):
    it.set_tensor(i["index"], x[None])
    it.invoke()
    outputs.append(it.get_tensor(o["index"])[0].copy())
np.save(out, np.stack(outputs))
print(json.dumps({"machine": platform.machine(), "input": str(i["dtype"].__name__)}))
'''


@pytest.fixture(scope="module")
def arm_python():
    from importlib.metadata import version

    try:  # the host's interpreter version, so both sides run the same code
        return arm_rootfs.ensure_arm_python({"ai-edge-litert": version("ai-edge-litert"),
                                             "numpy": np.__version__})
    except arm_rootfs.ArmRootfsError as e:
        pytest.fail(f"ARM check cannot run: {e}", pytrace=False)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_emulated_aarch64_interpreter_gives_the_same_outputs(precision, converted, data, arm_python, tmp_path):
    from compress.litert import TfliteModel

    # Setup: inputs already in the file's layout and type, so the guest only runs the interpreter
    path = converted.fp32 if precision == "fp32" else converted.int8
    model = TfliteModel(path)
    x = data.normalize(data.test_x[:ARM_IMAGES]).numpy().transpose(0, 2, 3, 1)
    inputs = np.stack([model.quantize_input(image[None])[0] for image in x])
    np.save(tmp_path / "inputs.npy", inputs)
    (tmp_path / "guest.py").write_text(GUEST)
    x86 = np.stack([model.run(image[None])[0].copy() for image in inputs])

    # Execute
    result = arm_python.run([str(tmp_path / "guest.py"), str(path), str(tmp_path / "inputs.npy"),
                             str(tmp_path / "arm.npy")], timeout=900)

    # Assert
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["machine"] == "aarch64"
    arm = np.load(tmp_path / "arm.npy")
    assert arm.shape == x86.shape and arm.dtype == x86.dtype
    if precision == "fp32":
        np.testing.assert_allclose(arm, x86, atol=FP32_RTOL * max(1.0, float(np.abs(x86).max())), rtol=0)
    else:
        steps = np.abs(arm.astype(np.int32) - x86.astype(np.int32))
        assert steps.max() <= INT8_MAX_STEPS
        assert (steps.max(axis=1) == 0).mean() >= INT8_MIN_IDENTICAL


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_compress_run_litert_bundles_the_gated_files_with_their_record(litert_run, data):
    """`compress run ... --int8 --litert` (RUN_CONFIG): the bundle gets model.tflite, model_int8.tflite when it
    passed the gate, their sha256 in the manifest, and the LiteRT record; the FP32 file predicts like the ONNX
    FP32 export."""
    from compress.core import run_onnx, session, sha256_file
    from compress.litert import TfliteModel

    out, report = litert_run

    edge = out / "edge"
    manifest = json.loads((edge / "manifest.json").read_text())
    record = manifest["litert"]
    assert isinstance(record, dict) and record["files"][0] == "model.tflite"
    for name in record["files"]:
        assert manifest["files"][name]["sha256"] == sha256_file(edge / name)
    assert (edge / "model_int8.tflite").is_file() == record["int8_shipped"]
    assert record["test_images"] == report.dataset["test_images"] == 450
    images = data.normalize(data.test_x).numpy()
    tflite = TfliteModel(edge / "model.tflite").logits(images).argmax(1)
    onnx_fp32 = run_onnx(session(out / report.step("export").artifact), images).argmax(1)
    assert (tflite == onnx_fp32).mean() >= 0.99
    assert abs(record["fp32_top1_pct"] - report.step("export").metrics.top1_pct) <= 0.5
