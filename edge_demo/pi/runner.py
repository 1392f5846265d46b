#!/usr/bin/env python3
"""Classify images with a compress edge bundle on a Raspberry Pi, or on any computer.

Needs only onnxruntime, numpy and Pillow; nothing from compress and no torch. For a camera
it also uses picamera2 (Raspberry Pi camera) or OpenCV (USB camera) when installed.
Every file of the bundle is checked against the sha256 in its manifest.json before use,
and images are preprocessed exactly as the bundle's preprocess.json says (edge_demo/BUNDLE.md).
Options may come before or after the image.

Examples:
    python3 runner.py edge/ shoe.jpg                 # top-3 labels and latency
    python3 runner.py edge/ --model fp32 shoe.jpg    # the FP32 model of the bundle
    python3 runner.py edge/ test_images/             # a folder; accuracy when its subfolders
                                                     # are named like the labels or by index
    python3 runner.py edge/ --camera                 # classify camera frames until Ctrl-C
    python3 runner.py edge/ --bench --power pmic     # Raspberry Pi 5: energy from its PMIC
    python3 runner.py edge/ --bench --power-watts 6.1 --json-out bench.json
    python3 runner.py edge/ test_images/ --model fp32 --dump-logits fp32.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

FORMAT = "compress-edge/1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                  ".ppm", ".pgm", ".pbm"}
WARMUP_RUNS = 10
# Without --runs, a bench times at least this many runs and this many seconds, so the median
# and p90 rest on enough samples on a fast desktop and on a slow Pi alike.
MIN_RUNS, MIN_SECONDS = 50, 2.0
# --power pmic: vcgencmd is read every PMIC_INTERVAL_S in a background thread; idle power is
# sampled for PMIC_IDLE_SECONDS before the warm-up, and the timed loop lasts at least
# PMIC_MIN_SECONDS (also with --runs), so that each mean rests on a few dozen readings.
PMIC_INTERVAL_S, PMIC_IDLE_SECONDS, PMIC_MIN_SECONDS = 0.1, 2.0, 5.0
PMIC_NOT_COUNTED = ("the 5 V loads (USB devices, HATs, the fan on the 5V rail) and the PMIC's "
                    "own conversion losses are not in its rails, so the board draws more")
# One line of `vcgencmd pmic_read_adc` on a Pi 5: " VDD_CORE_A current(7)=2.12345600A" or
# " VDD_CORE_V volt(15)=0.87123400V". The index in brackets is the ADC channel, not the rail:
# a rail's current and voltage are paired by name.
PMIC_LINE = re.compile(r"^\s*(\w+)_([AV])\s+(?:current|volt)\(\d+\)=(\S+?)([AV])\s*$")
LIST_SKIPPED = 5  # unreadable images named at the end of a folder run; the rest are counted
# CPU part numbers (implementer 0x41, Arm) seen on Raspberry Pis and similar boards;
# /proc/cpuinfo on 64-bit Arm gives only the number.
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
             "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73",
             "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1",
             "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78"}


class RunnerError(Exception):
    """Something the user can fix; main() prints it on one line and exits with status 2."""


class UnreadableImage(RunnerError):
    """An image file that cannot be decoded; in a folder it is skipped, alone it is an error."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.reason = reason


# --------------------------------------------------------------------------- dependencies

