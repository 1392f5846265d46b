// The page: load the bundle, then classify a picked photo or live camera frames and show the top-5.
//
// URL parameters:
//   ?bundle=URL  folder holding the bundle's manifest.json, on this server (default ../: the page lives in edge/web/)
//   ?model=NAME  ONNX file of the bundle to run (default model.onnx; model_fp32.onnx to compare)
//
// Hooks for tests and the console (all wait for the bundle to load):
//   window.compressEdge.ready            -> Promise of the bundle info (rejects if the bundle is refused)
//   window.classifyImageUrl(url)         -> {logits, top5, latencyMs, preprocessMs, input}  (page's own preprocessing)
//   window.runTensor(float32Array, dims) -> {logits, dims, latencyMs}  (an already preprocessed NCHW tensor)

import {
  BundleError, classifyPixels, loadBundle, pixelsFromBlob, pixelsFromVideo, runTensor, wasmThreads,
} from './edge.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function setState(state, message = '') {
  document.body.dataset.state = state;
  $('status').textContent = message;
}

function bundleLocation() {
  const url = new URL(params.get('bundle') ?? '../', location.href);
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  // The page talks to no other host: a bundle elsewhere is refused rather than fetched.
  if (url.origin !== location.origin) {
    throw new BundleError(`?bundle= must be on this server (${location.origin}), not ${url.origin}`);
  }
  return url;
}

function describe(bundle) {
  const { manifest, model } = bundle;
  // Bundles since compress 0.2 name each precision's file (manifest.models); older ones had model_fp32.onnx
  // beside an INT8 model.onnx only.
  const int8 = manifest.models ? model === manifest.models.int8
    : model === 'model.onnx' && manifest.files['model_fp32.onnx'] !== undefined;
  return {
    bundleUrl: bundle.url,
    model,
    precision: int8 ? `INT8${manifest.target ? ` (built for ${manifest.target})` : ''}` : 'FP32',
    deployed: model === 'model.onnx',
    modelBytes: bundle.modelBytes,
    architecture: manifest.model,
    dataset: manifest.dataset,
    numClasses: bundle.labels.length,
    input: [bundle.pre.height, bundle.pre.width],
    threads: wasmThreads,
  };
}

const ready = (async () => {
  const bundle = await loadBundle(bundleLocation(), { model: params.get('model') ?? 'model.onnx' });
  const info = describe(bundle);
  $('bundle-info').textContent = `${info.architecture ?? 'model'} · ${info.dataset ?? ''} · ${info.precision}, ` +
    `${(info.modelBytes / 1e6).toFixed(2)} MB · input ${info.input.join('×')} · files verified (sha256)`;
  $('file').disabled = false;
  $('pick').removeAttribute('aria-disabled');
  $('camera').disabled = false;
  setState('ready', 'Choose a photo or start the camera.');
  return { bundle, info };
})();
ready.catch((error) => {
  $('bundle-info').textContent = 'No model loaded.';
  const message = error instanceof BundleError ? error.message : `Could not load the model: ${error.message ?? error}`;
  setState('error', message);
});

function showModelInput(rgb, width, height) {
  const canvas = $('model-input');
  canvas.width = width;
  canvas.height = height;
  const rgba = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    rgba.set(rgb.subarray(3 * i, 3 * i + 3), 4 * i);
    rgba[4 * i + 3] = 255;
  }
  canvas.getContext('2d').putImageData(new ImageData(rgba, width, height), 0, 0);
  $('seen').hidden = false;
}

