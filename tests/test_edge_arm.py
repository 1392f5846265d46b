"""The Raspberry Pi runner (edge_demo/pi/runner.py): its command line, and the ARM check.

The ARM check runs the runner inside an emulated 64-bit Arm Debian userland (tests/arm_rootfs.py,
Cortex-A76 as in a Raspberry Pi 5) and compares its logits with the same runner on this machine,
on real Fashion-MNIST test images, for the FP32 and the INT8 model of a real edge bundle.

Fixtures from tests/conftest.py: `edge_bundle` (an edge/ folder from the compress pipeline, with
an INT8 model.onnx and model_fp32.onnx) and `fmnist_test_images` (class subfolders named by
label holding at least 200 Fashion-MNIST test images).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
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
MIN_IMAGES = 200
MAX_IMAGES = 300  # emulation runs about 100x slower than native; this bounds the check's time
# How close the emulated aarch64 run must come to the x86 run (see Tolerance).
# FP32: the two machines run the same graph with different SIMD kernels (AVX2/AVX-512 vs NEON), so
# sums accumulate in another order: float32 rounding noise, ~1e-5 on logits of magnitude ~10.
# 1e-3 leaves room for that and still catches any real divergence.
FP32_ATOL = 1e-3
# INT8: the integer arithmetic is exact on both machines, but the float rescaling between layers
# (requantization, HardSigmoid, Add, Mul) is computed with each CPU's own SIMD code, and now and
# then rounds a tie the other way. One activation then moves by one step, and the layers after it
# spread that a little: on smoke bundles, 0.4% to 0.8% of images differed at all, by at most 8
# output steps (of 2000 images). So: most images bit-identical, the rest within a few steps.
INT8_MAX_STEPS = 16
INT8_MIN_IDENTICAL = 0.95
THREADS = "1"  # thread count does not change these kernels' results; 1 is fastest under QEMU


def _load(name: str, path: Path):
    """Import a file as a module, whatever pytest's import mode and sys.path are."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


runner = _load("pi_runner", RUNNER)
arm_rootfs = _load("arm_rootfs", HERE / "arm_rootfs.py")


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


@dataclass(frozen=True)
class Tolerance:
    """What "the same predictions" means for one comparison.

    atol bounds every logit's difference. An image's top-1 class must be the same unless the
    reference's two best logits lie within 2 * atol of each other: such a tie is decided by
    noise the tolerance allows (INT8 logits are quantized, and about 1% of images have their two
    best logits exactly equal). min_identical is the share of images whose logits must be
    bit-identical.
    """

    atol: float
    min_identical: float = 0.0


def compare_logits(reference: Logits, candidate: Logits, tol: Tolerance) -> list[str]:
    """What differs between two runs on the same images beyond tol: empty when they agree."""
    if reference.paths != candidate.paths:
        return [f"different images: {len(reference.paths)} vs {len(candidate.paths)} paths, "
                f"first {reference.paths[:1]} vs {candidate.paths[:1]}"]
    if reference.values.shape != candidate.values.shape:
        return [f"logits of shape {reference.values.shape} vs {candidate.values.shape}"]
    problems = []
    ref = reference.values.astype(np.float64)
    diff = np.abs(ref - candidate.values.astype(np.float64))
    best_two = np.sort(ref, axis=1)[:, -2:]
    tied = best_two[:, 1] - best_two[:, 0] <= 2 * tol.atol
    flipped = np.flatnonzero((ref.argmax(axis=1) != candidate.values.argmax(axis=1)) & ~tied)
    if flipped.size:
        i = flipped[0]
        problems.append(f"argmax differs on {flipped.size}/{len(ref)} images, first "
                        f"{reference.paths[i]}: class {ref[i].argmax()} vs "
                        f"{candidate.values[i].argmax()}")
    worst = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    if not worst <= tol.atol:
        i = int(np.argmax(np.nan_to_num(diff, nan=np.inf).max(axis=1)))
        problems.append(f"max abs logit diff {worst:.3g} > {tol.atol:.3g} "
                        f"(at {reference.paths[i]})")
    identical = float((diff.max(axis=1) == 0).mean())
    if identical < tol.min_identical:
        problems.append(f"only {identical:.1%} of images have identical logits, "
                        f"need {tol.min_identical:.0%}")
    return problems