def _need(module: str):
    """Import numpy, onnxruntime or PIL.Image, or say how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RunnerError(
            f"cannot import {module.split('.')[0]} ({e}): run "
            "'pip install onnxruntime numpy pillow' in a 64-bit OS (see edge_demo/pi/README.md)"
        ) from None


# --------------------------------------------------------------------------- the bundle

@dataclass(frozen=True)
class Preprocess:
    """preprocess.json, checked: the steps every consumer of the bundle must follow."""

    input_name: str
    output_name: str
    height: int
    width: int
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ModelChoice:
    """The model file to run, its precision when the bundle says, and a note for the user."""

    file: str
    precision: str | None  # "int8" or "fp32"; None for a file the manifest does not name
    note: str | None = None  # one line, printed on stderr before the work starts


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    labels: list[str]
    preprocess: Preprocess
    models: dict  # {"fp32": file, "int8": file or None}, from the manifest or the old rule
    precision: str  # of model.onnx, the deployed model

    def choose(self, choice: str | None) -> ModelChoice:
        """The model to run: model.onnx unless --model says fp32, int8 or a file of the bundle."""
        files = self.manifest["files"]
        if choice is None:
            return self._with_target_note(ModelChoice("model.onnx", self.precision))
        if choice == "fp32":
            return ModelChoice(self.models["fp32"], "fp32")
        if choice == "int8":
            int8 = self.models["int8"]
            if int8 is None:
                why = self.manifest.get("deployed_reason")
                raise RunnerError("this bundle has no INT8 model: "
                                  + (f"{why.rstrip('.')}; " if isinstance(why, str) and why
                                     else "model.onnx is FP32 and no INT8 file ships with it; ")
                                  + "use --model fp32")
            note = None
            if int8 != "model.onnx":
                why = self.manifest.get("deployed_reason")
                note = (f"{int8} is the INT8 model of this bundle, but it was not deployed "
                        f"(model.onnx is FP32): "
                        + (why if isinstance(why, str) and why else "the manifest gives no reason"))
            return self._with_target_note(ModelChoice(int8, "int8", note))
        name = choice
        if name not in files:
            candidate = Path(choice).resolve()
            root = self.path.resolve()
            if candidate.is_relative_to(root):
                name = candidate.relative_to(root).as_posix()
        if name not in files:
            raise RunnerError(f"--model {choice}: give fp32, int8 or a file of the bundle "
                              f"({', '.join(sorted(files))})")
        precision = next((p for p in ("int8", "fp32") if self.models[p] == name), None)
        return self._with_target_note(ModelChoice(name, precision))

    def _with_target_note(self, chosen: ModelChoice) -> ModelChoice:
        """Add a note when an INT8 model made for another CPU family runs here."""
        target, here = _family(self.manifest.get("target")), machine_family()
        if chosen.precision != "int8" or target is None or here in (None, target):
            return chosen
        line = (f"the INT8 model was made for {target} CPUs (manifest target) and runs here on "
                f"{here}; for this CPU make the bundle with 'compress run ... --int8 --target "
                f"{here}'")
        return ModelChoice(chosen.file, chosen.precision,
                           f"{chosen.note}; {line}" if chosen.note else line)


def _family(machine) -> str | None:
    """A CPU architecture name in the manifest's target words: x86_64, arm64, or None."""
    families = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
    return families.get(machine.lower()) if isinstance(machine, str) else None


def machine_family() -> str | None:
    """This CPU in the manifest's target words: x86_64, arm64, or None for anything else."""
    return _family(platform.machine())


def _models(manifest: dict, where: Path) -> tuple[dict, str]:
    """manifest.json's models and the precision of model.onnx, checked (BUNDLE.md).

    Bundles written before the "models" field follow the old rule: model_fp32.onnx ships
    only when model.onnx is INT8.
    """
    files = manifest["files"]
    if "model.onnx" not in files:
        raise RunnerError(f"{where} lists no model.onnx")
    if "models" not in manifest:
        if "model_fp32.onnx" in files:
            return {"fp32": "model_fp32.onnx", "int8": "model.onnx"}, "int8"
        return {"fp32": "model.onnx", "int8": None}, "fp32"
    models, precision = manifest["models"], manifest.get("precision")
    if not (isinstance(models, dict) and isinstance(models.get("fp32"), str)
            and (models.get("int8") is None or isinstance(models.get("int8"), str))):
        raise RunnerError(f'{where}: "models" must be {{"fp32": FILE, "int8": FILE or null}}, '
                          f"not {json.dumps(models)}")
    for kind in ("fp32", "int8"):
        if models.get(kind) is not None and models[kind] not in files:
            raise RunnerError(f"{where}: models.{kind} is {models[kind]!r}, which is not one of "
                              "the bundle's files")
    if precision not in ("int8", "fp32"):
        raise RunnerError(f'{where}: "precision" is {precision!r}; it must be "int8" or "fp32", '
                          "the precision of model.onnx")
    if models.get(precision) != "model.onnx":
        raise RunnerError(f'{where}: "precision" is {precision!r}, but models.{precision} is '
                          f"{models.get(precision)!r}: model.onnx must be the model of that "
                          "precision")
    return {"fp32": models["fp32"], "int8": models.get("int8")}, precision


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunnerError(f"cannot read {what} {path}: {e}") from None


