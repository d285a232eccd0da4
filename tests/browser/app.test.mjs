// The generator page end to end in headless chromium (WebGPU on SwiftShader):
// generate equals diffusers' image for the tiny pipeline within one level
// (the native CLI is held to the same bound), cancel stops a run and the next
// one works, inpainting keeps what is not painted, a bad model URL or a corrupted weight file is an error that
// leaves the page usable, and after one visit it works with the server gone.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, mkdir } from 'node:fs/promises';
import { openPage, ROOT } from './harness.mjs';

let server, browser, page;

let ctx;

before(async () => {
  ctx = await openPage('www', '');
  ({ server, browser, page } = ctx);
});

after(async () => ctx?.close());

async function run(settings) {
  for (const [id, v] of Object.entries(settings)) await page.fill(`#${id}`, String(v));
  await page.click('#generate');
  await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(document.body.dataset.state),
    null, { timeout: 180_000 });
  return page.evaluate(() => document.body.dataset.state);
}

async function expected(name) {
  const buf = await readFile(`${ROOT}tests/fixtures/pipelines/tiny/expected.safetensors`);
  const n = Number(buf.readBigUInt64LE(0));
  const [s, e] = JSON.parse(buf.subarray(8, 8 + n).toString())[name].data_offsets;
  const d = buf.subarray(8 + n + s, 8 + n + e);
  return new Float32Array(d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength));
}

test('generate shows the image diffusers makes, and a PNG to download', async () => {
  const state = await run({ model: 'models/tiny-random/', prompt: 'a red heart', negative: 'blurry',
    seed: 42, steps: 4, guidance: 3, eta: 0 });
  assert.equal(state, 'done', await page.textContent('#error'));
  const rgba = await page.evaluate(() => Array.from(
    document.getElementById("out").getContext("2d").getImageData(0, 0, 16, 16).data));
  const want = await expected('guided_eta0');
  let worst = 0;
  for (let i = 0; i < 256; i++) {
    for (let c = 0; c < 3; c++) worst = Math.max(worst, Math.abs(rgba[i * 4 + c] - Math.round(want[c * 256 + i] * 255)));
  }
  assert.ok(worst <= 1, `worst pixel differs by ${worst} levels`);
  assert.equal(await page.isHidden('#download'), false);
  await mkdir(`${ROOT}docs`, { recursive: true });
  await page.screenshot({ path: `${ROOT}docs/screenshot-generate.png`, fullPage: true });
});

test('cancel stops a run and the next generate works', async () => {
  await page.fill('#steps', '200');
  await page.click('#generate');
  await page.waitForFunction(() => /step [2-9]/.test(document.getElementById('status').textContent), null,
    { timeout: 120_000 });
  await page.click('#cancel');
  await page.waitForFunction(() => document.body.dataset.state === 'cancelled', null, { timeout: 60_000 });
  assert.equal(await page.textContent('#status'), 'Cancelled.');
  assert.equal(await run({ steps: 2 }), 'done');
});

test('a bad model URL shows an error and the page stays usable', async () => {
  assert.equal(await run({ model: 'models/does-not-exist/', steps: 2 }), 'error');
  assert.match(await page.textContent('#error'), /does-not-exist\/unet\/config\.json: HTTP 404/);
  assert.equal(await run({ model: 'models/tiny-random/', steps: 2 }), 'done');
  assert.equal(await page.textContent('#error'), '');
});

test('a corrupted safetensors download shows an error and the page stays usable', async () => {
  assert.equal(await run({ model: 'models/corrupt/', steps: 2 }), 'error');
  assert.match(await page.textContent('#error'), /not a valid safetensors file.*truncated/);
  const cached = await page.evaluate(async () => (await (await caches.open('ldw-models-v1')).keys())
    .filter((r) => r.url.includes('/models/corrupt/')).length);
  assert.equal(cached, 0, 'files of a model that failed to load must not stay cached');
  assert.equal(await run({ model: 'models/tiny-random/', steps: 2 }), 'done');
  assert.deepEqual(browser.errors, []);
});

test('inpaint keeps unmasked pixels and changes masked ones', async () => {
  assert.equal(await run({ model: 'models/tiny-random/', steps: 4, seed: 42 }), 'done');
  const pixels = () => page.evaluate(() => Array.from(
    document.getElementById('out').getContext('2d').getImageData(0, 0, 16, 16).data));
  const before = await pixels();
  await page.selectOption('#mode', 'inpaint');
  // Paint the left half with the brush, as a person would.
  await page.setViewportSize({ width: 1280, height: 1400 });
  await page.locator('#mask').scrollIntoViewIfNeeded();
  const box = await page.locator('#mask').boundingBox();
  await page.fill('#brush', '64');
  for (let y = 0.05; y < 1; y += 0.1) {
    await page.mouse.move(box.x + box.width * 0.02, box.y + box.height * y);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.45, box.y + box.height * y, { steps: 6 });
    await page.mouse.up();
  }
  const mask = await page.evaluate(() => Array.from(
    document.getElementById('mask').getContext('2d').getImageData(0, 0, 16, 16).data).filter((_, i) => i % 4 === 3));
  assert.equal(await run({ seed: 7 }), 'done', await page.textContent('#error'));
  const after = await pixels();
  let kept = 0, changed = 0, masked = 0;
  for (let i = 0; i < 256; i++) {
    const same = [0, 1, 2].every((c) => after[i * 4 + c] === before[i * 4 + c]);
    if (mask[i] > 0) { masked++; changed += !same; } else { assert.ok(same, `unmasked pixel ${i} changed`); kept++; }
  }
  assert.ok(masked > 64 && kept > 64, `mask covers ${masked} pixels`);
  assert.ok(changed > masked / 2, `only ${changed} of ${masked} masked pixels changed`);
  await page.screenshot({ path: `${ROOT}docs/screenshot-inpaint.png`, fullPage: true });
  await page.selectOption('#mode', 'generate');
});

test('after one visit the page reloads and generates with the server gone', async () => {
  await page.evaluate(() => navigator.serviceWorker.ready);
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  assert.ok(await page.evaluate(() => !!navigator.serviceWorker.controller), 'page is controlled by the service worker');
  server.close();
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
  assert.equal(await run({ model: 'models/tiny-random/', steps: 2 }), 'done', await page.textContent('#error'));
});
