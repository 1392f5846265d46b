"""The browser demo (edge_demo/web) runs a real edge bundle in real Chromium and agrees with host onnxruntime.

One Node run (edge_demo/web/test/check.mjs, playwright-core driving Debian's /usr/bin/chromium) serves a bundle with
`add_web_page` on 127.0.0.1 and collects what the page computes; the tests here compare it with onnxruntime on this
machine. The browser is not optional: without it (or without `npm ci --prefix edge_demo/web`) these tests fail and
say how to install it, because a skipped parity test proves nothing.
"""

import contextlib
import functools
import hashlib
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import threading
import urllib.parse

import numpy as np
import pytest

from compress.errors import CompressError
from compress.webpage import add_web_page

REPO = pathlib.Path(__file__).resolve().parents[1]
WEB = REPO / "edge_demo" / "web"
CHROMIUM = pathlib.Path("/usr/bin/chromium")
INSTALL_HINT = "run ./install.sh (it installs Debian's chromium and runs `npm ci --prefix edge_demo/web`)"

IMAGES_PER_CLASS = 3  # 10 classes -> 30 fixed test images: more than the 20 asked for, one browser run < 1 min
FP32_ATOL = 1e-3  # same float32 graph on two runtimes (x86 MLAS vs WebAssembly SIMD): only summation order differs
# INT8 (QDQ): the logits come out of a DequantizeLinear, so they sit on a grid of that node's scale. Both runtimes run
# ONNX Runtime's integer kernels (measured: bit-identical on x86 with VNNI), but another CPU's kernel may round one
# requantization differently (AVX2's u8*s8 path saturates), which moves a logit by a step or two of that grid.
INT8_OUTPUT_STEPS = 3


def preprocess(path: pathlib.Path, pre: dict) -> np.ndarray:
    """The model input for one image file, by the steps of edge_demo/BUNDLE.md (PIL), as float32 CHW."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((pre["width"], pre["height"]), Image.BILINEAR)
    x = np.asarray(rgb, dtype=np.float32) * np.float32(pre["scale"])
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return x.transpose(2, 0, 1)


def check_logits(page: np.ndarray, host: np.ndarray, *, atol: float) -> None:
    """Raise AssertionError unless every row of `page` has the host's argmax and is within `atol` of `host`.

    Where the host's two best logits tie to within `atol` (INT8 logits on a coarse grid do tie), either class is
    the host's answer, so the page may pick either.
    """
    page, host = np.asarray(page, np.float64), np.asarray(host, np.float64)
    assert page.shape == host.shape, f"logits shape {page.shape} in the page, {host.shape} on the host"
    page_top1 = page.argmax(1)
    host_gap = host.max(1) - host[np.arange(len(host)), page_top1]
    flipped = np.flatnonzero((page_top1 != host.argmax(1)) & (host_gap > atol)).tolist()
    worst = float(np.abs(page - host).max())
    assert not flipped, f"argmax differs on images {flipped} (max |diff| {worst:.3g})"
    assert worst <= atol, f"max |logit diff| {worst:.3g} exceeds {atol:g}"


def select_images(root: pathlib.Path) -> list[pathlib.Path]:
    """The first IMAGES_PER_CLASS images of each class folder, in name order: the same files on every run."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    return [image for folder in classes for image in sorted(folder.glob("*.png"))[:IMAGES_PER_CLASS]]


