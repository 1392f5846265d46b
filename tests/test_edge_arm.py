"""The ARM check: the Raspberry Pi runner (edge_demo/pi/runner.py) gives the same predictions on aarch64.

It runs the runner inside an emulated 64-bit Arm Debian userland (tests/arm_rootfs.py, Cortex-A76 as in a
Raspberry Pi 5) and compares its logits with the same runner on this machine, on real Fashion-MNIST test images,
for the FP32 and the INT8 model of a real edge bundle. The runner's command line itself is tested in
tests/test_pi_runner.py.

Fixtures from tests/conftest.py: `edge_bundle` (an edge/ folder from the compress pipeline, with an INT8 and an
FP32 model, named in its manifest.json) and `fmnist_test_images` (class subfolders named by label holding at least
200 Fashion-MNIST test images).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.test_pi_runner import (HERE, RUNNER, Logits, images_in, load_dump, load_module, model_files,
                                  rehash)

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

arm_rootfs = load_module("arm_rootfs", HERE / "arm_rootfs.py")


# --------------------------------------------------------------------------- helpers

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
    step = output_step(bundle / model_files(bundle)["int8"])
    assert step is not None, "the INT8 model's output is not dequantized: is it INT8 (QDQ)?"
    return Tolerance(atol=INT8_MAX_STEPS * step, min_identical=INT8_MIN_IDENTICAL)


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
    fp32 = model_files(edge_bundle)["fp32"]
    model = onnx.load(str(altered / fp32))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{out}_unbumped" if o == out else o for o in node.output]
    delta = np.zeros((1, values.shape[1]), dtype=np.float32)
    delta[0, cls] = bump
    model.graph.initializer.append(numpy_helper.from_array(delta, "class_bump"))
    model.graph.node.append(helper.make_node("Add", [f"{out}_unbumped", "class_bump"], [out]))
    onnx.save(model, str(altered / fp32))
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
