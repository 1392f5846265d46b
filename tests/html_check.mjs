// Open a report page (report.html or compare.html) from disk in real headless Chromium and record what happens,
// for tests/test_report_html.py and tests/test_compare.py to judge.
//
//   node tests/html_check.mjs JOB.json
//
// job: {chromium, profileDir, page: absolute path of the HTML file, screenshot: PNG path, out: JSON path}
// out: {requests: [url], blocked: [url], images: [{alt, src (first 30 chars), naturalWidth, naturalHeight,
//       complete}], problems: [console errors and page errors], title, text (the page's innerText), size}
//
// Every request is recorded; anything other than file: and data: is aborted, so a page that tries to reach a
// network never succeeds in doing so even while the test fails on it. playwright-core comes from the web demo's
// node_modules (`npm ci --prefix edge_demo/web`): this script only collects facts and asserts nothing itself.

import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(path.join(repo, 'edge_demo', 'web', 'package.json'));
const { chromium } = require('playwright-core');

const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const requests = [];
const blocked = [];
const problems = [];

const context = await chromium.launchPersistentContext(job.profileDir, {
  executablePath: job.chromium,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
  deviceScaleFactor: 1,
});

try {
  const allowed = (url) => url.startsWith('file:') || url.startsWith('data:');
  context.on('request', (request) => requests.push(request.url()));
  await context.route((url) => !allowed(url.href), (route) => {
    blocked.push(route.request().url());
    return route.abort();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`pageerror: ${error}`));
  await page.goto(pathToFileURL(job.page).href, { waitUntil: 'load' });
  const facts = await page.evaluate(async () => {
    const images = Array.from(document.images);
    await Promise.all(images.map((img) => (img.complete ? null : img.decode().catch(() => null))));
    return {
      title: document.title,
      text: document.body.innerText,
      images: images.map((img) => ({
        alt: img.alt, src: img.getAttribute('src').slice(0, 30), naturalWidth: img.naturalWidth,
        naturalHeight: img.naturalHeight, complete: img.complete,
      })),
      size: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
    };
  });
  await page.screenshot({ path: job.screenshot, fullPage: true });
  fs.writeFileSync(job.out, JSON.stringify({ requests, blocked, problems, ...facts }, null, 2));
} finally {
  await context.close();
}