function showResult(bundle, result) {
  showModelInput(result.rgb, bundle.pre.width, bundle.pre.height);
  $('top5').replaceChildren(...result.top5.map(({ label, probability }) => {
    const li = document.createElement('li');
    const bar = document.createElement('span');
    bar.className = 'bar';
    bar.style.width = `${(100 * probability).toFixed(1)}%`;
    const name = document.createElement('span');
    name.textContent = label;
    const prob = document.createElement('span');
    prob.textContent = `${(100 * probability).toFixed(1)}%`;
    li.append(bar, name, prob);
    return li;
  }));
  const ms = (t) => `${t.toFixed(t < 1 ? 2 : 1)} ms`;
  $('latency').textContent = `inference ${ms(result.latencyMs)} · preprocessing ${ms(result.preprocessMs)} · ` +
    `WebAssembly, ${describe(bundle).threads} thread(s)`;
  $('results').hidden = false;
}

// ---- photo ---------------------------------------------------------------------------------------------------------

$('file').addEventListener('change', async (event) => {
  const file = event.target.files?.[0];
  if (!file) return;
  stopCamera();
  const { bundle } = await ready;
  const photo = $('photo');
  URL.revokeObjectURL(photo.src);
  photo.src = URL.createObjectURL(file);
  photo.hidden = false;
  setState('busy', 'Classifying…');
  try {
    showResult(bundle, await classifyPixels(bundle, await pixelsFromBlob(file)));
    setState('classified', `Classified ${file.name}.`);
  } catch (error) {
    setState('error', `Could not classify ${file.name}: ${error.message ?? error}`);
  }
});

// ---- camera --------------------------------------------------------------------------------------------------------

let stream = null;

function stopCamera() {
  if (!stream) return;
  stream.getTracks().forEach((track) => track.stop());
  stream = null;
  $('video').hidden = true;
  $('camera').textContent = 'Start camera';
  setState('ready', 'Camera stopped.');
}

async function startCamera() {
  const { bundle } = await ready;
  if (!navigator.mediaDevices?.getUserMedia) {
    // Browsers expose the camera only to secure contexts.
    setState('error',
      'The camera needs HTTPS (or localhost). Use "Choose a photo" instead: on a phone it can take one.');
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: { ideal: 'environment' } }, // the back camera on a phone
      audio: false,
    });
  } catch (error) {
    setState('error', `No camera: ${error.message ?? error}`);
    return;
  }
  const video = $('video');
  video.srcObject = stream;
  await video.play();
  video.hidden = false;
  $('photo').hidden = true;
  $('camera').textContent = 'Stop camera';
  setState('camera', 'Classifying camera frames…');
  const status = $('status');
  status.dataset.frames = 0;
  // One inference at a time: the next frame is read when the previous result is shown.
  const tick = async () => {
    if (!stream) return;
    if (video.readyState >= 2 && video.videoWidth > 0) {
      const result = await classifyPixels(bundle, pixelsFromVideo(video));
      if (!stream) return;
      showResult(bundle, result);
      status.dataset.frames = Number(status.dataset.frames) + 1;
      status.textContent = `Camera: ${status.dataset.frames} frames classified.`;
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}

$('camera').addEventListener('click', () => (stream ? stopCamera() : startCamera()));

// ---- hooks ---------------------------------------------------------------------------------------------------------

const readyInfo = ready.then(({ info }) => info);
readyInfo.catch(() => {}); // shown on the page already; callers awaiting it still get the rejection
window.compressEdge = { ready: readyInfo };

window.classifyImageUrl = async (url) => {
  const { bundle } = await ready;
  const response = await fetch(url);
  if (!response.ok) throw new Error(`could not fetch ${url}: HTTP ${response.status}`);
  const result = await classifyPixels(bundle, await pixelsFromBlob(await response.blob()));
  return {
    logits: Array.from(result.logits),
    top5: result.top5,
    latencyMs: result.latencyMs,
    preprocessMs: result.preprocessMs,
    input: Array.from(result.input),
  };
};

window.runTensor = async (data, dims) => {
  const { bundle } = await ready;
  const { logits, dims: outDims, latencyMs } = await runTensor(bundle, Float32Array.from(data), dims);
  return { logits: Array.from(logits), dims: outDims, latencyMs };
};
