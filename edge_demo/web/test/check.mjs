// Drive the demo page in a real Chromium and record what it computes, for tests/test_edge_web.py to judge.
//
//   node edge_demo/web/test/check.mjs JOB.json
//
// The job (written by the test) names a page already served on 127.0.0.1 and the inputs to feed it; this script
// only collects numbers and writes them to job.out. It asserts nothing itself: the comparisons against host
// onnxruntime live in Python, next to the reference they need.
//
// job: {chromium, profileDir, baseUrl, page, models: [name], tensors: path of raw float32 NCHW inputs,
//       dims: [N, C, H, W], images: [URL relative to baseUrl], screenshot: {file, out}, tamperedBundle, out}

import fs from 'node:fs';
import { chromium } from 'playwright-core';

const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

const requests = [];
const responses = [];
const problems = []; // console errors and uncaught exceptions, by page

const context = await chromium.launchPersistentContext(job.profileDir, {
  executablePath: job.chromium,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // A synthetic camera (a moving test pattern) that needs no permission prompt.
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'],
  permissions: ['camera'],
  // A phone-sized viewport, so the screenshot shows the layout a phone gets.
  viewport: { width: 412, height: 915 },
  deviceScaleFactor: 2,
  isMobile: true,
  hasTouch: true,
});

try {
  const isLocal = (url) => {
    const { protocol, hostname } = new URL(url);
    const network = protocol.startsWith('http') || protocol.startsWith('ws'); // not data:, blob:
    return !network || ['127.0.0.1', 'localhost'].includes(hostname);
  };
  context.on('request', (request) => requests.push({ url: request.url(), method: request.method() }));
  context.on('response', (response) => responses.push({
    url: response.url(), status: response.status(), contentType: response.headers()['content-type'] ?? null,
  }));
  // Record everything, but never let a request leave the machine: the test fails on it either way.
  await context.route((url) => !isLocal(url.href), (route) => route.abort());

  async function openPage(label, query) {
    const page = await context.newPage();
    page.setDefaultTimeout(60_000);
    page.on('console', (msg) => {
      if (msg.type() === 'error') problems.push({ page: label, kind: 'console', text: msg.text() });
    });
    page.on('pageerror', (error) => problems.push({ page: label, kind: 'pageerror', text: String(error) }));
    await page.goto(new URL(`${job.page}${query}`, job.baseUrl).href);
    await page.waitForFunction(() => window.compressEdge !== undefined);
    return page;
  }

  const tensors = new Float32Array(fs.readFileSync(job.tensors).buffer.slice(0));
  const [n, ...itemDims] = job.dims;
  const itemSize = itemDims.reduce((a, b) => a * b, 1);

  const pages = {};
  for (const model of job.models) {
    const page = await openPage(model, `?model=${encodeURIComponent(model)}`);
    const info = await page.evaluate(async () => ({
      ...(await window.compressEdge.ready), userAgent: navigator.userAgent,
    }));
    // Pure model numerics: the same tensor the host runtime gets, one image at a time as the page runs them.
    const tensorRuns = [];
    for (let i = 0; i < n; i++) {
      const data = Array.from(tensors.subarray(i * itemSize, (i + 1) * itemSize));
      tensorRuns.push(await page.evaluate(([d, dims]) => window.runTensor(d, dims), [data, [1, ...itemDims]]));
    }
    // End to end: the page decodes and preprocesses the PNG itself.
    const imageRuns = [];
    for (const url of job.images) {
      imageRuns.push(await page.evaluate((u) => window.classifyImageUrl(u), new URL(url, job.baseUrl).href));
    }
    pages[model] = { info, tensorRuns, imageRuns };
    if (model === job.models[0]) {
      // A classification through the UI, as a person does it: pick a file, read what the page shows.
      await page.setInputFiles('#file', job.screenshot.file);
      await page.waitForSelector('body[data-state="classified"], body[data-state="error"]');
      pages[model].ui = await page.evaluate(() => ({
        state: document.body.dataset.state,
        status: document.getElementById('status').textContent,
        bundleInfo: document.getElementById('bundle-info').textContent,
        top5: Array.from(document.querySelectorAll('#top5 li'), (li) => li.innerText.replace(/\s+/g, ' ').trim()),
        latency: document.getElementById('latency').textContent,
        resultsVisible: !document.getElementById('results').hidden,
      }));
      await page.screenshot({ path: job.screenshot.out, fullPage: true });

      // Live camera: frames from the synthetic device get classified until the button stops it.
      await page.click('#camera');
      await page.waitForSelector('body[data-state="camera"], body[data-state="error"]');
      await page.waitForFunction(() => document.body.dataset.state !== 'camera'
        || document.getElementById('status').dataset.frames > 2);
      const camera = await page.evaluate(() => ({
        state: document.body.dataset.state,
        status: document.getElementById('status').textContent,
        frames: Number(document.getElementById('status').dataset.frames ?? 0),
        videoSize: [document.getElementById('video').videoWidth, document.getElementById('video').videoHeight],
        top5: document.querySelectorAll('#top5 li').length,
      }));
      await page.click('#camera');
      camera.stateAfterStop = await page.evaluate(() => document.body.dataset.state);
      camera.tracksLive = await page.evaluate(() => (document.getElementById('video').srcObject?.getTracks() ?? [])
        .filter((track) => track.readyState === 'live').length);
      pages[model].camera = camera;
    }
    await page.close();
  }

  // A bundle whose labels.json was altered after the manifest was written must be refused.
  const tampered = await openPage('tampered', `?bundle=${encodeURIComponent(job.tamperedBundle)}`);
  const tamperedError = await tampered.evaluate(() => window.compressEdge.ready.then(() => null, (e) => String(e)));
  const tamperedUi = await tampered.evaluate(() => ({
    state: document.body.dataset.state,
    status: document.getElementById('status').textContent,
    fileDisabled: document.getElementById('file').disabled,
  }));
  await tampered.close();

  fs.writeFileSync(job.out, JSON.stringify({
    requests, responses, problems, pages, tampered: { error: tamperedError, ...tamperedUi },
  }));
} finally {
  await context.close();
}
