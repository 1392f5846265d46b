"""Shared fixtures: one real pipeline run on real data, reused by the end-to-end, bundle, ARM and web tests.

Everything here runs the real torch, torch-pruning, onnxruntime and codecarbon; nothing is mocked.
The baseline cache lives in a per-session temporary folder, so tests never touch ~/.cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


# each runs a whole pipeline once per session
SLOW_FIXTURES = {"smoke_run", "smoke_stdout", "edge_bundle", "unpruned_run"}


def pytest_collection_modifyitems(config, items):
    """Every test that needs a whole pipeline run is slow, whether or not its author marked it:
    `pytest -m "not slow"` then trains no pipeline."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["COMPRESS_CACHE"] = str(tmp_path_factory.mktemp("compress-cache"))
    yield


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, _isolated_cache) -> Path:
    """A real `compress run --config configs/smoke.yaml`: tiny MobileNetV3 on a Fashion-MNIST subset,
    pruned 0.5, distilled, exported and quantized. Returns the run folder; what the command printed to its
    standard output (not a terminal, as when piped) is in `stdout.txt` beside it (see `smoke_stdout`)."""
    import io
    from contextlib import redirect_stdout

    from compress.cli import main

    out = tmp_path_factory.mktemp("smoke") / "run"
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["run", "--config", str(SMOKE), "--out", str(out)])
    (out.parent / "stdout.txt").write_text(printed.getvalue())
    assert code == 0, printed.getvalue()[-2000:]
    return out


@pytest.fixture(scope="session")
def smoke_stdout(smoke_run) -> str:
    """What the smoke run printed to its standard output, a StringIO rather than a terminal: the final summary
    as a user sees it piped to a file or a CI log."""
    return (smoke_run.parent / "stdout.txt").read_text()


@pytest.fixture(scope="session")
def unpruned_run(smoke_run, tmp_path_factory) -> dict:
    """`compress run --config configs/smoke.yaml --prune 0 --json`: the smoke run's cached baseline, exported and
    quantized. Its folder (named p0_int8) and what the command returned and printed (test_cli, test_compare)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from compress.cli import main

    out = tmp_path_factory.mktemp("unpruned") / "p0_int8"
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(["run", "--config", str(SMOKE), "--out", str(out), "--json", "--prune", "0"])
    return {"dir": out, "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


@pytest.fixture(scope="session")
def edge_bundle(smoke_run) -> Path:
    """The smoke run's edge/ bundle: the deployed model.onnx, the other precision beside it (manifest.json's
    `models` names both), labels, preprocess, manifest."""
    return smoke_run / "edge"


@pytest.fixture(scope="session")
def swept(tmp_path_factory) -> dict:
    """One real sweep, as a user runs it (`compress sweep --config ...` in its own process): 4 trials as Ray Tune
    trials on a local Ray with this machine's CPUs (2 here), at most 2 at a time, SWEEP_FLAKY's first attempt
    failing once; its own baseline cache, so exactly one trial trains the baseline. Tests read it, never write it
    (test_benchmarks.py sweeps a copy)."""
    import json
    import subprocess
    import sys

    import yaml

    from compress.sweep import FAIL_ONCE_ENV
    from tests.helpers import SWEEP_FLAKY, SWEEP_GRID, SWEEP_RUNS

    root = tmp_path_factory.mktemp("sweep")
    config = root / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP_GRID))
    argv = ["--config", str(config), "--out", str(root / "sweep"), "--max-concurrent", "2", "--max-failures", "1",
            "--runs", str(SWEEP_RUNS), "--energy-seconds", "0.2"]
    env = {**os.environ, "COMPRESS_CACHE": str(root / "cache"), FAIL_ONCE_ENV: SWEEP_FLAKY}
    code = f"import sys; from compress.sweep import main; sys.exit(main({argv!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    return {"dir": root / "sweep", "config": config, "summary": json.loads((root / "sweep" / "sweep.json").read_text()),
            "stdout": done.stdout, "stderr": done.stderr.splitlines()}


def label_dir_name(label: str) -> str:
    """Class folder name for a label: '/' cannot appear in a folder name ("T-shirt/top" → "T-shirt_top")."""
    return label.replace("/", "_")


@pytest.fixture(scope="session")
def fmnist_test_images(tmp_path_factory) -> Path:
    """250 real Fashion-MNIST *test* images (25 per class) as 28×28 grayscale PNGs in class folders."""
    import numpy as np
    from PIL import Image

    from compress.data import FASHION_MNIST_DEBIAN, FASHION_MNIST_LABELS, read_idx

    images = read_idx(FASHION_MNIST_DEBIAN / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DEBIAN / "t10k-labels-idx1-ubyte.gz")
    root = tmp_path_factory.mktemp("fmnist-test")
    for c, name in enumerate(FASHION_MNIST_LABELS):
        d = root / label_dir_name(name)
        d.mkdir()
        for i in np.flatnonzero(labels == c)[:25]:
            Image.fromarray(images[i]).save(d / f"{i:05d}.png")
    return root


@pytest.fixture
def copy_of(tmp_path):
    """Copy a file or folder into the test's tmp_path (tests that corrupt things work on copies)."""
    def _copy(src: Path) -> Path:
        dst = tmp_path / src.name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
        return dst
    return _copy
