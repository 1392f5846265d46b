"""Put the browser demo page beside an edge bundle, so that a phone can run the model from any static web server."""

import pathlib

from compress.errors import CompressError

# The page and its npm dependencies live in the repository, not in the Python package.
WEB_SOURCE_DIR = pathlib.Path(__file__).resolve().parents[1] / "edge_demo" / "web"

PAGE_FILES = ("index.html", "style.css", "app.js", "edge.js", "preprocess.js", "sha256.js")

# onnxruntime-web's WebAssembly-only build (node_modules/onnxruntime-web/dist/name -> web/ort/name). The .mjs files
# are copied under .js names: browsers accept a module script only when it is served as JavaScript, and every static
# server (python -m http.server on any Python, phones' file servers, S3) knows .js, while .mjs is missing from many
# MIME tables. The page names each file through ort.env.wasm.wasmPaths, so the new names are all it needs.
ORT_FILES = {
    "ort.wasm.min.mjs": "ort.wasm.min.js",
    "ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.js",
    "ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm",
}


def add_web_page(edge_dir: pathlib.Path) -> list[str]:
    """Copy the demo page and the onnxruntime-web runtime it needs into ``edge_dir/web/``.

    Serve ``edge_dir`` with any static server and open ``web/index.html``: the page loads the bundle from ``../``,
    checks its files against manifest.json and classifies photos or camera frames on the device. It makes no
    request to any other host. Returns the files written, relative to ``edge_dir``.

    Example:
        >>> add_web_page(pathlib.Path("runs/fmnist/edge"))  # then: python3 -m http.server -d runs/fmnist/edge
        ['web/index.html', 'web/style.css', ..., 'web/ort/ort-wasm-simd-threaded.wasm']
    """
    import shutil

    edge_dir = pathlib.Path(edge_dir)
    # model.onnx, not manifest.json: the bundle step adds the page before it writes the manifest that lists it.
    if not (edge_dir / "model.onnx").is_file():
        raise CompressError(f"{edge_dir} is not an edge bundle (it has no model.onnx): pass the edge/ folder of a run")
    sources = web_sources()
    for relative, source in sources.items():
        target = edge_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return list(sources)


def web_sources() -> dict[str, pathlib.Path]:
    """Bundle-relative name → source file of everything the page needs; a clear error if any is missing.

    The pipeline calls this before any work when ``--web`` is asked for."""
    missing_page = [name for name in PAGE_FILES if not (WEB_SOURCE_DIR / name).is_file()]
    if missing_page:
        raise CompressError(f"the web page is incomplete: {', '.join(missing_page)} missing from {WEB_SOURCE_DIR}")
    ort_dist = WEB_SOURCE_DIR / "node_modules" / "onnxruntime-web" / "dist"
    missing_ort = [name for name in ORT_FILES if not (ort_dist / name).is_file()]
    if missing_ort:
        raise CompressError(
            f"onnxruntime-web is not installed ({', '.join(missing_ort)} missing from {ort_dist}): "
            "run `npm ci --prefix edge_demo/web` in the compress repository (./install.sh does it)"
        )

    sources = {f"web/{name}": WEB_SOURCE_DIR / name for name in PAGE_FILES}
    sources |= {f"web/ort/{target}": ort_dist / name for name, target in ORT_FILES.items()}
    return sources
