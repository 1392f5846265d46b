// Load a compress edge bundle (format compress-edge/1, see edge_demo/BUNDLE.md) and classify images with it in the
// browser, using onnxruntime-web's WebAssembly backend. No DOM here besides decoding images: app.js owns the page.

import * as ort from './ort/ort.wasm.min.js';
import { preprocessPixels, topK } from './preprocess.js';
import { sha256Hex } from './sha256.js';

export const BUNDLE_FORMAT = 'compress-edge/1';

// The runtime is served beside the page (web/ort/), never from a CDN. The object form names each file: they are
// copied under .js names so that any static server sends them as JavaScript (see compress/webpage.py).
ort.env.wasm.wasmPaths = {
  mjs: new URL('./ort/ort-wasm-simd-threaded.js', import.meta.url).href,
  wasm: new URL('./ort/ort-wasm-simd-threaded.wasm', import.meta.url).href,
};
// WebAssembly threads need SharedArrayBuffer, which browsers grant only to cross-origin-isolated pages (served with
// COOP/COEP headers). A plain static server does not send them, so use one thread rather than fail.
ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
export const wasmThreads = ort.env.wasm.numThreads;

export class BundleError extends Error {}

async function fetchBytes(url) {
  const response = await fetch(url, { cache: 'no-cache' });
  if (!response.ok) throw new BundleError(`could not fetch ${url}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

/** Fetch `name` from the bundle and check its size and sha256 against manifest.json before anything uses it. */
async function fetchVerified(bundleUrl, manifest, name) {
  const entry = manifest.files?.[name];
  if (!entry) throw new BundleError(`manifest.json does not list ${name}: the bundle is incomplete`);
  const bytes = await fetchBytes(new URL(name, bundleUrl));
  if (entry.size_bytes !== undefined && bytes.byteLength !== entry.size_bytes) {
    throw new BundleError(`${name} is ${bytes.byteLength} bytes, manifest.json says ${entry.size_bytes}: refusing it`);
  }
  const digest = await sha256Hex(bytes);
  if (digest !== entry.sha256) {
    throw new BundleError(`${name} has sha256 ${digest}, manifest.json says ${entry.sha256}: refusing it`);
  }
  return bytes;
}

const json = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

/**
 * Load and verify a bundle. `bundleUrl` is the folder holding manifest.json; `model` the ONNX file to run
 * (model.onnx, or model_fp32.onnx to compare against the FP32 model an INT8 bundle was quantized from).
 */
export async function loadBundle(bundleUrl, { model = 'model.onnx' } = {}) {
  const manifest = json(await fetchBytes(new URL('manifest.json', bundleUrl)));
  if (manifest.format !== BUNDLE_FORMAT) {
    throw new BundleError(
      `manifest.json has format ${JSON.stringify(manifest.format)}; this page reads ${BUNDLE_FORMAT}`);
  }
  if (!model.endsWith('.onnx') || model.includes('/')) {
    throw new BundleError(`model must be an .onnx file of the bundle, got ${JSON.stringify(model)}`);
  }
  const [labelBytes, preBytes, modelBytes] = await Promise.all(
    ['labels.json', 'preprocess.json', model].map((name) => fetchVerified(bundleUrl, manifest, name)));
  const labels = json(labelBytes);
  const pre = json(preBytes);
  if (pre.layout !== 'NCHW' || pre.dtype !== 'float32' || pre.color !== 'RGB' || pre.resize !== 'bilinear') {
    throw new BundleError(`preprocess.json asks for ${pre.layout}/${pre.dtype}/${pre.color}/${pre.resize}; ` +
      'this page implements NCHW/float32/RGB/bilinear');
  }

  const session = await ort.InferenceSession.create(new Uint8Array(modelBytes), {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
  });
  const bundle = { url: String(bundleUrl), manifest, labels, pre, session, model, modelBytes: modelBytes.byteLength };
  // Warm up once, so the first latency shown is a steady-state one rather than the first run's allocations.
  await runTensor(bundle, new Float32Array(3 * pre.height * pre.width), [1, 3, pre.height, pre.width]);
  return bundle;
}

/** Run the model on an already preprocessed NCHW float32 tensor. Returns raw logits [N*C] and the latency. */
export async function runTensor(bundle, data, dims) {
  const input = new ort.Tensor('float32', data, dims);
  const start = performance.now();
  const outputs = await bundle.session.run({ [bundle.pre.input_name]: input });
  const latencyMs = performance.now() - start;
  const logits = outputs[bundle.pre.output_name];
  return { logits: logits.data, dims: logits.dims, latencyMs };
}

let scratch = null;

function readPixels(source, width, height) {
  scratch ??= document.createElement('canvas');
  scratch.width = width;
  scratch.height = height;
  const ctx = scratch.getContext('2d', { willReadFrequently: true });
  ctx.clearRect(0, 0, width, height);
  ctx.drawImage(source, 0, 0); // at natural size: no browser resampling, the resize is ours
  const { data } = ctx.getImageData(0, 0, width, height);
  return { data, width, height };
}

// Mobile Safari refuses canvases above 16.7 M pixels; a 48 MP phone photo is larger. Such a photo is first shrunk
// by the browser's decoder to fit (the only step that is not Pillow's; at 32x32 model input it changes little).
const MAX_CANVAS_PIXELS = 16_000_000;

/**
 * Decode an image file/blob to RGBA pixels at its own size, without colour management (PIL applies none). The
 * orientation is the one the browser shows (EXIF applied).
 */
export async function pixelsFromBlob(blob) {
  const options = { colorSpaceConversion: 'none', premultiplyAlpha: 'none' };
  let bitmap = await createImageBitmap(blob, options);
  const pixels = bitmap.width * bitmap.height;
  if (pixels > MAX_CANVAS_PIXELS) {
    const shrink = Math.sqrt(MAX_CANVAS_PIXELS / pixels);
    const resizeWidth = Math.floor(bitmap.width * shrink);
    const resizeHeight = Math.floor(bitmap.height * shrink);
    bitmap.close();
    bitmap = await createImageBitmap(blob, { ...options, resizeWidth, resizeHeight, resizeQuality: 'high' });
  }
  try {
    return readPixels(bitmap, bitmap.width, bitmap.height);
  } finally {
    bitmap.close();
  }
}

/** The current frame of a playing <video> as RGBA pixels. */
export function pixelsFromVideo(video) {
  return readPixels(video, video.videoWidth, video.videoHeight);
}

/** Preprocess decoded pixels and run the model on them: top-5, raw logits and timings. */
export async function classifyPixels(bundle, pixels) {
  const start = performance.now();
  const { tensor, dims, rgb } = preprocessPixels(pixels, bundle.pre);
  const preprocessMs = performance.now() - start;
  const { logits, latencyMs } = await runTensor(bundle, tensor, dims);
  return { logits, top5: topK(logits, bundle.labels), latencyMs, preprocessMs, input: tensor, rgb };
}
