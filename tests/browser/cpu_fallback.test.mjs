// Without a WebGPU adapter (chromium started without --enable-unsafe-webgpu)
// the page says so, falls back to Burn's CPU backend compiled to wasm, and
// still makes diffusers' image within one level; asking for WebGPU only is a
// clear error that leaves the page usable.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { openPage, runPage, worstLevel } from './harness.mjs';

let ctx;

before(async () => { ctx = await openPage('www', '', { webgpu: false }); });
after(async () => ctx?.close());

test('no adapter: generate runs on the CPU and matches diffusers', async () => {
  const { page } = ctx;
  const state = await runPage(page, { model: 'models/tiny-random/', prompt: 'a red heart', negative: 'blurry',
    seed: 42, steps: 4, guidance: 3, eta: 0 });
  assert.equal(state, 'done', await page.textContent('#error'));
  const info = await page.textContent('#backend-info');
  assert.match(info, /Running on CPU \(WebAssembly\)\. WebGPU is not available/);
  const worst = await worstLevel(page, 'tiny', 'guided_eta0', 16);
  assert.ok(worst <= 1, `worst pixel differs by ${worst} levels`);
});

test('"WebGPU only" without an adapter is an error; the CPU choice then works', async () => {
  const { page } = ctx;
  await page.click('details summary'); // "More settings"
  await page.selectOption('#backend', 'webgpu');
  assert.equal(await runPage(page, { steps: 2 }), 'error');
  assert.match(await page.textContent('#error'), /WebGPU is not available/);
  await page.selectOption('#backend', 'cpu');
  assert.equal(await runPage(page, { steps: 2 }), 'done', await page.textContent('#error'));
  assert.equal(await page.textContent('#error'), '');
  assert.deepEqual(ctx.browser.errors, []);
});
