// The embeddable widget (www/widget.js) on a host page of another origin (a
// second port on 127.0.0.1), the wasm and weights served with CORS from the
// first: it makes the main page's image for the same settings, fires its
// events in order, can be cancelled, shows a clear error for a bad model URL
// and stays usable, and two widgets share one model download.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launch, serve, runPage, ROOT } from './harness.mjs';

let app, host, hostDir, browser, page;
let redHeart; // the first widget's image (WebGPU page, 'auto')

before(async () => {
  app = await serve('www', {}, { cors: true });
  hostDir = await mkdtemp(join(tmpdir(), 'ldw-host-'));
  await writeFile(join(hostDir, 'host.html'), `<!doctype html><meta charset="utf-8">
<title>A host page</title>
<h1>A page on another origin</h1>
<script type="module" src="${app.url}widget.js"></script>
<latent-diffusion id="a" prompt="red heart" seed="0" steps="4" show-steps></latent-diffusion>
<latent-diffusion id="b" prompt="rocket" seed="1" steps="4" mode="learn"></latent-diffusion>`);
  host = await serve('www', { '/host/': hostDir });
  browser = await launch();
  page = await browser.context.newPage();
  await page.goto(`${host.url}host/host.html`);
  await page.waitForFunction(() => customElements.get('latent-diffusion'), null, { timeout: 30_000 });
  // Each widget's events, in order.
  await page.evaluate(() => {
    window.events = {};
    for (const w of document.querySelectorAll('latent-diffusion')) {
      window.events[w.id] = [];
      for (const type of ['progress', 'step', 'done', 'cancel', 'error']) {
        w.addEventListener(type, (e) => window.events[w.id].push(type === 'step' ? `step ${e.detail.done}` : type));
      }
    }
  });
});

after(async () => {
  await browser?.close();
  app?.close();
  host?.close();
  if (hostDir) await rm(hostDir, { recursive: true, force: true });
});

/** Runs `generate()` on widget `id`; returns its PNG's pixels and the events. */
const generate = (id) => page.evaluate(async (id) => {
  const w = document.getElementById(id);
  window.events[id] = [];
  let blob;
  try { blob = await w.generate(); } catch (e) { return { error: e.message, events: window.events[id] }; }
  if (!blob) return { cancelled: true, events: window.events[id] };
  const bmp = await createImageBitmap(blob);
  const c = new OffscreenCanvas(bmp.width, bmp.height);
  c.getContext('2d').drawImage(bmp, 0, 0);
  return { pixels: Array.from(c.getContext('2d').getImageData(0, 0, bmp.width, bmp.height).data), events: window.events[id] };
}, id);

const weightRequests = () => app.requests.filter((p) => p.endsWith('.safetensors')).length;

test('a widget on another origin makes the main page\'s image, with its events in order', async () => {
  const a = await generate('a');
  assert.equal(a.error, undefined);
  const ev = a.events.filter((e) => e !== 'progress');
  assert.deepEqual(ev, ['step 1', 'step 2', 'step 3', 'step 4', 'done']);
  assert.ok(a.events.indexOf('progress') >= 0 && a.events.indexOf('progress') < a.events.indexOf('step 1'),
    'download progress comes first');
  assert.equal(await page.$eval('#a', (w) => w.shadowRoot.querySelectorAll('.strip canvas').length), 3,
    'the step strip shows the previews');
  // The main page, same settings, same image.
  const main = await browser.context.newPage();
  await main.goto(app.url);
  await main.waitForSelector('body[data-ready="true"]');
  // (The widget's default guidance for our model is the page's, 1.5.)
  assert.equal(await runPage(main, { prompt: 'red heart', negative: '', seed: 0, steps: 4, guidance: 1.5, eta: 0 }), 'done');
  const want = await main.evaluate(() => Array.from(
    document.getElementById('out').getContext('2d').getImageData(0, 0, 64, 64).data));
  await main.close();
  assert.deepEqual(a.pixels, want);
  redHeart = a.pixels;
});

test('two widgets share one model download', async () => {
  const before = weightRequests();
  assert.ok(before >= 3, `${before} weight requests so far`);
  const b = await generate('b');
  assert.equal(b.error, undefined);
  // mode="learn": a strip of x̂₀ per step.
  assert.deepEqual(b.events, ['step 1', 'step 2', 'step 3', 'step 4', 'done']);
  assert.equal(await page.$eval('#b', (w) => w.shadowRoot.querySelectorAll('.strip canvas').length), 4);
  assert.equal(weightRequests(), before, 'the second widget fetched weights again');
  await page.screenshot({ path: `${ROOT}docs/screenshot-widget.png` });
});

test('a widget can be cancelled, and a bad model URL is a clear error that leaves it usable', async () => {
  await page.evaluate(() => document.getElementById('a').setAttribute('steps', '500'));
  const run = generate('a');
  await page.waitForFunction(() => window.events.a.includes('step 2'), null, { timeout: 60_000 });
  await page.evaluate(() => document.getElementById('a').cancel());
  const r = await run;
  assert.equal(r.cancelled, true);
  assert.equal(r.events.at(-1), 'cancel');
  await page.evaluate((url) => {
    const w = document.getElementById('a');
    w.setAttribute('steps', '2');
    w.setAttribute('model', `${url}models/does-not-exist/`);
  }, app.url);
  const bad = await generate('a');
  assert.match(bad.error, /does-not-exist\/unet\/config\.json: HTTP 404/);
  assert.deepEqual(bad.events, ['error']);
  assert.match(await page.$eval('#a', (w) => w.shadowRoot.querySelector('.error').textContent), /HTTP 404/);
  await page.evaluate(() => document.getElementById('a').removeAttribute('model'));
  const ok = await generate('a');
  assert.equal(ok.error, undefined);
  assert.equal(ok.events.at(-1), 'done');
  assert.deepEqual(browser.errors, []);
});

test('without WebGPU a widget says so and makes the same image on the CPU', async () => {
  const other = await launch({ webgpu: false });
  try {
    const p = await other.context.newPage();
    await p.goto(`${host.url}host/host.html`);
    await p.waitForFunction(() => customElements.get('latent-diffusion'), null, { timeout: 30_000 });
    const pixels = await p.evaluate(async () => {
      const bmp = await createImageBitmap(await document.getElementById('a').generate());
      const c = new OffscreenCanvas(bmp.width, bmp.height);
      c.getContext('2d').drawImage(bmp, 0, 0);
      return Array.from(c.getContext('2d').getImageData(0, 0, bmp.width, bmp.height).data);
    });
    assert.deepEqual(pixels, redHeart);
    // Said as the main page says it.
    assert.match(await p.$eval('#a', (w) => w.shadowRoot.querySelector('.note').textContent),
      /^Running on CPU \(WebAssembly\)\. .*WebGPU/);
    assert.deepEqual(other.errors, []);
  } finally {
    await other.close();
  }
});
