// Preprocessing per the bundle's preprocess.json (edge_demo/BUNDLE.md), in plain JavaScript with no browser API, so
// that it runs the same in a page, a worker or Node (tests/test_edge_web.py checks it against Pillow in Node).

// Steps: RGB, bilinear resize as PIL does it, scale, mean/std, HWC -> CHW.
//
// A canvas resize is not PIL's: canvas bilinear does not widen its filter when shrinking (a 12 MP photo brought to
// 32x32 by canvas samples a few pixels and aliases), and rounds differently. The model was trained on PIL's
// Image.resize(..., BILINEAR), so this is a port of Pillow's Resample.c (8-bit path): a separable triangle filter
// whose support grows with the reduction factor, 22-bit fixed-point coefficients, horizontal pass then vertical
// pass, each rounded and clipped to 0..255. On the same pixels it gives Pillow's bytes exactly.

const PRECISION_BITS = 32 - 8 - 2;

function resampleCoefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filterScale; // bilinear (triangle) filter support is 1, widened when downscaling
  const kSize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * kSize);
  const weights = new Float64Array(kSize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterScale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      weights[x] = t < 1 ? 1 - t : 0;
      total += weights[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = total !== 0 ? weights[x] / total : weights[x];
      kk[xx * kSize + x] = k < 0 ? Math.trunc(-0.5 + k * (1 << PRECISION_BITS))
        : Math.trunc(0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { kSize, bounds, kk };
}

function clip8(v) {
  if (v >= (1 << PRECISION_BITS) * 256) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

/**
 * Resize packed RGB bytes (3 per pixel) from sw×sh to dw×dh exactly as Pillow's Image.resize(BILINEAR) does for an
 * RGB image. Exported for tests.
 */
export function resizeBilinearRGB(src, sw, sh, dw, dh) {
  let data = src;
  let w = sw;
  if (dw !== sw) {
    const { kSize, bounds, kk } = resampleCoefficients(sw, dw);
    const out = new Uint8Array(dw * sh * 3);
    for (let y = 0; y < sh; y++) {
      for (let xx = 0; xx < dw; xx++) {
        const xmin = bounds[2 * xx];
        const xmax = bounds[2 * xx + 1];
        let s0 = 1 << (PRECISION_BITS - 1);
        let s1 = s0;
        let s2 = s0;
        for (let x = 0; x < xmax; x++) {
          const k = kk[xx * kSize + x];
          const p = (y * sw + x + xmin) * 3;
          s0 += data[p] * k;
          s1 += data[p + 1] * k;
          s2 += data[p + 2] * k;
        }
        const o = (y * dw + xx) * 3;
        out[o] = clip8(s0);
        out[o + 1] = clip8(s1);
        out[o + 2] = clip8(s2);
      }
    }
    data = out;
    w = dw;
  }
  if (dh !== sh) {
    const { kSize, bounds, kk } = resampleCoefficients(sh, dh);
    const out = new Uint8Array(dw * dh * 3);
    for (let yy = 0; yy < dh; yy++) {
      const ymin = bounds[2 * yy];
      const ymax = bounds[2 * yy + 1];
      for (let x = 0; x < w; x++) {
        let s0 = 1 << (PRECISION_BITS - 1);
        let s1 = s0;
        let s2 = s0;
        for (let y = 0; y < ymax; y++) {
          const k = kk[yy * kSize + y];
          const p = ((y + ymin) * w + x) * 3;
          s0 += data[p] * k;
          s1 += data[p + 1] * k;
          s2 += data[p + 2] * k;
        }
        const o = (yy * w + x) * 3;
        out[o] = clip8(s0);
        out[o + 1] = clip8(s1);
        out[o + 2] = clip8(s2);
      }
    }
    data = out;
  }
  return data;
}

/** RGBA pixels (ImageData.data) -> packed RGB. Alpha is dropped, as PIL's convert("RGB") drops it. */
export function rgbaToRgb(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}

/**
 * Turn decoded RGBA pixels into the model input per preprocess.json. Returns the NCHW tensor data and the resized
 * RGB bytes (to show what the model sees).
 */
export function preprocessPixels(pixels, pre) {
  const { width: W, height: H } = pre;
  const rgb = resizeBilinearRGB(rgbaToRgb(pixels.data), pixels.width, pixels.height, W, H);
  const tensor = new Float32Array(3 * H * W);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < H * W; i++) {
      // Same float32 steps as numpy on the host: x * scale, then (x - mean) / std.
      const x = Math.fround(rgb[3 * i + c] * Math.fround(pre.scale));
      tensor[c * H * W + i] = Math.fround(Math.fround(x - Math.fround(pre.mean[c])) / Math.fround(pre.std[c]));
    }
  }
  return { tensor, dims: [1, 3, H, W], rgb };
}

/** Softmax over raw logits, then the k most probable classes, most probable first. */
export function topK(logits, labels, k = 5) {
  const max = Math.max(...logits);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps
    .map((e, index) => ({ index, label: labels[index] ?? `class ${index}`, probability: e / total }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, k);
}