def verify_bundle(path: Path) -> dict:
    """Check every file listed in manifest.json against its sha256; return the manifest."""
    if not path.is_dir():
        raise RunnerError(f"bundle folder {path} not found: give the edge/ folder that "
                          "'compress run' wrote")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise RunnerError(f"{path} has no manifest.json: it is not an edge bundle "
                          "(give the edge/ folder that 'compress run' wrote)")
    manifest = _read_json(manifest_path, "the bundle manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise RunnerError(f"{manifest_path}: format is {found!r}, this runner reads {FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise RunnerError(f"{manifest_path} lists no files")
    for name in sorted(files):
        entry = files[name]
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise RunnerError(f"{manifest_path} names a file outside the bundle: {name!r}")
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(expected, str):
            raise RunnerError(f"{manifest_path} gives no sha256 for {name}")
        file = path / relative
        if not file.is_file():
            raise RunnerError(f"{name} is missing from the bundle {path}: copy the whole "
                              "edge/ folder again")
        if _sha256(file) != expected.lower():
            raise RunnerError(f"{name} in {path} does not match its sha256 in manifest.json: "
                              "the file was changed or damaged; copy the edge/ folder again")
    for required in ("labels.json", "preprocess.json"):
        if required not in files:
            raise RunnerError(f"{required} is missing from the bundle {path} "
                              "(its manifest does not list it)")
    return manifest


def _parse_preprocess(raw, where: Path) -> Preprocess:
    if not isinstance(raw, dict):
        raise RunnerError(f"{where} must hold a JSON object")
    # The steps this runner implements; anything else would give the model different numbers.
    fixed = {"layout": "NCHW", "dtype": "float32", "resize": "bilinear", "color": "RGB"}
    for key, value in fixed.items():
        if raw.get(key) != value:
            raise RunnerError(f"{where}: {key} is {raw.get(key)!r}; this runner follows "
                              f"{FORMAT}, which needs {value!r}")
    try:
        pre = Preprocess(input_name=str(raw["input_name"]), output_name=str(raw["output_name"]),
                         height=int(raw["height"]), width=int(raw["width"]),
                         scale=float(raw["scale"]),
                         mean=tuple(float(v) for v in raw["mean"]),
                         std=tuple(float(v) for v in raw["std"]))
    except (KeyError, TypeError, ValueError) as e:
        raise RunnerError(f"{where} is incomplete or malformed ({type(e).__name__}: {e})") from None
    if pre.height < 1 or pre.width < 1 or len(pre.mean) != 3 or len(pre.std) != 3 \
            or not all(s > 0 for s in pre.std) or not pre.scale > 0:
        raise RunnerError(f"{where}: height/width must be positive, mean and std three "
                          "numbers each, std and scale positive")
    return pre


def load_bundle(path: Path) -> Bundle:
    """Verify the bundle, then read its labels and preprocessing."""
    manifest = verify_bundle(path)
    labels = _read_json(path / "labels.json", "labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise RunnerError(f"{path / 'labels.json'} must be a non-empty JSON list of class names")
    pre = _parse_preprocess(_read_json(path / "preprocess.json", "preprocessing"),
                            path / "preprocess.json")
    models, precision = _models(manifest, path / "manifest.json")
    return Bundle(path=path, manifest=manifest, labels=labels, preprocess=pre, models=models,
                  precision=precision)


# --------------------------------------------------------------------------- images

def load_image(path: Path):
    """Open and decode an image file, upright, or say why it cannot be read.

    A phone photo held in portrait is stored sideways with an EXIF Orientation tag; like the
    web page (browsers apply the tag) and training (compress/data.py), the picture is turned
    the way it is shown before anything else.
    """
    Image = _need("PIL.Image")
    ImageOps = _need("PIL.ImageOps")
    try:
        image = Image.open(path)
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as e:  # Pillow raises many types for damaged files; all mean "unreadable"
        raise UnreadableImage(path, str(e) or type(e).__name__) from None
    return image


def to_tensor(image, pre: Preprocess):
    """BUNDLE.md's steps after decoding (load_image): RGB, bilinear resize, float32 × scale,
    (x − mean) / std, CHW, batch."""
    np = _need("numpy")
    Image = _need("PIL.Image")
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    rgb = image.convert("RGB").resize((pre.width, pre.height), bilinear)
    x = np.asarray(rgb, dtype=np.float32) * np.float32(pre.scale)
    x = (x - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def find_images(folder: Path) -> list[Path]:
    """Image files under folder, sorted by their path relative to it (the --dump-logits order)."""
    found = [p for p in folder.rglob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    found.sort(key=lambda p: p.relative_to(folder).as_posix())
    if not found:
        raise RunnerError(f"no images in {folder} (looked for "
                          f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def _label_key(name: str) -> str:
    # "T-shirt/top" cannot be a folder name; "T-shirt_top" or "tshirt-top" still matches it.
    return "".join(c for c in name.casefold() if c.isalnum())


def folder_labels(images: list[Path], folder: Path, labels: list[str]) -> list[int] | None:
    """True class of each image from its parent folder's name (a label or a label index).

    None unless every image sits in such a folder: then accuracy is not computed.
    """
    by_key: dict[str, int | None] = {}
    for i, name in enumerate(labels):
        key = _label_key(name)
        by_key[key] = None if key in by_key else i  # two labels alike: exact names only
    truth = []
    for image in images:
        parent = image.parent
        if parent == folder:
            return None
        name = parent.name
        if name in labels:
            truth.append(labels.index(name))
        elif name.isdigit() and int(name) < len(labels):
            truth.append(int(name))
        elif by_key.get(_label_key(name)) is not None:
            truth.append(by_key[_label_key(name)])
        else:
            return None
    return truth


# --------------------------------------------------------------------------- inference

class Classifier:
    """One ONNX Runtime session on one model of the bundle, at a pinned thread count."""

    def __init__(self, bundle: Bundle, model_name: str, threads: int):
        ort = _need("onnxruntime")
        self.bundle, self.model_name, self.threads = bundle, model_name, threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT's warnings are not for end users
        try:
            self.session = ort.InferenceSession(str(bundle.path / model_name), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT's own exception types; all mean "cannot use this file"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunnerError(f"onnxruntime cannot load {model_name}: {first}") from None
        pre = bundle.preprocess
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if pre.input_name not in inputs or pre.output_name not in outputs:
            raise RunnerError(f"{model_name} has inputs {inputs} and outputs {outputs}, but "
                              f"preprocess.json names {pre.input_name!r} and {pre.output_name!r}")

    def logits(self, x):
        """Raw logits [C] for one preprocessed image, and the seconds session.run took."""
        pre = self.bundle.preprocess
        start = time.perf_counter()
        out = self.session.run([pre.output_name], {pre.input_name: x})[0]
        seconds = time.perf_counter() - start
        if out.shape != (1, len(self.bundle.labels)):
            raise RunnerError(f"{self.model_name} gives output of shape {list(out.shape)}, but "
                              f"labels.json lists {len(self.bundle.labels)} classes")
        return out[0], seconds


def softmax(logits):
    np = _need("numpy")
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def top_k(logits, labels: list[str], k: int) -> list[tuple[str, float]]:
    np = _need("numpy")
    p = softmax(logits)
    order = np.argsort(-p, kind="stable")[:k]
    return [(labels[i], float(p[i])) for i in order]


def _format_top(top: list[tuple[str, float]]) -> str:
    return "  ".join(f"{label} {p:.1%}" for label, p in top)


def _threads(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


def _percentile_ms(seconds: list[float], q: float) -> float:
    np = _need("numpy")
    return float(np.percentile(np.asarray(seconds) * 1e3, q))


# --------------------------------------------------------------------------- modes

def classify_paths(clf: Classifier, images: list[Path], folder: Path | None, k: int,
                   dump: Path | None) -> None:
    """Classify files one by one (batch 1); print top-k, accuracy and latency.

    In a folder an unreadable image is skipped and named at the end; accuracy, latency and
    the logits dump cover the images that could be read.
    """
    np = _need("numpy")
    _need("PIL.Image")  # imported before the clock starts
    _need("PIL.ImageOps")
    bundle = clf.bundle
    all_logits, times, prep_times = [], [], []
    read: list[Path] = []
    skipped: list[str] = []
    for path in images:
        name = path.relative_to(folder).as_posix() if folder else str(path)
        start = time.perf_counter()
        try:
            image = load_image(path)
        except UnreadableImage as e:
            if not folder:
                raise
            skipped.append(name)
            print(f"{name}  skipped, cannot read it: {e.reason}")
            continue
        x = to_tensor(image, bundle.preprocess)
        prep_times.append(time.perf_counter() - start)
        logits, seconds = clf.logits(x)
        all_logits.append(logits)
        times.append(seconds)
        read.append(path)
        top = top_k(logits, bundle.labels, k)
        if folder:
            print(f"{name}  {_format_top(top)}")
        else:
            print(name)
            width = max(len(label) for label, _ in top)
            for rank, (label, p) in enumerate(top, 1):
                print(f"  {rank}. {label:<{width}}  {p:6.1%}")
    if not read:
        raise RunnerError(f"none of the {len(images)} images in {folder} could be read "
                          f"(first: {skipped[0]}); see the lines above")
    logits = np.stack(all_logits).astype(np.float32)
    where = f"{clf.model_name}, {_threads(clf.threads)}, batch 1"
    if folder:
        print(f"{len(read)} images ({where})")
        if skipped:
            more = len(skipped) - LIST_SKIPPED
            print(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}, "
                  f"not counted below: {', '.join(skipped[:LIST_SKIPPED])}"
                  + (f" and {more} more" if more > 0 else ""))
        truth = folder_labels(read, folder, bundle.labels)
        if truth is None:
            print("accuracy: n/a (put the images in subfolders named like labels.json "
                  "or by label index)")
        else:
            correct = int((logits.argmax(axis=1) == np.asarray(truth)).sum())
            print(f"accuracy: {correct}/{len(read)} = {correct / len(read):.2%} (top-1)")
        print(f"latency: median {_percentile_ms(times, 50):.2f} ms, "
              f"p90 {_percentile_ms(times, 90):.2f} ms per image (inference only); "
              f"preprocessing median {_percentile_ms(prep_times, 50):.2f} ms")
    else:
        print(f"latency: {times[0] * 1e3:.2f} ms inference + {prep_times[0] * 1e3:.2f} ms "
              f"preprocessing ({where}; a first run includes warm-up, --bench measures properly)")
    if dump:
        names = [p.relative_to(folder).as_posix() if folder else p.name for p in read]
        write_logits(dump, logits, names, clf.model_name)


def write_logits(path: Path, logits, names: list[str], model_name: str) -> None:
    """Save logits [N, C] and image paths, in the same order, as .npz or .json."""
    np = _need("numpy")
    try:
        if path.suffix == ".npz":
            np.savez(path, logits=logits, paths=np.asarray(names))
        else:
            doc = {"model": model_name, "paths": names,
                   "logits": [[float(v) for v in row] for row in logits]}
            path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    except OSError as e:
        raise RunnerError(f"cannot write {path}: {e}") from None
    print(f"logits of {len(names)} images written to {path}")


def _open_camera(index: int):
    """A function returning the next frame as a PIL image, and one to close the camera."""
    Image = _need("PIL.Image")
    problems = []
    try:
        from picamera2 import Picamera2
    except ImportError:
        Picamera2 = None
    if Picamera2 is not None:
        try:
            cam = Picamera2(index)
            cam.configure(cam.create_preview_configuration(
                main={"size": (640, 480), "format": "RGB888"}))
            cam.start()
            # picamera2's "RGB888" holds pixels as [B, G, R] (libcamera naming): flip to RGB.
            return (lambda: Image.fromarray(cam.capture_array()[..., ::-1].copy())), cam.stop
        except Exception as e:  # no camera attached, busy, or libcamera trouble
            problems.append(f"picamera2: {e}")
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        cap = cv2.VideoCapture(index)
        if cap.isOpened():
            def grab():
                ok, frame = cap.read()
                if not ok:
                    raise RunnerError(f"camera {index} stopped giving frames")
                return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            return grab, cap.release
        problems.append(f"OpenCV cannot open camera {index}")
    if not problems:
        raise RunnerError("--camera needs picamera2 (Raspberry Pi camera: sudo apt install "
                          "python3-picamera2, venv made with --system-site-packages) or OpenCV "
                          "(USB camera: pip install opencv-python-headless)")
    raise RunnerError(f"no camera {index}: {'; '.join(problems)}")


def classify_camera(clf: Classifier, index: int, frames: int | None, k: int) -> None:
    grab, close = _open_camera(index)
    try:
        n = 0
        while frames is None or n < frames:
            image = grab()
            logits, seconds = clf.logits(to_tensor(image, clf.bundle.preprocess))
            n += 1
            print(f"frame {n}: {_format_top(top_k(logits, clf.bundle.labels, k))}  "
                  f"({seconds * 1e3:.1f} ms)", flush=True)
    finally:
        close()


def cpu_name() -> str:
    """The CPU model, e.g. 'Cortex-A76 (Raspberry Pi 5 Model B Rev 1.0)' on a Pi 5.

    A copy of compress/host.py's cpu_name() (this script cannot import compress); a test
    checks that the two agree.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    fields: dict[str, str] = {}  # the first value of every "key: value" line
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("model name"):
        name = fields["model name"]
    elif fields.get("CPU implementer") == "0x41" and fields.get("CPU part") in ARM_PARTS:
        name = ARM_PARTS[fields["CPU part"]]
    else:
        name = platform.processor() or platform.machine() or "unknown"
    board = fields.get("Model")
    return f"{name} ({board})" if board else name


# --------------------------------------------------------------------------- power (Pi 5 PMIC)

def parse_pmic(text: str) -> dict[str, float]:
    """Watts (V × I) of each rail in one `vcgencmd pmic_read_adc` output.

    A rail's current `NAME_A` is paired with its voltage `NAME_V` by name. Channels with a
    voltage but no current (EXT5V_V, the 5 V input; BATT_V) give no power and are left out.
    Lines may end in newlines or NULs (the firmware mailbox's form).
    """
    volts: dict[str, float] = {}
    amps: dict[str, float] = {}
    for line in re.split(r"[\n\x00]", text):
        match = PMIC_LINE.match(line)
        if not match:
            continue
        rail, kind, value, unit = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        if kind == unit and math.isfinite(number):
            (amps if kind == "A" else volts)[rail] = number
    return {rail: volts[rail] * amps[rail] for rail in sorted(amps) if rail in volts}


def mean_watts(samples: list[tuple[float, float]]) -> float:
    """Time-weighted mean of (seconds, watts) samples: the trapezoid integral over their span."""
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        raise RunnerError(f"only {len(samples)} PMIC reading(s) in a window: vcgencmd answers too "
                          "slowly for --power pmic here")
    joules = sum((t1 - t0) * (w0 + w1) / 2
                 for (t0, w0), (t1, w1) in zip(samples, samples[1:]))
    return joules / (samples[-1][0] - samples[0][0])


def pmic_energy(idle: list[tuple[float, float]], loop: list[tuple[float, float]],
                loop_seconds: float, inferences: int) -> dict:
    """Energy per inference from PMIC samples: gross (all the rails drew during the timed loop)
    and net of idle (what the rails drew above their idle power)."""
    idle_watts, loop_watts = mean_watts(idle), mean_watts(loop)
    return {
        "idle_watts": idle_watts, "loop_watts": loop_watts,
        "idle_seconds": idle[-1][0] - idle[0][0], "loop_seconds": loop_seconds,
        "idle_samples": len(idle), "loop_samples": len(loop), "inferences": inferences,
        "energy_per_inference_gross_j": loop_watts * loop_seconds / inferences,
        "energy_per_inference_net_j": (loop_watts - idle_watts) * loop_seconds / inferences,
    }


class Pmic:
    """The Raspberry Pi 5's power chip, read with `vcgencmd pmic_read_adc`."""

    def __init__(self):
        self.vcgencmd = shutil.which("vcgencmd")
        if self.vcgencmd is None:
            raise RunnerError("--power pmic needs vcgencmd, which is not on PATH: it reads the "
                              "power chip (PMIC) of a Raspberry Pi 5 with Raspberry Pi OS; "
                              "elsewhere use --power-watts W from a USB power meter")
        self.rails = sorted(self.read())  # one reading now: a board without a PMIC fails here

    def read(self) -> dict[str, float]:
        try:
            result = subprocess.run([self.vcgencmd, "pmic_read_adc"], capture_output=True,
                                    text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RunnerError(f"vcgencmd pmic_read_adc failed: {e}") from None
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()
        if result.returncode != 0:
            raise RunnerError(f"vcgencmd pmic_read_adc failed (exit {result.returncode}"
                              + (f": {said[0].strip()}" if said else "")
                              + "): --power pmic needs a Raspberry Pi 5")
        rails = parse_pmic(result.stdout)
        if not rails:
            raise RunnerError("vcgencmd pmic_read_adc gave no rail with both a current (_A) and a "
                              "voltage (_V): --power pmic needs a Raspberry Pi 5; elsewhere use "
                              "--power-watts")
        return rails

    def watts(self) -> float:
        return sum(self.read().values())


class PmicSampler:
    """Reads the PMIC every PMIC_INTERVAL_S in a background thread, from start() to stop()."""

    def __init__(self, pmic: Pmic):
        self.pmic = pmic
        self.samples: list[tuple[float, float]] = []  # (perf_counter seconds, watts)
        self.error: RunnerError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pmic-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            before = time.perf_counter()
            try:
                watts = self.pmic.watts()
            except RunnerError as e:
                self.error = e
                return
            after = time.perf_counter()
            self.samples.append(((before + after) / 2, watts))  # the reading's midpoint
            if self._stop.wait(max(0.0, PMIC_INTERVAL_S - (after - before))):
                return

    def start(self) -> "PmicSampler":
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.samples


def bench(clf: Classifier, *, runs: int | None, power_watts: float | None,
          pmic: Pmic | None = None, precision: str | None = None) -> dict:
    """Latency at batch 1 after warm-up; energy from a user-supplied power figure, or measured
    from the Pi 5's PMIC (idle first, then sampled during the timed loop)."""
    np = _need("numpy")
    ort = _need("onnxruntime")
    pre = clf.bundle.preprocess
    # Content does not change a CNN's speed; a fixed random input keeps runs comparable.
    x = np.random.default_rng(0).standard_normal((1, 3, pre.height, pre.width), dtype=np.float32)
    idle = None
    if pmic is not None:
        sampler = PmicSampler(pmic).start()
        time.sleep(PMIC_IDLE_SECONDS)
        idle = sampler.stop()
    for _ in range(WARMUP_RUNS):
        clf.logits(x)
    times: list[float] = []
    min_seconds = MIN_SECONDS if pmic is None else max(MIN_SECONDS, PMIC_MIN_SECONDS)

    def more() -> bool:
        elapsed = time.perf_counter() - start
        if runs:
            return len(times) < runs or (pmic is not None and elapsed < PMIC_MIN_SECONDS)
        return len(times) < MIN_RUNS or elapsed < min_seconds

    sampler = PmicSampler(pmic).start() if pmic is not None else None
    start = time.perf_counter()
    while more():
        times.append(clf.logits(x)[1])
    loop_seconds = time.perf_counter() - start
    power = None
    total = sum(times)
    if sampler is not None:
        power = {"method": "pmic", "rails": pmic.rails, "sample_interval_s": PMIC_INTERVAL_S,
                 **pmic_energy(idle, sampler.stop(), loop_seconds, len(times)),
                 "not_counted": PMIC_NOT_COUNTED}
        energy = power["energy_per_inference_gross_j"]
        method = (f"pmic: V×I summed over {len(pmic.rails)} PMIC rails (vcgencmd pmic_read_adc), "
                  "measured during the timed loop, idle not subtracted; not counted: the 5 V "
                  "loads (USB devices, HATs, fan) and conversion losses")
    elif power_watts is None:
        energy, method = None, "none"
    else:
        energy, method = power_watts * total / len(times), f"user-power: {power_watts:g} watts × time"
    return {
        "schema_version": 1,
        "kind": "bench",
        "environment": {"machine": platform.machine(), "cpu": cpu_name(),
                        "python": platform.python_version(), "onnxruntime": ort.__version__,
                        "threads": clf.threads},
        "model": clf.model_name,
        "precision": precision,
        "warmup_runs": WARMUP_RUNS,
        "metrics": {
            "latency_ms_median": _percentile_ms(times, 50),
            "latency_ms_p90": _percentile_ms(times, 90),
            "latency_batch": 1,
            "latency_runs": len(times),
            "threads": clf.threads,
            "throughput_ips": len(times) / total,
            "throughput_batch": 1,
            "size_bytes": (clf.bundle.path / clf.model_name).stat().st_size,
            "energy_per_inference_j": energy,
            "energy_method": method,
        },
        "power": power,
    }


def print_bench(report: dict) -> None:
    m, env, power = report["metrics"], report["environment"], report["power"]
    print(f"bench {report['model']} on {env['machine']} {env['cpu']}, onnxruntime "
          f"{env['onnxruntime']}, {_threads(m['threads'])}, batch 1, {m['latency_runs']} runs "
          f"after {report['warmup_runs']} warm-up")
    print(f"latency: median {m['latency_ms_median']:.2f} ms, p90 {m['latency_ms_p90']:.2f} ms; "
          f"throughput {m['throughput_ips']:.1f} images/s")
    if power is not None:
        print(f"energy (pmic, measured): {power['energy_per_inference_gross_j']:.4g} J per "
              f"inference gross, {power['energy_per_inference_net_j']:.4g} J net of idle; "
              f"{power['loop_watts']:.3f} W during {power['loop_seconds']:.1f} s of inference, "
              f"{power['idle_watts']:.3f} W idle, sum of {len(power['rails'])} PMIC rails "
              f"({power['loop_samples'] + power['idle_samples']} readings)")
        print(f"energy blind spot: {PMIC_NOT_COUNTED}")
    elif m["energy_per_inference_j"] is None:
        print("energy: n/a (on a Raspberry Pi 5 give --power pmic; elsewhere --power-watts W, "
              "read from a USB power meter while benchmarking)")
    else:
        print(f"energy: {m['energy_per_inference_j']:.4g} J per inference ({m['energy_method']}; "
              "estimated from time, not measured)")


# --------------------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error, and no SystemExit(2) traceback risk
        raise RunnerError(f"{message} (see --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be 1 or more")
    return value


def _watts(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of watts") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of watts")
    return value


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _parser() -> _Parser:
    p = _Parser(prog="runner.py", description=__doc__.split("\n\n")[0],
                usage="%(prog)s bundle [input] [options]  (options may come anywhere)",
                epilog="Exit status 2 means a problem with the input; the message says which.")
    p.add_argument("bundle", type=Path, help="the edge/ folder that 'compress run' wrote")
    p.add_argument("input", type=Path, nargs="?",
                   help="an image file, or a folder of images (searched recursively)")
    p.add_argument("--camera", type=int, nargs="?", const=0, metavar="INDEX",
                   help="classify camera frames (picamera2 or OpenCV; default camera 0)")
    p.add_argument("--frames", type=_positive_int, metavar="N",
                   help="with --camera: stop after N frames (default: until Ctrl-C)")
    p.add_argument("--model", default=None, metavar="fp32|int8|FILE",
                   help="the model of that precision (manifest.json's models), or a file of the "
                        "bundle (default: model.onnx, the deployed model)")
    p.add_argument("--threads", type=_positive_int, default=_default_threads(), metavar="N",
                   help="onnxruntime intra-op threads (default: all CPUs, here %(default)s)")
    p.add_argument("--top-k", type=_positive_int, default=3, metavar="K",
                   help="how many labels to print per image (default 3)")
    p.add_argument("--dump-logits", type=Path, metavar="FILE.npz|FILE.json",
                   help="with an image or folder: save every image's logits and path")
    p.add_argument("--bench", action="store_true",
                   help="measure latency at batch 1 (warm-up, then median and p90)")
    p.add_argument("--runs", type=_positive_int, metavar="N",
                   help=f"with --bench: timed runs (default: at least {MIN_RUNS} and "
                        f"{MIN_SECONDS:g} s; with --power pmic the loop also lasts at least "
                        f"{PMIC_MIN_SECONDS:g} s)")
    p.add_argument("--power-watts", type=_watts, metavar="W",
                   help="with --bench: the device's power draw while benchmarking, from a USB "
                        "power meter; energy per inference = W × time")
    p.add_argument("--power", choices=["pmic"],
                   help="with --bench: measure energy on a Raspberry Pi 5 from its power chip "
                        "(vcgencmd pmic_read_adc), gross and net of idle; leaves out the 5 V "
                        "loads (USB devices, HATs, fan)")
    p.add_argument("--json", action="store_true", help="with --bench: print the report as JSON")
    p.add_argument("--json-out", type=Path, metavar="FILE",
                   help="with --bench: also write the report as JSON to FILE")
    return p


def _check_args(args) -> None:
    """Reject contradictory or incomplete flags before any work starts."""
    modes = [m for m, on in (("an input", args.input is not None),
                             ("--camera", args.camera is not None), ("--bench", args.bench)) if on]
    if not modes:
        raise RunnerError("nothing to do: give an image or folder, --camera, or --bench")
    if len(modes) > 1:
        raise RunnerError(f"give only one of an input, --camera or --bench (got {' and '.join(modes)})")
    if not args.bench:
        for flag, value in (("--runs", args.runs), ("--power-watts", args.power_watts),
                            ("--power", args.power), ("--json-out", args.json_out),
                            ("--json", args.json or None)):
            if value is not None:
                raise RunnerError(f"{flag} goes with --bench")
    if args.power is not None and args.power_watts is not None:
        raise RunnerError("give --power pmic (measured on a Raspberry Pi 5) or --power-watts W "
                          "(a USB meter's reading), not both")
    if args.frames is not None and args.camera is None:
        raise RunnerError("--frames goes with --camera")
    if args.dump_logits is not None:
        if args.input is None:
            raise RunnerError("--dump-logits goes with an image or a folder")
        if args.dump_logits.suffix not in (".npz", ".json"):
            raise RunnerError(f"--dump-logits {args.dump_logits}: the file name must end in "
                              ".npz or .json")
        if not args.dump_logits.parent.is_dir():
            raise RunnerError(f"--dump-logits {args.dump_logits}: folder "
                              f"{args.dump_logits.parent} does not exist")
    if args.json_out is not None and not args.json_out.parent.is_dir():
        raise RunnerError(f"--json-out {args.json_out}: folder {args.json_out.parent} "
                          "does not exist")
    if args.input is not None and not args.input.exists():
        raise RunnerError(f"{args.input} not found: give an image file or a folder of images")


def run(args) -> int:
    _check_args(args)
    pmic = Pmic() if args.power == "pmic" else None
    bundle = load_bundle(args.bundle)
    chosen = bundle.choose(args.model)
    model_name = chosen.file
    if chosen.note:
        print(f"note: {chosen.note}", file=sys.stderr)
    k = min(args.top_k, len(bundle.labels))
    if args.input is not None:
        folder = args.input if args.input.is_dir() else None
        images = find_images(folder) if folder else [args.input]
        clf = Classifier(bundle, model_name, args.threads)
        classify_paths(clf, images, folder, k, args.dump_logits)
    elif args.camera is not None:
        clf = Classifier(bundle, model_name, args.threads)
        classify_camera(clf, args.camera, args.frames, k)
    else:
        clf = Classifier(bundle, model_name, args.threads)
        report = bench(clf, runs=args.runs, power_watts=args.power_watts, pmic=pmic,
                       precision=chosen.precision)
        text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
        if args.json_out is not None:
            try:
                args.json_out.write_text(text, encoding="utf-8")
            except OSError as e:
                raise RunnerError(f"cannot write {args.json_out}: {e}") from None
        if args.json:
            sys.stdout.write(text)
        else:
            print_bench(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; 0 on success, 2 with one line on stderr for a user problem."""
    try:
        # Intermixed: options may sit between the bundle and the image ("edge/ --model fp32
        # shoe.jpg"); plain parse_args would take the image for an unrecognized argument.
        return run(_parser().parse_intermixed_args(argv))
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head: not an error, but stdout is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