def output_step(model: Path) -> float | None:
    """The quantization step of the model's output: the scale of the DequantizeLinear that
    produces it, or None when the output is not dequantized."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(model)).graph
    out = graph.output[0].name
    scales = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if out in node.output and node.op_type == "DequantizeLinear" and node.input[1] in scales:
            return float(np.max(scales[node.input[1]]))
    return None


def tolerance(bundle: Path, model: str) -> Tolerance:
    if model == "fp32":
        return Tolerance(atol=FP32_ATOL)
    step = output_step(bundle / "model.onnx")
    assert step is not None, "model.onnx's output is not dequantized: is it INT8 (QDQ)?"
    return Tolerance(atol=INT8_MAX_STEPS * step, min_identical=INT8_MIN_IDENTICAL)


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


@pytest.fixture(scope="module")
def check_images(fmnist_test_images, tmp_path_factory) -> Path:
    """The fixture's images, or a class-balanced subset of MAX_IMAGES when it holds more."""
    images = images_in(fmnist_test_images)
    assert len(images) >= MIN_IMAGES, f"fmnist_test_images holds only {len(images)} images"
    if len(images) <= MAX_IMAGES:
        return fmnist_test_images
    subset = tmp_path_factory.mktemp("fmnist_subset")
    by_class: dict[str, list[Path]] = {}
    for image in images:
        by_class.setdefault(image.parent.name, []).append(image)
    picked, rank = [], 0
    while len(picked) < MAX_IMAGES:
        picked += [group[rank] for group in by_class.values() if rank < len(group)]
        rank += 1
    for image in picked[:MAX_IMAGES]:
        (subset / image.parent.name).mkdir(exist_ok=True)
        shutil.copy2(image, subset / image.parent.name / image.name)
    return subset


