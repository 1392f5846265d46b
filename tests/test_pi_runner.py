"""The Raspberry Pi runner's command line (edge_demo/pi/runner.py), on this machine.

Single images, folders (accuracy, unreadable files), EXIF orientation, the manifest's models,
the bench and its energy (user power, and the Pi 5's PMIC through a recorded `vcgencmd` output),
and bad input. The runner under emulated aarch64 is tests/test_edge_arm.py.

Fixtures from tests/conftest.py: `edge_bundle` (an edge/ folder from the compress pipeline,
with an INT8 and an FP32 model) and `fmnist_test_images` (class subfolders named by label
holding 250 Fashion-MNIST test images).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
RUNNER = HERE.parent / "edge_demo" / "pi" / "runner.py"
PMIC_RECORDING = HERE / "data" / "pmic_read_adc_pi5_load.txt"
# tests/data/README.md: the 12 V×I products of the recording, summed by hand.
PMIC_RECORDING_WATTS = 7.23981879801581
PMIC_RECORDING_RAILS = ["0V8_AON", "0V8_SW", "1V1_SYS", "1V8_SYS", "3V3_ADC", "3V3_DAC", "3V3_SYS",
                        "3V7_WL_SW", "DDR_VDD2", "DDR_VDDQ", "HDMI", "VDD_CORE"]


def load_module(name: str, path: Path):
    """Import a file as a module, whatever pytest's import mode and sys.path are."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


runner = load_module("pi_runner", RUNNER)


# --------------------------------------------------------------------------- helpers

@dataclass(frozen=True)
class Logits:
    """A --dump-logits file: image paths and their logits [N, C], in the same order."""

    paths: list[str]
    values: np.ndarray


def load_dump(path: Path) -> Logits:
    if path.suffix == ".npz":
        with np.load(path) as data:
            return Logits(paths=[str(p) for p in data["paths"]], values=data["logits"])
    doc = json.loads(path.read_text())
    return Logits(paths=doc["paths"], values=np.asarray(doc["logits"], dtype=np.float32))


def reference_logits(model: Path, image: Path, pre: dict) -> np.ndarray:
    """BUNDLE.md's preprocessing written out independently of the runner, then ONNX Runtime."""
    rgb = Image.open(image).convert("RGB").resize((pre["width"], pre["height"]), Image.BILINEAR)
    x = np.asarray(rgb).astype(np.float32) * np.float32(pre["scale"])
    x = (x - np.float32(pre["mean"])) / np.float32(pre["std"])
    x = x.transpose(2, 0, 1)[np.newaxis]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run([pre["output_name"]], {pre["input_name"]: x})[0][0]


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the runner's main() in this process: exit status, stdout, stderr."""
    code = runner.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def process(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run runner.py as its own process, as a user on a Pi types it."""
    return subprocess.run([sys.executable, str(RUNNER), *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=timeout)


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png"))


def label_of_folder(name: str, labels: list[str]) -> int:
    """Fixture folders are named by label, with characters a path cannot hold replaced."""
    key = "".join(c for c in name.casefold() if c.isalnum())
    matches = [i for i, label in enumerate(labels)
               if "".join(c for c in label.casefold() if c.isalnum()) == key]
    assert len(matches) == 1, f"folder {name!r} matches no single label of {labels}"
    return matches[0]


def rehash(bundle: Path) -> None:
    """Rewrite manifest.json's sha256 and size of every file it lists, after an edit."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in list(manifest["files"]):
        path = bundle / name
        if path.exists():
            manifest["files"][name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                       "size_bytes": path.stat().st_size}
        else:
            del manifest["files"][name]
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))


def model_files(bundle: Path) -> dict:
    """{"fp32": file, "int8": file or None} of a bundle, as the runner reads its manifest."""
    return runner.load_bundle(bundle).models


