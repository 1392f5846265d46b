"""The bad-input matrix: every mistake gets a non-zero exit and ONE clear line on stderr, with no
traceback and no partial artifact. Each case runs the real CLI in a fresh interpreter."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _images(root: Path, classes, n=3):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def _evil(p: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {p.parent / 'pwned'}",))
    p.write_bytes(pickle.dumps(Evil()))
    return p


def _bundle_without(edge_bundle: Path, tmp: Path, name: str) -> Path:
    b = tmp / "edge"
    shutil.copytree(edge_bundle, b)
    (b / name).unlink()
    return b


def _tampered(edge_bundle: Path, tmp: Path) -> Path:
    b = tmp / "edge"
    shutil.copytree(edge_bundle, b)
    (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:-1] + b"\0")
    return b


def _truncated(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: len(src.read_bytes()) // 2])
    return dst


RUN = ["run", "tiny_mobilenet_v3", "--data", "digits", "--quiet"]

# (id, args builder (tmp, edge_bundle, smoke_run) -> argv, expected text in the one error line)
CASES = [
    ("unknown-model", lambda t, e, s: ["run", "resnet9000"], "unknown model 'resnet9000'"),
    ("unknown-command", lambda t, e, s: ["frobnicate"], "invalid choice"),
    ("unknown-flag", lambda t, e, s: RUN + ["--prunee", "0.5"], "unrecognized arguments"),
    ("prune-ratio-1", lambda t, e, s: RUN + ["--prune", "1"], r"prune ratio must be in [0, 1)"),
    ("prune-ratio-negative", lambda t, e, s: RUN + ["--prune", "-0.2"], r"prune ratio must be in [0, 1)"),
    ("prune-ratio-text", lambda t, e, s: RUN + ["--prune", "half"], "invalid float value: 'half'"),
    ("negative-epochs", lambda t, e, s: RUN + ["--epochs", "-1"], "--epochs: epochs must be 0"),
    ("zero-finetune-epochs", lambda t, e, s: RUN + ["--prune", "0.5", "--finetune-epochs", "0"],
     "finetune epochs must be at least 1"),
    ("zero-prune-steps", lambda t, e, s: RUN + ["--prune", "0.5", "--prune-steps", "0"], "prune steps must be"),
    ("input-size-too-small", lambda t, e, s: RUN + ["--input-size", "8"], "input size 8 is too small"),
    ("missing-data-path", lambda t, e, s: RUN[:2] + ["--data", str(t / "nope"), "--quiet"], "does not exist"),
    ("empty-data-folder", lambda t, e, s: (t.joinpath("empty").mkdir(), RUN[:2] + ["--data", str(t / "empty")])[1],
     "no images found"),
    ("data-path-is-a-file", lambda t, e, s: (t.joinpath("f.txt").write_text("x"), RUN[:2] + ["--data", str(t / "f.txt")])[1],
     "is not a folder"),
    ("one-class-folder", lambda t, e, s: RUN[:2] + ["--data", str(_images(t / "one", ["cat"]))], "only one class"),
    ("class-missing-from-val", lambda t, e, s: (_images(t / "d" / "train", ["a", "b"]), _images(t / "d" / "val", ["a"]),
                                                RUN[:2] + ["--data", str(t / "d")])[2], "missing from val/"),
    ("corrupt-image", lambda t, e, s: (_images(t / "c", ["a", "b"]), (t / "c" / "a" / "x.jpg").write_bytes(b"\xff\xd8junk"),
                                       RUN[:2] + ["--data", str(t / "c")])[2], "cannot read image"),
    ("empty-image", lambda t, e, s: (_images(t / "c", ["a", "b"]), (t / "c" / "b" / "z.png").write_bytes(b""),
                                     RUN[:2] + ["--data", str(t / "c")])[2], "cannot read image"),
    ("yaml-unknown-key", lambda t, e, s: (t.joinpath("c.yaml").write_text("modle: x\n"), ["run", "--config", str(t / "c.yaml")])[1],
     "unknown key modle"),
    ("yaml-wrong-type", lambda t, e, s: (t.joinpath("c.yaml").write_text("train:\n  epochs: many\n"),
                                         ["run", "--config", str(t / "c.yaml")])[1], "train.epochs must be an integer"),
    ("yaml-not-a-mapping", lambda t, e, s: (t.joinpath("c.yaml").write_text("- 1\n"), ["run", "--config", str(t / "c.yaml")])[1],
     "must hold a mapping"),
    ("yaml-syntax", lambda t, e, s: (t.joinpath("c.yaml").write_text("a: [\n"), ["run", "--config", str(t / "c.yaml")])[1],
     "not valid YAML"),
    ("yaml-out-key-cannot-redirect-writes", lambda t, e, s: (t.joinpath("c.yaml").write_text("out: /etc\n"),
                                                             ["run", "--config", str(t / "c.yaml")])[1], "unknown key out"),
    ("config-missing", lambda t, e, s: ["run", "--config", str(t / "none.yaml")], "cannot read config"),
    ("out-is-a-file", lambda t, e, s: (t.joinpath("file").write_text("x"), RUN + ["--out", str(t / "file")])[1], "is a file"),
    ("out-unwritable", lambda t, e, s: RUN + ["--out", "/proc/compress-run"], "cannot create run folder"),
    ("int8-empty-calibration", lambda t, e, s: (t.joinpath("c.yaml").write_text("int8: true\nquantize:\n  calibration_size: 0\n"),
                                                ["run", "--config", str(t / "c.yaml")])[1], "calibration_size must be at least 1"),
    ("bad-country", lambda t, e, s: RUN + ["--country", "Narnia"], "ISO 3166 alpha-3"),
    ("negative-power", lambda t, e, s: RUN + ["--power-watts", "-3"], "power_watts must be positive"),
    ("cuda-without-gpu", lambda t, e, s: RUN + ["--device", "cuda", "--out", str(t / "o")], "no CUDA device"),
    ("weights-missing-file", lambda t, e, s: RUN + ["--weights", str(t / "w.pt"), "--out", str(t / "o")], "not found"),
    # A folder with a corrupt image too: the weights file is read before any image is decoded, so its error is given
    ("weights-truncated", lambda t, e, s: (_images(t / "c", ["a", "b"]), (t / "c" / "a" / "x.jpg").write_bytes(b"junk"),
                                           RUN[:2] + ["--data", str(t / "c"), "--weights",
                                                      str(_truncated(s / "baseline" / "model.pt", t / "t.pt")),
                                                      "--out", str(t / "o")])[2], "truncated or not a torch checkpoint"),
    ("weights-for-another-model", lambda t, e, s: ["run", "mobilenet_v2", "--data", "digits", "--quiet", "--weights",
                                                   str(s / "baseline" / "model.pt"), "--out", str(t / "o")],
     "does not fit this model"),
    ("weights-malicious-pickle", lambda t, e, s: RUN + ["--weights", str(_evil(t / "evil.pt")), "--out", str(t / "o")],
     "refusing to load"),
    ("resume-without-out", lambda t, e, s: RUN + ["--resume"], "--resume needs --out"),
    ("resume-nothing", lambda t, e, s: RUN + ["--resume", "--out", str(t / "fresh")], "nothing to resume"),
    ("rerun-finished-run", lambda t, e, s: RUN + ["--out", str(s)], "already holds a finished run"),
    ("bench-missing-target", lambda t, e, s: ["bench", str(t / "nothing")], "nothing does not exist"),
    ("bench-bundle-without-labels", lambda t, e, s: ["bench", str(_bundle_without(e, t, "labels.json"))], "has no labels.json"),
    ("bench-tampered-bundle", lambda t, e, s: ["bench", str(_tampered(e, t))], "does not match its sha256"),
    ("bench-truncated-onnx", lambda t, e, s: ["bench", str(_truncated(e / "model_fp32.onnx", t / "m.onnx"))],
     "is not a valid ONNX model"),
    ("bench-zero-threads", lambda t, e, s: ["bench", str(e), "--threads", "0"], "--threads must be at least 1"),
    ("report-without-report-json", lambda t, e, s: ["report", str(t)], "report.json not found"),
    ("report-corrupt-json", lambda t, e, s: (t.joinpath("report.json").write_text("{not json"), ["report", str(t)])[1],
     "is not a compress report"),
    ("compare-missing-run", lambda t, e, s: ["compare", str(s), str(t / "gone"), "--out", str(t / "cmp")], "gone"),
    ("compare-same-run-twice", lambda t, e, s: ["compare", str(s), str(s), "--out", str(t / "cmp")], "given twice"),
    ("compare-unfinished-run", lambda t, e, s: (t.joinpath("busy").mkdir(), t.joinpath("busy", "progress.json").write_text("{}"),
                                                ["compare", str(s), str(t / "busy"), "--out", str(t / "cmp")])[2],
     "is an unfinished run"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(case, tmp_path, edge_bundle, smoke_run):
    _, build, expected = case
    before = sorted(p.name for p in smoke_run.iterdir())
    argv = build(tmp_path, edge_bundle, smoke_run)

    proc = subprocess.run([sys.executable, "-m", "compress.cli", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})

    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and lines[0].startswith("compress")
    assert expected.lower() in lines[0].lower(), lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "pwned").exists()  # no pickle ever ran
    for out in (tmp_path / "o", tmp_path / "fresh", tmp_path / "runs", tmp_path / "cmp"):  # nothing left behind
        assert not out.exists(), sorted(out.rglob("*"))
    assert sorted(p.name for p in smoke_run.iterdir()) == before


def test_disk_full_is_one_clear_line_and_leaves_no_partial_file(tmp_path):
    """Simulate a full disk: a file-size limit makes every write past 64 KB fail with EFBIG (here the baseline's
    checkpoint: `--epochs 0` keeps the random init, so nothing trains before the write)."""
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
              "from compress.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "full"
    proc = subprocess.run([sys.executable, "-c", script, "run", "tiny_mobilenet_v3", "--data", "digits", "--epochs", "0",
                           "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "File too large" in lines[0] and "--resume" in lines[0]
    assert not list(out.rglob("*.tmp")) and not (out / "report.json").exists()
    assert not list(out.rglob("model.pt"))  # the baseline checkpoint (> 64 KB) never appeared half-written


def _yaml(t: Path, text: str) -> list[str]:
    t.joinpath("c.yaml").write_text(text)
    return ["run", "--config", str(t / "c.yaml"), "--out", str(t / "o")]


# Config mistakes, found before any work: no trained run needed. (id, argv builder (tmp) -> argv, expected lines)
CONFIG_CASES = [
    ("country-not-in-codecarbon", lambda t: RUN + ["--country", "XYZ"],
     ["--country: country 'XYZ' is not an ISO 3166 alpha-3 code in codecarbon's carbon-intensity table"]),
    ("calibration-without-int8", lambda t: RUN + ["--calibration", "entropy"], ["--calibration needs --int8"]),
    ("remove-se-without-edge-friendly", lambda t: RUN + ["--remove-se"],
     ["--remove-se is part of --edge-friendly: add --edge-friendly"]),
    ("finetune-epochs-without-a-change", lambda t: RUN + ["--finetune-epochs", "3"],
     ["--finetune-epochs needs --prune or --edge-friendly"]),
    ("yaml-negative-epochs", lambda t: _yaml(t, "train: {epochs: -1}\n"),
     ["c.yaml: train.epochs: epochs must be 0 (use the weights as they are) or more, got -1"]),
    ("yaml-measure-range", lambda t: _yaml(t, "measure: {min_runs: 0}\n"), ["c.yaml: measure.min_runs: "]),
    ("yaml-syntax-line-column", lambda t: _yaml(t, "model: x\ntrain: {epochs: 3\n"),
     ["c.yaml is not valid YAML at line 3, column 1: "]),
    ("yaml-every-error-at-once", lambda t: _yaml(t, "modle: x\ntrain: {epochs: many}\nprune: {ratoi: 1}\n"),
     ["c.yaml: unknown key modle", "c.yaml: train.epochs must be an integer", "c.yaml: unknown key prune.ratoi"]),
    ("yaml-every-range-error-at-once", lambda t: _yaml(t, "train: {epochs: -1}\nmeasure: {threads: 0}\n"),
     ["c.yaml: train.epochs: ", "c.yaml: measure.threads: "]),
    ("bench-missing-file", lambda t: ["bench", str(t / "model.onnx")],
     ["model.onnx does not exist: give a bundle folder (RUN_DIR/edge) or a .onnx file"]),
    ("missing-data-folder-leaves-no-run-folder", lambda t: RUN[:2] + ["--data", str(t / "nope")], ["does not exist"]),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_mistakes_give_one_line_each(case, tmp_path):
    _, build, expected = case
    argv = build(tmp_path)

    proc = subprocess.run([sys.executable, "-m", "compress.cli", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})

    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == len(expected), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for line, text in zip(lines, expected):
        assert line.startswith("compress: error: ") and text in line, line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()  # no half-made run folder