def run_x86(bundle: Path, images: Path, model: str, out: Path) -> Logits:
    result = subprocess.run([sys.executable, str(RUNNER), str(bundle), str(images),
                             "--model", model, "--threads", THREADS, "--dump-logits", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return load_dump(out)


@pytest.fixture(scope="module")
def x86_logits(edge_bundle, check_images, tmp_path_factory) -> dict[str, Logits]:
    out = tmp_path_factory.mktemp("x86_logits")
    return {model: run_x86(edge_bundle, check_images, model, out / f"{model}.npz")
            for model in ("fp32", "int8")}


@pytest.fixture(scope="module")
def arm_python():
    try:
        return arm_rootfs.ensure_arm_python(arm_rootfs.host_pins(),
                                            log=lambda m: print(m, file=sys.stderr))
    except arm_rootfs.ArmRootfsError as e:
        pytest.fail(f"ARM check cannot run: {e}", pytrace=False)


# --------------------------------------------------------------------------- the ARM check

@pytest.mark.slow
def test_runner_benches_on_emulated_aarch64(arm_python, edge_bundle):
    # Execute
    result = arm_python.run([str(RUNNER), str(edge_bundle), "--bench", "--runs", "3",
                             "--threads", THREADS, "--json"])

    # Assert: a real aarch64 python with the host's onnxruntime, and the bench record works
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["environment"]["machine"] == "aarch64"
    assert "Cortex-A76" in report["environment"]["cpu"]
    assert report["environment"]["onnxruntime"] == ort.__version__
    assert report["metrics"]["latency_ms_median"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["fp32", "int8"])
def test_emulated_arm_gives_the_same_logits(model, arm_python, x86_logits, edge_bundle,
                                            check_images, tmp_path):
    # Setup
    tol = tolerance(edge_bundle, model)
    out = tmp_path / f"arm_{model}.npz"

    # Execute
    result = arm_python.run([str(RUNNER), str(edge_bundle), str(check_images), "--model", model,
                             "--threads", THREADS, "--dump-logits", str(out)])

    # Assert
    assert result.returncode == 0, result.stderr
    arm = load_dump(out)
    reference = x86_logits[model]
    assert len(arm.paths) >= MIN_IMAGES
    if arm.values.shape == reference.values.shape:
        diff = np.abs(arm.values - reference.values).max(axis=1)
        same_top = (arm.values.argmax(axis=1) == reference.values.argmax(axis=1)).mean()
        print(f"{model}: {len(diff)} images, x86 vs aarch64: max abs logit diff {diff.max():.3g} "
              f"(tolerance {tol.atol:.3g}), identical {(diff == 0).mean():.1%}, "
              f"same argmax {same_top:.1%}")
    assert compare_logits(reference, arm, tol) == []


def test_comparison_accepts_identical_and_rejects_perturbed_logits(x86_logits, edge_bundle):
    # Setup: real logits of the INT8 model, and copies that diverge in the ways that matter
    reference = x86_logits["int8"]
    tol = tolerance(edge_bundle, "int8")
    values = reference.values
    ordered = np.sort(values, axis=1)
    clear = int(np.argmax(ordered[:, -1] - ordered[:, -2]))  # the least tied image
    top2 = np.argsort(-values[clear])[:2]
    swapped = values.copy()
    swapped[clear, top2] = swapped[clear, top2[::-1]]  # now predicts its runner-up
    nudged = values.copy()
    nudged[clear, top2[1]] -= 2 * tol.atol  # lowers a non-top logit: argmax unchanged
    step = tol.atol / INT8_MAX_STEPS
    spread = values.copy()
    spread[::10, 0] += step  # one step on every tenth image: within atol, but not rare
    reordered = Logits(paths=reference.paths[::-1], values=values[::-1])

    # Execute
    same = compare_logits(reference, Logits(reference.paths, values.copy()), tol)
    after_swap = compare_logits(reference, Logits(reference.paths, swapped), tol)
    after_nudge = compare_logits(reference, Logits(reference.paths, nudged), tol)
    after_spread = compare_logits(reference, Logits(reference.paths, spread), tol)
    after_reorder = compare_logits(reference, reordered, tol)

    # Assert
    assert same == []
    assert any("argmax differs on 1/" in p for p in after_swap), after_swap
    assert len(after_nudge) == 1 and "max abs logit diff" in after_nudge[0]
    assert len(after_spread) == 1 and "identical logits" in after_spread[0]
    assert after_reorder and "different images" in after_reorder[0]


def test_comparison_forgives_a_flip_only_between_tied_classes(x86_logits):
    # Setup: an image whose two best logits are equal, as INT8 logits often are
    reference = x86_logits["fp32"]
    values = reference.values.copy()
    values[0, :2] = [5.0, 5.0]
    values[0, 2:] = 0.0
    tie = Logits(reference.paths, values)
    broken = values.copy()
    broken[0, 1] += 5e-4  # within atol, and now class 1 wins the tie
    decided = values.copy()
    decided[0, 0] -= 0.5  # far outside atol

    # Execute
    tie_broken = compare_logits(tie, Logits(reference.paths, broken), Tolerance(atol=1e-3))
    real_change = compare_logits(tie, Logits(reference.paths, decided), Tolerance(atol=1e-3))

    # Assert
    assert tie_broken == []
    assert any("max abs logit diff" in p for p in real_change)


def test_arm_check_catches_an_altered_model(x86_logits, edge_bundle, check_images, tmp_path):
    # Setup: a bundle whose FP32 model adds a bias to one class, re-hashed so it verifies
    import onnx
    from onnx import helper, numpy_helper
    reference = x86_logits["fp32"]
    values = reference.values
    cls = int(np.bincount(values.argmax(axis=1), minlength=values.shape[1]).argmin())
    gaps = values.max(axis=1) - values[:, cls]
    bump = float(np.median(gaps[gaps > 0])) + 1e-3  # enough to flip about half the images
    altered = tmp_path / "edge"
    shutil.copytree(edge_bundle, altered)
    model = onnx.load(str(altered / "model_fp32.onnx"))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{out}_unbumped" if o == out else o for o in node.output]
    delta = np.zeros((1, values.shape[1]), dtype=np.float32)
    delta[0, cls] = bump
    model.graph.initializer.append(numpy_helper.from_array(delta, "class_bump"))
    model.graph.node.append(helper.make_node("Add", [f"{out}_unbumped", "class_bump"], [out]))
    onnx.save(model, str(altered / "model_fp32.onnx"))
    rehash(altered)

    # Execute
    diverged = run_x86(altered, check_images, "fp32", tmp_path / "altered.npz")

    # Assert: the runner accepts the bundle; the comparison does not accept its predictions
    problems = compare_logits(reference, diverged, Tolerance(atol=FP32_ATOL))
    assert any("argmax differs" in p for p in problems), problems
    assert any("max abs logit diff" in p for p in problems), problems


def test_missing_qemu_fails_with_install_hint(monkeypatch, tmp_path):
    # Setup: a PATH without the tools (debootstrap's /usr/sbin fallback aside)
    monkeypatch.setenv("PATH", str(tmp_path))

    # Execute
    with pytest.raises(arm_rootfs.ArmRootfsError) as error:
        arm_rootfs.ensure_arm_python({"numpy": "0"}, cache=tmp_path / "cache")

    # Assert
    assert "qemu-aarch64-static is not installed" in str(error.value)
    assert "install" in str(error.value) and "qemu-user-static" in str(error.value)
    assert not (tmp_path / "cache").exists()


def test_interrupted_build_never_looks_complete(tmp_path):
    # Setup: a build that writes part of its result, then fails
    def build(folder: Path):
        (folder / "half.txt").write_text("x")
        raise KeyboardInterrupt

    # Execute
    with pytest.raises(KeyboardInterrupt):
        arm_rootfs._build_atomically(tmp_path / "result", build, log=print)
    done = arm_rootfs._build_atomically(tmp_path / "result",
                                        lambda f: (f / "whole.txt").write_text("y"), log=print)

    # Assert: nothing of the failed build is left; the next one completes in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    assert sorted(p.name for p in done.iterdir()) == ["whole.txt"]


# --------------------------------------------------------------------------- the runner

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


@pytest.mark.parametrize("model, file", [("int8", "model.onnx"), ("fp32", "model_fp32.onnx"),
                                         ("model_fp32.onnx", "model_fp32.onnx")])
def test_logits_follow_bundle_preprocessing(capsys, tmp_path, edge_bundle, fmnist_test_images,
                                            model, file):
    # Setup: grayscale test images plus an RGB image of another size, so every step matters
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
    assert (code, err) == (0, "")
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


def test_folder_reports_accuracy_against_label_folders(capsys, tmp_path, edge_bundle,
                                                       check_images):
    # Setup
    labels = json.loads((edge_bundle / "labels.json").read_text())
    dump = tmp_path / "logits.npz"

    # Execute
    code, out, err = cli(capsys, edge_bundle, check_images, "--threads", "1",
                         "--dump-logits", dump)

    # Assert: the printed accuracy is the share of images whose argmax is their folder's label
    assert (code, err) == (0, "")
    got = load_dump(dump)
    truth = np.array([label_of_folder(p.split("/")[0], labels) for p in got.paths])
    correct = int((got.values.argmax(axis=1) == truth).sum())
    n = len(images_in(check_images))
    assert len(got.paths) == n
    assert f"accuracy: {correct}/{n} = " in out
    assert out.count("\n") >= n + 3  # one line per image, then the summary


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
    assert report["model"] == "model_fp32.onnx"
    assert m["size_bytes"] == (edge_bundle / "model_fp32.onnx").stat().st_size
    assert (m["energy_per_inference_j"], m["energy_method"]) == (None, "none")
    assert m["latency_runs"] >= runner.MIN_RUNS
    assert seconds >= runner.MIN_SECONDS  # timed for at least that long by default


def _copy(bundle: Path, tmp: Path) -> Path:
    copy = tmp / "edge"
    shutil.copytree(bundle, copy)
    return copy


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _fp32_only(bundle: Path, tmp: Path) -> Path:
    copy = _copy(bundle, tmp)
    (copy / "model_fp32.onnx").replace(copy / "model.onnx")
    (copy / "model.ort").unlink(missing_ok=True)
    rehash(copy)
    return copy


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
    ((c := _copy(b, t)) / "model_fp32.onnx").unlink()
    return [c, i], "model_fp32.onnx is missing"


def _corrupt_image(b: Path, i: Path, t: Path):
    (t / "bad.png").write_bytes(b"not a png")
    return [b, t / "bad.png"], "cannot read image"


def _truncated_image(b: Path, i: Path, t: Path):
    data = i.read_bytes()
    (t / "cut.png").write_bytes(data[:len(data) // 2])
    return [b, t / "cut.png"], "cannot read image"


# Each case: (bundle, an image, an empty folder) -> (arguments, words the error line contains).
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
    "zero threads": lambda b, i, t: ([b, i, "--threads", "0"], "--threads"),
    "threads not a number": lambda b, i, t: ([b, i, "--threads", "four"], "--threads"),
    "zero top-k": lambda b, i, t: ([b, i, "--top-k", "0"], "--top-k"),
    "negative power": lambda b, i, t: ([b, "--bench", "--power-watts", "-3"], "--power-watts"),
    "power without bench": lambda b, i, t: ([b, i, "--power-watts", "3"], "goes with --bench"),
    "dump suffix": lambda b, i, t: ([b, i, "--dump-logits", t / "x.txt"], ".npz or .json"),
    "unknown flag": lambda b, i, t: ([b, i, "--fast"], "--fast"),
    "nothing to do": lambda b, i, t: ([b], "nothing to do"),
    "two modes": lambda b, i, t: ([b, i, "--bench"], "only one of"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_status_2(case, capsys, tmp_path, edge_bundle,
                                               fmnist_test_images):
    # Setup
    work = tmp_path / "work"
    work.mkdir()
    args, words = BAD_INPUTS[case](edge_bundle, images_in(fmnist_test_images)[0], work)

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
    result = subprocess.run([sys.executable, str(RUNNER), str(bundle),
                             str(images_in(fmnist_test_images)[0])],
                            capture_output=True, text=True, timeout=120)

    # Assert
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "model.onnx" in result.stderr and "sha256" in result.stderr