def _copy(bundle: Path, tmp: Path) -> Path:
    copy = tmp / "edge"
    shutil.copytree(bundle, copy)
    return copy


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def layout(bundle: Path, tmp: Path, *, deployed: str, int8: bool = True, old: bool = False,
           reason: str = "INT8 lost 2.1 points of accuracy (limit 1.0)",
           target: str | None = None) -> Path:
    """A copy of the bundle with its FP32 and INT8 models laid out as BUNDLE.md says.

    deployed: the precision of model.onnx. int8=False leaves the INT8 model out. old=True
    writes a manifest from before the "models" field (model_fp32.onnx marks an INT8 model.onnx).
    """
    source = model_files(bundle)
    assert source["int8"], f"{bundle} has no INT8 model to lay out"
    fp32_bytes, int8_bytes = (bundle / source["fp32"]).read_bytes(), (bundle / source["int8"]).read_bytes()
    copy = tmp / f"edge-{deployed}-{'int8' if int8 else 'noint8'}-{'old' if old else 'new'}"
    shutil.copytree(bundle, copy)
    for name in {source["fp32"], source["int8"], "model.ort"}:
        (copy / name).unlink(missing_ok=True)
    if deployed == "int8":
        assert int8, "model.onnx cannot be INT8 in a bundle without an INT8 model"
        files = {"model.onnx": int8_bytes, "model_fp32.onnx": fp32_bytes}
        models = {"fp32": "model_fp32.onnx", "int8": "model.onnx"}
    elif int8 and not old:
        files = {"model.onnx": fp32_bytes, "model_int8.onnx": int8_bytes}
        models = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
    else:
        files = {"model.onnx": fp32_bytes}
        models = {"fp32": "model.onnx", "int8": None}
    manifest = json.loads((copy / "manifest.json").read_text())
    for name, data in files.items():
        (copy / name).write_bytes(data)
        manifest["files"][name] = {}
    for key in ("models", "deployed_reason", "target"):
        manifest.pop(key, None)
    manifest["precision"] = deployed
    if not old:
        manifest.update(models=models, deployed_reason=reason,
                        target=target or runner.machine_family() or "x86_64")
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))
    rehash(copy)
    return copy


def _edit_manifest(bundle: Path, tmp: Path, **changes) -> Path:
    copy = layout(bundle, tmp, deployed="int8")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return copy


def exif_photo(folder: Path, orientation: int = 6) -> tuple[Path, Path]:
    """A JPEG stored sideways with an EXIF Orientation tag, and the same pixels physically turned
    as the tag says, as a PNG. Orientation 6 means: turn 90° clockwise to display."""
    height, width = 24, 40  # not square, and every corner different, so the turn shows
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 6, yy * 10, (xx + yy) % 7 * 30], axis=-1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo = folder / "portrait.jpg"
    Image.fromarray(pixels).save(photo, quality=95, exif=exif)
    with Image.open(photo) as stored:
        assert stored.getexif().get(0x0112) == orientation
        decoded = np.asarray(stored.convert("RGB"))  # what the file holds, not yet turned
    turned = folder / "portrait_turned.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(decoded, k=-1))).save(turned)  # clockwise
    return photo, turned


def write_fake_vcgencmd(folder: Path, body: str) -> Path:
    """A `vcgencmd` executable for tests: a stand-in for the Pi tool, which this machine lacks."""
    folder.mkdir(parents=True, exist_ok=True)
    fake = folder / "vcgencmd"
    fake.write_text("#!/bin/sh\n" + body + "\n")
    fake.chmod(0o755)
    return folder


# --------------------------------------------------------------------------- single images

def test_single_image_prints_top_k_and_latency(capsys, edge_bundle, fmnist_test_images):
    # Setup
    image = images_in(fmnist_test_images)[0]
    pre = json.loads((edge_bundle / "preprocess.json").read_text())
    labels = json.loads((edge_bundle / "labels.json").read_text())
    expected = reference_logits(edge_bundle / "model.onnx", image, pre)

    # Execute
    code, out, err = cli(capsys, edge_bundle, image, "--top-k", "2", "--threads", "1")

    # Assert
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["1.", labels[int(expected.argmax())].split()[0]]
    assert lines[2].lstrip().startswith("2.") and lines[3].startswith("latency: ")
    shown = float(lines[1].rsplit(maxsplit=1)[1].rstrip("%")) / 100
    p = np.exp(expected - expected.max())
    assert shown == pytest.approx(p.max() / p.sum(), abs=0.0006)  # printed to 0.1%


def test_options_between_bundle_and_image(edge_bundle, fmnist_test_images):
    """Issue #16.3: `runner.py EDGE --model fp32 IMAGE` said "unrecognized arguments: IMAGE"."""
    # Setup
    image = images_in(fmnist_test_images)[0]
    pre = json.loads((edge_bundle / "preprocess.json").read_text())
    labels = json.loads((edge_bundle / "labels.json").read_text())
    fp32 = reference_logits(edge_bundle / model_files(edge_bundle)["fp32"], image, pre)

    # Execute: the exact commands of the issue, as processes
    model_first = process(edge_bundle, "--model", "fp32", image)
    top_k_first = process(edge_bundle, "--top-k", "2", image)
    mixed = process("--threads", "1", edge_bundle, "--model", "fp32", image, "--top-k", "1")

    # Assert
    for result in (model_first, top_k_first, mixed):
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        assert result.stdout.splitlines()[0] == str(image)
    ranked = [line for line in model_first.stdout.splitlines() if line.lstrip()[:2] in ("1.", "2.", "3.")]
    assert len(ranked) == 3 and ranked[0].split()[1] == labels[int(fp32.argmax())].split()[0]
    assert sum(line.lstrip()[:2] in ("1.", "2.") for line in top_k_first.stdout.splitlines()) == 2
    assert model_files(edge_bundle)["fp32"] in model_first.stdout.splitlines()[-1]  # latency line
    assert [line.split()[1] for line in mixed.stdout.splitlines() if line.lstrip().startswith("1.")] \
        == [labels[int(fp32.argmax())].split()[0]]
    assert not any(line.lstrip().startswith("2.") for line in mixed.stdout.splitlines())