def run_node(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    if shutil.which("node") is None:
        pytest.fail(f"node is not installed: {INSTALL_HINT}")
    return subprocess.run(["node", script, *args], capture_output=True, text=True, timeout=timeout, cwd=WEB)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    # Browsers run module scripts only when served as JavaScript, and compile .wasm by streaming only as
    # application/wasm; don't depend on this machine's /etc/mime.types for either.
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@contextlib.contextmanager
def serve(root: pathlib.Path):
    """A static server for `root` on 127.0.0.1 (a free port), in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def int8_atol(model: pathlib.Path) -> float:
    """INT8_OUTPUT_STEPS steps of the scale of the DequantizeLinear that produces the model's logits."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model)).graph
    producer = {out: node for node in graph.node for out in node.output}
    node = producer.get(graph.output[0].name)
    # Walk back through layout-only nodes (Reshape, Flatten, Identity) to the DequantizeLinear.
    while node is not None and node.op_type in ("Reshape", "Flatten", "Identity", "Squeeze"):
        node = producer.get(node.input[0])
    assert node is not None and node.op_type == "DequantizeLinear", "model.onnx is not a QDQ model ending in DQ"
    scale = {init.name: numpy_helper.to_array(init) for init in graph.initializer}[node.input[1]]
    return INT8_OUTPUT_STEPS * float(np.max(scale))


def host_logits(model: pathlib.Path, inputs: np.ndarray, pre: dict) -> np.ndarray:
    """Host onnxruntime's logits, one image at a time as the page runs them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([pre["output_name"]], {pre["input_name"]: x[None]})[0] for x in inputs])


@pytest.fixture(scope="module")
def browser_run(edge_bundle, fmnist_test_images, tmp_path_factory):
    """Serve the bundle with its web page, let Chromium classify the test images, and return both sides' numbers."""
    missing = [f"{CHROMIUM} (Debian package chromium)"] * (not CHROMIUM.exists())
    missing += ["edge_demo/web/node_modules (npm ci --prefix edge_demo/web)"] * (not (WEB / "node_modules").is_dir())
    if missing:
        pytest.fail(f"the browser test needs {' and '.join(missing)}: {INSTALL_HINT}")

    tmp = tmp_path_factory.mktemp("edge_web")
    site = tmp / "site"
    shutil.copytree(edge_bundle, site / "edge")
    written = add_web_page(site / "edge")
    # The same bundle with one label altered after the manifest was written: same size, so only sha256 can tell.
    shutil.copytree(edge_bundle, site / "tampered")
    labels_path = site / "tampered" / "labels.json"
    first = json.loads(labels_path.read_text())[0]
    altered = "".join(chr(ord(c) ^ 1) if c.isascii() and c.isalpha() else c for c in first)
    labels_path.write_text(labels_path.read_text().replace(json.dumps(first), json.dumps(altered), 1))
    assert labels_path.stat().st_size == (edge_bundle / "labels.json").stat().st_size
    assert labels_path.read_bytes() != (edge_bundle / "labels.json").read_bytes()

    pre = json.loads((edge_bundle / "preprocess.json").read_text())
    images = select_images(fmnist_test_images)
    (site / "images").mkdir()
    for i, image in enumerate(images):
        shutil.copyfile(image, site / "images" / f"{i:03d}.png")
    inputs = np.stack([preprocess(image, pre) for image in images]).astype(np.float32)
    inputs.astype("<f4").tofile(tmp / "inputs.f32")

    models = ["model.onnx"] + ["model_fp32.onnx"] * (edge_bundle / "model_fp32.onnx").exists()
    with serve(site) as base_url:
        job = {
            "chromium": str(CHROMIUM),
            "profileDir": str(tmp / "profile"),
            "baseUrl": base_url,
            "page": "edge/web/index.html",
            "models": models,
            "tensors": str(tmp / "inputs.f32"),
            "dims": list(inputs.shape),
            "images": [f"images/{i:03d}.png" for i in range(len(images))],
            "screenshot": {"file": str(images[0]), "out": str(tmp / "edge_web_classification.png")},
            "tamperedBundle": "../../tampered/",
            "out": str(tmp / "result.json"),
        }
        (tmp / "job.json").write_text(json.dumps(job))
        proc = run_node(str(WEB / "test" / "check.mjs"), str(tmp / "job.json"), timeout=240)
    if proc.returncode != 0:
        pytest.fail(f"the browser run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")

    return {
        "result": json.loads((tmp / "result.json").read_text()),
        "written": written,
        "site": site,
        "pre": pre,
        "labels": json.loads((edge_bundle / "labels.json").read_text()),
        "inputs": inputs,
        "host": {name: host_logits(edge_bundle / name, inputs, pre) for name in models},
        "int8_atol": int8_atol(edge_bundle / "model.onnx"),
        "screenshot": pathlib.Path(job["screenshot"]["out"]),
    }


def _page_logits(run, model: str, path: str) -> np.ndarray:
    return np.array([r["logits"] for r in run["result"]["pages"][model][path]], dtype=np.float64)


# ---- the page in Chromium -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_add_web_page_puts_page_and_runtime_in_the_bundle(browser_run):
    written = browser_run["written"]

    assert {"web/index.html", "web/app.js", "web/ort/ort.wasm.min.js", "web/ort/ort-wasm-simd-threaded.wasm"} <= set(
        written
    )
    assert all((browser_run["site"] / "edge" / name).stat().st_size > 0 for name in written)
    # The runtime itself is multi-MB; it must be the real file, not a stub.
    assert (browser_run["site"] / "edge" / "web/ort/ort-wasm-simd-threaded.wasm").stat().st_size > 5_000_000


@pytest.mark.slow
def test_page_requests_nothing_but_the_local_server(browser_run):
    requests = browser_run["result"]["requests"]
    responses = browser_run["result"]["responses"]
    hosts = {urllib.parse.urlsplit(r["url"]).hostname for r in requests if r["url"].startswith(("http", "ws"))}
    paths = {urllib.parse.urlsplit(r["url"]).path for r in requests}

    assert hosts == {"127.0.0.1"}, f"requests to other hosts: {sorted(hosts - {'127.0.0.1'})}"
    assert {"/edge/web/ort/ort-wasm-simd-threaded.wasm", "/edge/model.onnx", "/edge/manifest.json"} <= paths
    failed = [(r["url"], r["status"]) for r in responses if r["status"] >= 400]
    assert not failed, f"failed requests: {failed}"
    problems = browser_run["result"]["problems"]
    assert not problems, f"errors in the page: {problems}"


@pytest.mark.slow
def test_fp32_logits_match_host_onnxruntime(browser_run):
    if "model_fp32.onnx" not in browser_run["host"]:
        pytest.fail("the edge_bundle fixture has no model_fp32.onnx: it should be an INT8 bundle (BUNDLE.md)")
    page = _page_logits(browser_run, "model_fp32.onnx", "tensorRuns")
    host = browser_run["host"]["model_fp32.onnx"]
    # The comparison means something only if the images move the logits well beyond the tolerance.
    assert np.ptp(host, axis=0).max() > 10 * FP32_ATOL, "the bundle's logits barely depend on the image"

    check_logits(page, host, atol=FP32_ATOL)
    print(f"FP32: max |diff| {np.abs(page - host).max():.2e} over {len(host)} images")


@pytest.mark.slow
def test_int8_logits_match_host_onnxruntime(browser_run):
    page = _page_logits(browser_run, "model.onnx", "tensorRuns")
    host = browser_run["host"]["model.onnx"]
    atol = browser_run["int8_atol"]

    check_logits(page, host, atol=atol)
    print(f"INT8: max |diff| {np.abs(page - host).max():.2e} (tolerance {atol:.3g}) over {len(host)} images")


@pytest.mark.slow
def test_page_preprocessing_gives_pil_inputs(browser_run):
    page_inputs = np.array([r["input"] for r in browser_run["result"]["pages"]["model.onnx"]["imageRuns"]])

    # The page ports Pillow's bilinear resample; on the same PNG it must give the same pixels, so the only
    # difference left is float rounding (one pixel level would be scale/std ~ 0.017).
    np.testing.assert_allclose(page_inputs.reshape(browser_run["inputs"].shape), browser_run["inputs"], atol=1e-5)


@pytest.mark.slow
def test_end_to_end_from_png_agrees_with_host(browser_run):
    for model, atol in (("model.onnx", browser_run["int8_atol"]), ("model_fp32.onnx", FP32_ATOL)):
        if model not in browser_run["host"]:
            continue
        page = _page_logits(browser_run, model, "imageRuns")
        host = browser_run["host"][model]
        agreement = float((page.argmax(1) == host.argmax(1)).mean())
        print(f"{model}: end-to-end argmax agreement {agreement:.0%} on {len(host)} images")

        # Inputs are identical (test above), so the end-to-end path must agree as tightly as the tensor path.
        check_logits(page, host, atol=atol)


@pytest.mark.slow
def test_screenshot_shows_a_classification(browser_run):
    ui = browser_run["result"]["pages"]["model.onnx"]["ui"]
    host_top1 = browser_run["labels"][int(browser_run["host"]["model.onnx"][0].argmax())]
    shot = browser_run["screenshot"]

    assert ui["state"] == "classified", ui["status"]
    assert ui["resultsVisible"] and len(ui["top5"]) == 5
    assert ui["top5"][0].startswith(host_top1), f"page shows {ui['top5'][0]!r}, host top-1 is {host_top1!r}"
    assert "inference" in ui["latency"] and " ms" in ui["latency"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("COMPRESS_SCREENSHOT_DIR"):
        target = pathlib.Path(os.environ["COMPRESS_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target / shot.name)


@pytest.mark.slow
def test_camera_frames_are_classified_live(browser_run):
    camera = browser_run["result"]["pages"]["model.onnx"]["camera"]

    # Chromium's synthetic camera (--use-fake-device-for-media-stream) stands in for a phone's.
    assert camera["state"] == "camera", camera["status"]
    assert camera["frames"] > 2 and camera["top5"] == 5 and min(camera["videoSize"]) > 0
    assert camera["stateAfterStop"] == "ready" and camera["tracksLive"] == 0


@pytest.mark.slow
def test_tampered_bundle_is_refused(browser_run):
    tampered = browser_run["result"]["tampered"]

    assert tampered["error"] is not None and "labels.json" in tampered["error"] and "sha256" in tampered["error"]
    assert tampered["state"] == "error" and "labels.json" in tampered["status"]
    assert tampered["fileDisabled"]


# ---- the comparison itself, and the page's plain-JS parts -----------------------------------------------------------


def test_logit_check_fails_on_perturbed_logits():
    host = np.array([[2.0, 1.0, -1.0], [0.0, 3.0, 2.5]])

    check_logits(host + FP32_ATOL / 2, host, atol=FP32_ATOL)  # within tolerance: passes
    nudged = host.copy()
    nudged[0, 2] += 3 * FP32_ATOL
    with pytest.raises(AssertionError, match="exceeds"):
        check_logits(nudged, host, atol=FP32_ATOL)
    swapped = host.copy()
    swapped[1, [1, 2]] = host[1, [2, 1]]  # row 1: the host's 3.0 vs 2.5 becomes 2.5 vs 3.0
    with pytest.raises(AssertionError, match=r"argmax differs on images \[1\]"):
        check_logits(swapped, host, atol=0.1)
    check_logits(swapped, host, atol=1.0)  # a 0.5 gap is a tie at tolerance 1.0: either class is right


def test_pil_resize_port_matches_pillow(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    # Upscaling like 28->32, identity, odd shapes, and phone-photo downscales where the filter widens.
    shapes = [(28, 28, 32, 32), (32, 32, 32, 32), (17, 5, 32, 32), (640, 480, 32, 32), (4000, 3000, 32, 32),
              (3, 2, 224, 224), (500, 100, 40, 60)]
    cases = []
    for i, (w, h, dw, dh) in enumerate(shapes):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels.tofile(tmp_path / f"{i}.in")
        np.asarray(Image.fromarray(pixels, "RGB").resize((dw, dh), Image.BILINEAR)).tofile(tmp_path / f"{i}.ref")
        cases.append([str(tmp_path / f"{i}.in"), w, h, dw, dh])
    script = tmp_path / "resize.mjs"
    script.write_text(
        f"import {{ resizeBilinearRGB }} from {json.dumps((WEB / 'preprocess.js').as_uri())};\n"
        "import fs from 'node:fs';\n"
        f"for (const [path, w, h, dw, dh] of {json.dumps(cases)}) {{\n"
        "  fs.writeFileSync(path.replace(/\\.in$/, '.out'), resizeBilinearRGB(fs.readFileSync(path), w, h, dw, dh));\n"
        "}\n"
    )

    proc = run_node(str(script), timeout=60)

    assert proc.returncode == 0, proc.stderr
    for i in range(len(shapes)):
        ours = np.fromfile(tmp_path / f"{i}.out", np.uint8)
        pillow = np.fromfile(tmp_path / f"{i}.ref", np.uint8)
        assert np.array_equal(ours, pillow), f"{shapes[i]}: {np.count_nonzero(ours != pillow)} bytes differ"


def test_sha256_fallback_matches_hashlib(tmp_path):
    # Lengths around the 64-byte block and the 56-byte padding boundary, plus a multi-block megabyte.
    lengths = [0, 3, 55, 56, 63, 64, 65, 1_000_000]
    script = tmp_path / "sha.mjs"
    script.write_text(
        f"import {{ sha256HexJs }} from {json.dumps((WEB / 'sha256.js').as_uri())};\n"
        f"for (const n of {json.dumps(lengths)}) {{\n"
        "  const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 7) % 251);\n"
        "  console.log(sha256HexJs(bytes));\n"
        "}\n"
    )

    proc = run_node(str(script), timeout=60)

    assert proc.returncode == 0, proc.stderr
    expected = [hashlib.sha256(bytes((i * 7) % 251 for i in range(n))).hexdigest() for n in lengths]
    assert proc.stdout.split() == expected


def test_add_web_page_without_node_modules_says_how_to_install(tmp_path, monkeypatch):
    import compress.webpage

    source = tmp_path / "web"
    source.mkdir()
    for name in compress.webpage.PAGE_FILES:
        shutil.copyfile(WEB / name, source / name)
    monkeypatch.setattr(compress.webpage, "WEB_SOURCE_DIR", source)
    edge = tmp_path / "edge"
    edge.mkdir()
    (edge / "model.onnx").write_bytes(b"")

    with pytest.raises(CompressError, match=r"npm ci --prefix edge_demo/web"):
        add_web_page(edge)
    assert not (edge / "web").exists()


def test_add_web_page_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    with pytest.raises(CompressError, match="not an edge bundle"):
        add_web_page(tmp_path)
