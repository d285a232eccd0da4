// The placeholder page: the wasm module loads in a real browser, the DDIM
// timesteps match the native crate, bad input shows an error and the page
// stays usable, and the noise stream is bit-identical to the native one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { openPage, ROOT } from './harness.mjs';

let server, browser, page;

let ctx;

before(async () => {
  ctx = await openPage('www', 'schedules.html');
  ({ server, browser, page } = ctx);
});

after(async () => ctx?.close());

test('page shows the DDIM timesteps computed in wasm', async () => {
  // scaled_linear with steps_offset 1, leading spacing, 10 steps (Stable Diffusion's setup).
  assert.equal(await page.textContent('#timesteps'), '901, 801, 701, 601, 501, 401, 301, 201, 101, 1');
  await page.selectOption('#timestep_spacing', 'trailing');
  await page.fill('#steps', '4');
  await page.dispatchEvent('#steps', 'input');
  assert.equal(await page.textContent('#timesteps'), '999, 749, 499, 249');
});

test('absurd step counts show an error and the page keeps working', async () => {
  await page.fill('#steps', '5000');
  await page.dispatchEvent('#steps', 'input');
  assert.match(await page.textContent('#error'), /num_inference_steps = 5000 exceeds num_train_timesteps = 1000/);
  await page.fill('#steps', '2');
  await page.dispatchEvent('#steps', 'input');
  assert.equal(await page.textContent('#error'), '');
  assert.equal(await page.textContent('#timesteps'), '999, 499');
  assert.deepEqual(browser.errors, []);
});

test('seeded noise in wasm is bit-identical to the native stream', async () => {
  const fixture = JSON.parse(await readFile(`${ROOT}tests/fixtures/noise.json`, 'utf8'));
  for (const { seed, values } of fixture.streams) {
    const got = await page.evaluate(async ([s, n]) => {
      const m = await import('./pkg/latent_diffusion_web.js');
      return Array.from(m.gaussianNoise(BigInt(s), n));
    }, [seed, values.length]);
    // Both sides as f32 bit patterns.
    const bits = (xs) => Array.from(new Uint32Array(Float32Array.from(xs).buffer));
    assert.deepEqual(bits(got), bits(values), `seed ${seed}`);
  }
});