@pytest.mark.parametrize("model, precision", [("int8", "int8"), ("fp32", "fp32"), ("file", "fp32")])
def test_logits_follow_bundle_preprocessing(capsys, tmp_path, edge_bundle, fmnist_test_images,
                                            model, precision):
    # Setup: grayscale test images plus an RGB image of another size, so every step matters
    file = model_files(edge_bundle)[precision]
    model = file if model == "file" else model
    folder = tmp_path / "images"
    folder.mkdir()
    for image in images_in(fmnist_test_images)[:3]:
        shutil.copy(image, folder / image.name)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(folder / "rgb.png")
    pre = json.loads((edge_bundle / "preprocess.json").read_text())
    dump = tmp_path / "logits.json"

    # Execute
    code, _, err = cli(capsys, edge_bundle, folder, "--model", model, "--threads", "1",
                       "--dump-logits", dump)

    # Assert
    assert code == 0
    if precision == "int8" and file != "model.onnx":  # made, not deployed: one note says so
        assert err.startswith(f"note: {file} is the INT8 model") and err.count("\n") == 1
    else:
        assert err == ""
    got = load_dump(dump)
    assert got.paths == sorted(p.name for p in folder.iterdir())
    expected = [reference_logits(edge_bundle / file, folder / p, pre) for p in got.paths]
    np.testing.assert_allclose(got.values, np.stack(expected), rtol=0, atol=1e-5)


def test_grayscale_image_becomes_three_equal_channels(edge_bundle, fmnist_test_images):
    # Setup
    bundle = runner.load_bundle(edge_bundle)
    pre = bundle.preprocess
    image = Image.open(images_in(fmnist_test_images)[0])
    assert image.mode == "L"

    # Execute
    x = runner.to_tensor(image, pre)

    # Assert
    assert x.shape == (1, 3, pre.height, pre.width) and x.dtype == np.float32
    raw = x[0] * np.float32(pre.std)[:, None, None] + np.float32(pre.mean)[:, None, None]
    np.testing.assert_allclose(raw[0], raw[1], atol=1e-6)
    np.testing.assert_allclose(raw[1], raw[2], atol=1e-6)


def test_exif_orientation_is_applied_before_resizing(capsys, tmp_path, edge_bundle):
    """Issue #16.13: a portrait phone photo is seen upright, as the web page sees it."""
    # Setup
    photo, turned = exif_photo(tmp_path)
    bundle = runner.load_bundle(edge_bundle)
    dump = tmp_path / "logits.json"

    # Execute
    x_photo = runner.to_tensor(runner.load_image(photo), bundle.preprocess)
    x_turned = runner.to_tensor(runner.load_image(turned), bundle.preprocess)
    x_sideways = runner.to_tensor(Image.open(photo), bundle.preprocess)  # the tag ignored
    code, _, err = cli(capsys, edge_bundle, tmp_path, "--threads", "1", "--dump-logits", dump)

    # Assert: the tensor of the photo is the tensor of the turned pixels, to the bit
    assert np.array_equal(x_photo, x_turned)
    assert np.abs(x_photo - x_sideways).max() > 0.5  # the turn matters for this picture
    assert (code, err) == (0, "")
    got = load_dump(dump)
    assert got.paths == ["portrait.jpg", "portrait_turned.png"]
    assert np.array_equal(got.values[0], got.values[1])


# --------------------------------------------------------------------------- folders

def test_folder_reports_accuracy_against_label_folders(capsys, tmp_path, edge_bundle,
                                                       fmnist_test_images):
    # Setup
    labels = json.loads((edge_bundle / "labels.json").read_text())
    dump = tmp_path / "logits.npz"

    # Execute
    code, out, err = cli(capsys, edge_bundle, fmnist_test_images, "--threads", "1",
                         "--dump-logits", dump)

    # Assert: the printed accuracy is the share of images whose argmax is their folder's label
    assert (code, err) == (0, "")
    got = load_dump(dump)
    truth = np.array([label_of_folder(p.split("/")[0], labels) for p in got.paths])
    correct = int((got.values.argmax(axis=1) == truth).sum())
    n = len(images_in(fmnist_test_images))
    assert len(got.paths) == n
    assert f"accuracy: {correct}/{n} = " in out
    assert out.count("\n") >= n + 3  # one line per image, then the summary
    assert "skipped" not in out


def test_folder_named_by_label_index_and_flat_folder(capsys, tmp_path, edge_bundle,
                                                     fmnist_test_images):
    # Setup: two images per class under "0".."9", and the same images in one flat folder
    labels = json.loads((edge_bundle / "labels.json").read_text())
    by_index, flat = tmp_path / "by_index", tmp_path / "flat"
    flat.mkdir()
    for folder in sorted(p for p in fmnist_test_images.iterdir() if p.is_dir()):
        index = label_of_folder(folder.name, labels)
        (by_index / str(index)).mkdir(parents=True)
        for image in images_in(folder)[:2]:
            shutil.copy(image, by_index / str(index) / image.name)
            shutil.copy(image, flat / f"{index}_{image.name}")
    dump = tmp_path / "logits.npz"

    # Execute
    code, out, _ = cli(capsys, edge_bundle, by_index, "--threads", "1", "--dump-logits", dump)
    flat_code, flat_out, _ = cli(capsys, edge_bundle, flat, "--threads", "1")

    # Assert
    assert code == flat_code == 0
    got = load_dump(dump)
    truth = np.array([int(p.split("/")[0]) for p in got.paths])
    correct = int((got.values.argmax(axis=1) == truth).sum())
    assert f"accuracy: {correct}/{len(truth)} = " in out
    assert "accuracy: n/a" in flat_out


def test_folder_skips_unreadable_images_and_names_them(capsys, tmp_path, edge_bundle,
                                                       fmnist_test_images):
    """Issue #16.13: one damaged file used to stop the whole folder."""
    # Setup: three readable images per class, then a damaged and a truncated file among them
    labels = json.loads((edge_bundle / "labels.json").read_text())
    folder = tmp_path / "photos"
    for class_folder in sorted(p for p in fmnist_test_images.iterdir() if p.is_dir()):
        (folder / class_folder.name).mkdir(parents=True)
        for image in images_in(class_folder)[:3]:
            shutil.copy(image, folder / class_folder.name / image.name)
    first = sorted(p for p in folder.iterdir())[0]
    (first / "bad.png").write_bytes(b"not a png")
    whole = images_in(fmnist_test_images)[0].read_bytes()
    (folder / "Trouser" / "cut.png").write_bytes(whole[:len(whole) // 2])
    dump = tmp_path / "logits.npz"

    # Execute
    code, out, err = cli(capsys, edge_bundle, folder, "--threads", "1", "--dump-logits", dump)

    # Assert: counted and named at the end; accuracy over the 30 images that could be read
    assert (code, err) == (0, "")
    bad, cut = f"{first.name}/bad.png", "Trouser/cut.png"
    assert f"{bad}  skipped, cannot read it: " in out
    assert f"skipped 2 unreadable images, not counted below: {bad}, {cut}\n" in out
    got = load_dump(dump)
    assert len(got.paths) == 30 and bad not in got.paths and cut not in got.paths
    truth = np.array([label_of_folder(p.split("/")[0], labels) for p in got.paths])
    correct = int((got.values.argmax(axis=1) == truth).sum())
    assert f"accuracy: {correct}/30 = " in out
    assert "30 images (" in out


def test_folder_names_a_few_skipped_images_and_counts_the_rest(capsys, tmp_path, edge_bundle,
                                                               fmnist_test_images):
    # Setup
    shutil.copy(images_in(fmnist_test_images)[0], tmp_path / "good.png")
    for i in range(8):
        (tmp_path / f"bad{i}.png").write_bytes(b"")

    # Execute
    code, out, _ = cli(capsys, edge_bundle, tmp_path, "--threads", "1")

    # Assert
    assert code == 0
    assert ("skipped 8 unreadable images, not counted below: bad0.png, bad1.png, bad2.png, "
            "bad3.png, bad4.png and 3 more\n") in out
    assert "1 images (" in out and "accuracy: n/a" in out


def test_folder_of_only_unreadable_images_is_an_error(capsys, tmp_path, edge_bundle):
    # Setup
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"not an image")

    # Execute
    code, _, err = cli(capsys, edge_bundle, tmp_path)

    # Assert
    assert code == 2
    assert err.count("\n") == 1 and "none of the 2 images" in err


# --------------------------------------------------------------------------- the manifest's models

@pytest.mark.parametrize("deployed, int8, old", [
    ("int8", True, False),   # INT8 deployed: model.onnx INT8, model_fp32.onnx
    ("fp32", True, False),   # INT8 made, not deployed: model.onnx FP32, model_int8.onnx
    ("fp32", False, False),  # no INT8 model
    ("int8", True, True),    # bundles from before "models": the old rule
    ("fp32", False, True),
])
def test_model_choice_follows_the_manifest(deployed, int8, old, capsys, tmp_path, edge_bundle,
                                           fmnist_test_images):
    """Issue #16.4: --model fp32|int8 runs the file manifest.json's models names."""
    # Setup
    source = model_files(edge_bundle)
    reason = "INT8 lost 2.1 points of accuracy (limit 1.0)" if int8 else "made without --int8"
    bundle = layout(edge_bundle, tmp_path, deployed=deployed, int8=int8, old=old, reason=reason)
    image = images_in(fmnist_test_images)[0]
    pre = json.loads((edge_bundle / "preprocess.json").read_text())
    expected = {p: reference_logits(edge_bundle / source[p], image, pre) for p in ("fp32", "int8")}
    runs = {choice: tmp_path / f"{choice}.json" for choice in ("default", "fp32", "int8")}

    # Execute
    results = {}
    for choice, dump in runs.items():
        flags = [] if choice == "default" else ["--model", choice]
        results[choice] = cli(capsys, bundle, image, *flags, "--threads", "1", "--dump-logits", dump)

    # Assert
    deployed_logits = load_dump(runs["default"]).values[0]
    np.testing.assert_allclose(deployed_logits, expected[deployed], atol=1e-5)
    np.testing.assert_allclose(load_dump(runs["fp32"]).values[0], expected["fp32"], atol=1e-5)
    assert results["default"][0] == results["fp32"][0] == 0
    assert results["default"][2] == results["fp32"][2] == ""
    code, _, err = results["int8"]
    if int8:
        assert code == 0
        np.testing.assert_allclose(load_dump(runs["int8"]).values[0], expected["int8"], atol=1e-5)
        if deployed == "int8":
            assert err == ""
        else:  # runs, and says in one line that it was not deployed and why
            assert err.count("\n") == 1 and err.startswith("note: model_int8.onnx is the INT8 model")
            assert "not deployed" in err and reason in err
    else:
        assert code == 2 and err.count("\n") == 1 and "no INT8 model" in err
        assert "did not quantize" not in err
        if not old:
            assert reason in err  # the manifest's deployed_reason


def test_int8_made_for_another_cpu_says_which_target_to_use(capsys, tmp_path, edge_bundle,
                                                            fmnist_test_images):
    # Setup
    here = runner.machine_family()
    if here is None:
        pytest.skip(f"{platform.machine()} is neither x86_64 nor arm64")
    other = "arm64" if here == "x86_64" else "x86_64"
    foreign = layout(edge_bundle, tmp_path / "a", deployed="int8", target=other)
    native = layout(edge_bundle, tmp_path / "b", deployed="int8", target=here)
    # platform.machine()'s spelling of the other family: the same target
    spelled = layout(edge_bundle, tmp_path / "c", deployed="int8",
                     target={"arm64": "aarch64", "x86_64": "AMD64"}[other])
    image = images_in(fmnist_test_images)[0]

    # Execute
    code, _, err = cli(capsys, foreign, image, "--threads", "1")
    fp32_code, _, fp32_err = cli(capsys, foreign, image, "--model", "fp32", "--threads", "1")
    native_code, _, native_err = cli(capsys, native, image, "--threads", "1")
    spelled_code, _, spelled_err = cli(capsys, spelled, image, "--threads", "1")

    # Assert
    assert code == fp32_code == native_code == spelled_code == 0
    assert err.count("\n") == 1 and err.startswith(f"note: the INT8 model was made for {other}")
    assert f"--int8 --target {here}" in err
    assert spelled_err == err
    assert fp32_err == native_err == ""


def test_cpu_name_matches_compress_host():
    from compress.host import cpu_name

    assert runner.cpu_name() == cpu_name()


# --------------------------------------------------------------------------- bench

def test_bench_json_record(capsys, tmp_path, edge_bundle):
    # Setup
    json_out = tmp_path / "bench.json"

    # Execute
    code, out, err = cli(capsys, edge_bundle, "--bench", "--runs", "20", "--threads", "1",
                         "--power-watts", "4.5", "--json", "--json-out", json_out)

    # Assert
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert json.loads(json_out.read_text()) == report
    assert (report["schema_version"], report["kind"], report["model"]) == (1, "bench",
                                                                          "model.onnx")
    assert report["precision"] == runner.load_bundle(edge_bundle).precision
    assert report["environment"] == {"machine": platform.machine(),
                                     "cpu": report["environment"]["cpu"],
                                     "python": platform.python_version(),
                                     "onnxruntime": ort.__version__, "threads": 1}
    m = report["metrics"]
    assert set(m) == {"latency_ms_median", "latency_ms_p90", "latency_batch", "latency_runs",
                      "threads",
                      "throughput_ips", "throughput_batch", "size_bytes",
                      "energy_per_inference_j", "energy_method"}
    assert 0 < m["latency_ms_median"] <= m["latency_ms_p90"]
    assert (m["latency_batch"], m["threads"], m["throughput_batch"]) == (1, 1, 1)
    assert m["size_bytes"] == (edge_bundle / "model.onnx").stat().st_size
    assert m["energy_per_inference_j"] == pytest.approx(4.5 / m["throughput_ips"], rel=1e-9)
    assert m["energy_method"] == "user-power: 4.5 watts × time"
    assert (m["latency_runs"], report["warmup_runs"]) == (20, runner.WARMUP_RUNS)
    assert report["power"] is None


def test_bench_without_power_meter_and_default_runs(capsys, edge_bundle):
    # Execute
    start = time.perf_counter()
    code, out, _ = cli(capsys, edge_bundle, "--bench", "--model", "fp32", "--threads", "1",
                       "--json")
    seconds = time.perf_counter() - start

    # Assert
    assert code == 0
    report = json.loads(out)
    m = report["metrics"]
    fp32 = model_files(edge_bundle)["fp32"]
    assert (report["model"], report["precision"]) == (fp32, "fp32")
    assert m["size_bytes"] == (edge_bundle / fp32).stat().st_size
    assert (m["energy_per_inference_j"], m["energy_method"]) == (None, "none")
    assert m["latency_runs"] >= runner.MIN_RUNS
    assert seconds >= runner.MIN_SECONDS  # timed for at least that long by default


# --------------------------------------------------------------------------- bench: Pi 5 PMIC

def test_pmic_parser_pairs_rails_by_name_on_a_recorded_pi5():
    # Setup
    text = PMIC_RECORDING.read_text()
    shuffled = "\n".join(reversed(text.splitlines()))  # currents after voltages
    mailbox = text.replace("\n", "\x00")  # the firmware mailbox separates lines with NULs

    # Execute
    rails = runner.parse_pmic(text)

    # Assert
    assert sorted(rails) == PMIC_RECORDING_RAILS  # EXT5V_V and BATT_V have no current
    assert rails["VDD_CORE"] == pytest.approx(6.22421 * 0.861733, rel=1e-12)  # channels 7 and 15
    assert sum(rails.values()) == pytest.approx(PMIC_RECORDING_WATTS, rel=1e-12)
    assert runner.parse_pmic(shuffled) == rails
    assert runner.parse_pmic(mailbox) == rails
    assert runner.parse_pmic('error=2 error_msg="Command not registered"') == {}
    assert runner.parse_pmic(" VDD_CORE_A current(7)=nanA\n VDD_CORE_V volt(15)=0.8V") == {}


def test_pmic_energy_integrates_power_over_time():
    # Setup: idle at 2 W; during the loop 3 W rising to 5 W in the first second, then 5 W
    idle = [(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)]
    loop = [(10.0, 3.0), (11.0, 5.0), (13.0, 5.0)]  # trapezoids: 4 J + 10 J over 3 s

    # Execute
    energy = runner.pmic_energy(idle, loop, loop_seconds=3.0, inferences=6)

    # Assert
    assert energy["idle_watts"] == pytest.approx(2.0)
    assert energy["loop_watts"] == pytest.approx(14 / 3)
    assert energy["energy_per_inference_gross_j"] == pytest.approx(14 / 3 * 3.0 / 6)
    assert energy["energy_per_inference_net_j"] == pytest.approx((14 / 3 - 2.0) * 3.0 / 6)
    assert (energy["idle_samples"], energy["loop_samples"]) == (3, 3)
    with pytest.raises(runner.RunnerError, match="only 1 PMIC reading"):
        runner.mean_watts([(0.0, 1.0)])


def test_bench_power_pmic_on_a_recorded_pi5(capsys, monkeypatch, tmp_path, edge_bundle):
    # Setup: `vcgencmd pmic_read_adc` replays the recorded Pi 5 output at every reading, so
    # the power is known: the rails draw PMIC_RECORDING_WATTS at idle and under load alike
    fake = write_fake_vcgencmd(tmp_path / "bin", f'[ "$1" = pmic_read_adc ] || exit 1\n'
                                                 f'cat "{PMIC_RECORDING}"')
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    json_out = tmp_path / "bench.json"

    # Execute
    code, out, err = cli(capsys, edge_bundle, "--bench", "--power", "pmic", "--runs", "20",
                         "--threads", "1", "--json-out", json_out)

    # Assert: energy = the known power × the loop's duration / inferences; net of idle is 0
    assert (code, err) == (0, "")
    report = json.loads(json_out.read_text())
    m, power = report["metrics"], report["power"]
    assert power["method"] == "pmic" and power["rails"] == PMIC_RECORDING_RAILS
    assert power["idle_watts"] == pytest.approx(PMIC_RECORDING_WATTS, rel=1e-12)
    assert power["loop_watts"] == pytest.approx(PMIC_RECORDING_WATTS, rel=1e-12)
    assert power["loop_seconds"] >= runner.PMIC_MIN_SECONDS  # longer than 20 runs take
    assert m["latency_runs"] == power["inferences"] >= 20
    assert power["idle_seconds"] == pytest.approx(runner.PMIC_IDLE_SECONDS, abs=0.5)
    assert power["idle_samples"] >= 5 and power["loop_samples"] >= 10
    assert m["energy_per_inference_j"] == power["energy_per_inference_gross_j"] == pytest.approx(
        PMIC_RECORDING_WATTS * power["loop_seconds"] / m["latency_runs"], rel=1e-9)
    assert power["energy_per_inference_net_j"] == pytest.approx(0.0, abs=1e-9)
    assert m["energy_method"].startswith("pmic: V×I summed over 12 PMIC rails")
    assert "USB" in m["energy_method"] and "USB devices, HATs" in power["not_counted"]
    assert "energy (pmic, measured): " in out and " J net of idle" in out
    assert "energy blind spot: the 5 V loads (USB devices, HATs, the fan on the 5V rail)" in out


# --------------------------------------------------------------------------- bad input

def _fp32_only(bundle: Path, tmp: Path) -> Path:
    return layout(bundle, tmp, deployed="fp32", int8=False, old=True)


def _second_model(bundle: Path) -> str:
    """The model file that is not model.onnx."""
    models = model_files(bundle)
    return next(f for f in (models["fp32"], models["int8"]) if f and f != "model.onnx")


def _tampered_model(b: Path, i: Path, t: Path):
    _flip_byte((c := _copy(b, t)) / "model.onnx")
    return [c, i], "model.onnx in"


def _edited_preprocess(b: Path, i: Path, t: Path):
    ((c := _copy(b, t)) / "preprocess.json").write_text("{}")
    return [c, i], "preprocess.json in"


def _missing_labels(b: Path, i: Path, t: Path):
    ((c := _copy(b, t)) / "labels.json").unlink()
    return [c, i], "labels.json is missing"


def _unlisted_labels(b: Path, i: Path, t: Path):
    ((c := _copy(b, t)) / "labels.json").unlink()
    rehash(c)
    return [c, i], "labels.json is missing"


def _missing_model(b: Path, i: Path, t: Path):
    name = _second_model(b)
    ((c := _copy(b, t)) / name).unlink()
    return [c, i], f"{name} is missing"


def _corrupt_image(b: Path, i: Path, t: Path):
    (t / "bad.png").write_bytes(b"not a png")
    return [b, t / "bad.png"], "cannot read image"


def _truncated_image(b: Path, i: Path, t: Path):
    data = i.read_bytes()
    (t / "cut.png").write_bytes(data[:len(data) // 2])
    return [b, t / "cut.png"], "cannot read image"


def _no_vcgencmd(b: Path, i: Path, t: Path):
    return [b, "--bench", "--power", "pmic"], "needs vcgencmd, which is not on PATH"


def _failing_vcgencmd(b: Path, i: Path, t: Path):
    write_fake_vcgencmd(t, 'echo "vcgencmd: no PMIC here" >&2\nexit 1')
    return [b, "--bench", "--power", "pmic"], "vcgencmd pmic_read_adc failed (exit 1: vcgencmd: no PMIC here)"


def _vcgencmd_without_pmic(b: Path, i: Path, t: Path):
    # An error line on stdout and exit 0, as vcgencmd answers a command the firmware lacks
    write_fake_vcgencmd(t, "echo 'error=2 error_msg=\"Command not registered\"'")
    return [b, "--bench", "--power", "pmic"], "gave no rail with both a current"


# Each case: (bundle, an image, an empty folder) -> (arguments, words the error line contains).
# The PATH of every case is the empty folder alone, so vcgencmd is there only when a case puts it.
BAD_INPUTS = {
    "missing bundle": lambda b, i, t: ([t / "nowhere", i], "not found"),
    "folder without manifest": lambda b, i, t: ([t, i], "no manifest.json"),
    "tampered model": _tampered_model,
    "edited preprocess.json": _edited_preprocess,
    "missing labels.json": _missing_labels,
    "labels.json not in manifest": _unlisted_labels,
    "missing model file": _missing_model,
    "corrupt image": _corrupt_image,
    "truncated image": _truncated_image,
    "empty folder": lambda b, i, t: ([b, t], "no images"),
    "missing image": lambda b, i, t: ([b, t / "none.png"], "not found"),
    "unknown model": lambda b, i, t: ([b, i, "--model", "fp16"], "--model fp16"),
    "model that is not a model": lambda b, i, t: ([b, i, "--model", "labels.json"],
                                                  "cannot load labels.json"),
    "int8 of an FP32 bundle": lambda b, i, t: ([_fp32_only(b, t), i, "--model", "int8"],
                                               "no INT8 model"),
    "models names a missing file": lambda b, i, t: (
        [_edit_manifest(b, t, models={"fp32": "model_fp16.onnx", "int8": "model.onnx"}), i],
        "models.fp32 is 'model_fp16.onnx', which is not one of the bundle's files"),
    "models not a mapping": lambda b, i, t: ([_edit_manifest(b, t, models=["model.onnx"]), i],
                                             '"models" must be'),
    "precision disagrees with models": lambda b, i, t: (
        [_edit_manifest(b, t, precision="fp32"), i], "model.onnx must be the model of that precision"),
    "zero threads": lambda b, i, t: ([b, i, "--threads", "0"], "--threads"),
    "threads not a number": lambda b, i, t: ([b, i, "--threads", "four"], "--threads"),
    "zero top-k": lambda b, i, t: ([b, i, "--top-k", "0"], "--top-k"),
    "negative power": lambda b, i, t: ([b, "--bench", "--power-watts", "-3"], "--power-watts"),
    "power without bench": lambda b, i, t: ([b, i, "--power-watts", "3"], "goes with --bench"),
    "pmic without bench": lambda b, i, t: ([b, i, "--power", "pmic"], "--power goes with --bench"),
    "unknown power source": lambda b, i, t: ([b, "--bench", "--power", "rapl"], "choose from 'pmic'"),
    "pmic and watts": lambda b, i, t: ([b, "--bench", "--power", "pmic", "--power-watts", "5"],
                                       "not both"),
    "pmic without vcgencmd": _no_vcgencmd,
    "pmic, vcgencmd fails": _failing_vcgencmd,
    "pmic, board without PMIC": _vcgencmd_without_pmic,
    "dump suffix": lambda b, i, t: ([b, i, "--dump-logits", t / "x.txt"], ".npz or .json"),
    "unknown flag": lambda b, i, t: ([b, i, "--fast"], "--fast"),
    "nothing to do": lambda b, i, t: ([b], "nothing to do"),
    "two modes": lambda b, i, t: ([b, i, "--bench"], "only one of"),
    "two images": lambda b, i, t: ([b, i, i], "unrecognized arguments"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_status_2(case, capsys, monkeypatch, tmp_path, edge_bundle,
                                               fmnist_test_images):
    # Setup
    work = tmp_path / "work"
    work.mkdir()
    args, words = BAD_INPUTS[case](edge_bundle, images_in(fmnist_test_images)[0], work)
    monkeypatch.setenv("PATH", str(work))

    # Execute
    code, out, err = cli(capsys, *args)

    # Assert
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert words in err


def test_camera_without_camera_library_says_what_to_install(capsys, edge_bundle):
    if importlib.util.find_spec("cv2") or importlib.util.find_spec("picamera2"):
        pytest.skip("a camera library is installed here; this checks the message without one")
    code, _, err = cli(capsys, edge_bundle, "--camera", "--frames", "1")
    assert code == 2
    assert err.count("\n") == 1 and "picamera2" in err and "opencv" in err.lower()


def test_tampered_bundle_process_exits_2_without_traceback(tmp_path, edge_bundle,
                                                           fmnist_test_images):
    # Setup
    bundle = _copy(edge_bundle, tmp_path)
    _flip_byte(bundle / "model.onnx")

    # Execute: the real process, as a user on a Pi runs it
    result = process(bundle, images_in(fmnist_test_images)[0])

    # Assert
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "model.onnx" in result.stderr and "sha256" in result.stderr
