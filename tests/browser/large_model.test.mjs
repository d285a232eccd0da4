// A full-size model layout (BK-SDM-Tiny: 1.06 GB of f16 weights, random,
// written by examples/random_model.rs from the published configs) loads in
// the browser by streaming: peak wasm memory is measured after every progress
// callback (WebAssembly.Memory.buffer.byteLength) and on WebGPU must stay
// under 256 MiB plus the largest tensor, whatever the model's size. The same
// folder loads on an adapter held to WebGPU's default limits (128 MiB
// bindings), and on the CPU path (weights then live in wasm memory), where it
// also runs one denoising step at 64×64 and decodes it (a step of this model
// on SwiftShader takes over 5 minutes, too long for CI). Numbers are printed
// for the README.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, serve, launch } from './harness.mjs';

const LAYOUT = 'bk-sdm-tiny';
const FOLDER = join(tmpdir(), 'ldw-layouts', LAYOUT);
const MiB = 2 ** 20;
let server;

before(async () => {
  if (!existsSync(join(FOLDER, 'vae/diffusion_pytorch_model.safetensors'))) {
    const bin = join(process.env.CARGO_TARGET_DIR ?? join(ROOT, 'target'), 'debug/examples/random_model');
    assert.ok(existsSync(bin), `${bin} is missing: run cargo test (it builds the examples) first`);
    execFileSync(bin, [join(ROOT, 'tests/fixtures/layouts', LAYOUT), FOLDER], { stdio: 'inherit' });
  }
  server = await serve('.', { '/big/': FOLDER });
});
after(() => server?.close());

/** Loads the folder in a fresh browser and runs one step; returns what was measured. */
async function loadAndStep(backend, { defaultLimits = false, base = '/big/', step = true } = {}) {
  const browser = await launch();
  try {
    const page = await browser.context.newPage();
    page.on('console', (m) => { if (m.type() === 'error') console.log('console:', m.text()); });
    await page.goto(`${server.url}www/schedules.html`);
    return await page.evaluate(async ({ backend, defaultLimits, base, step }) => {
      if (defaultLimits) {
        // The limits a page gets from an adapter that offers only WebGPU's defaults.
        const cap = { maxStorageBufferBindingSize: 128 * 2 ** 20, maxBufferSize: 256 * 2 ** 20 };
        const real = Object.getOwnPropertyDescriptor(GPUAdapter.prototype, 'limits').get;
        Object.defineProperty(GPUAdapter.prototype, 'limits', {
          get() {
            const l = real.call(this);
            return new Proxy(l, { get: (t, k) => (k in cap ? cap[k] : t[k]) });
          },
        });
      }
      const m = await import('./pkg/latent_diffusion_web.js');
      const wasm = await m.default();
      const mem = () => wasm.memory.buffer.byteLength;
      let peak = mem(), bytes = 0;
      const t0 = performance.now();
      let g;
      try {
        g = await m.Generator.fromUrl(base, backend, (file, loaded) => {
          peak = Math.max(peak, mem());
          bytes = loaded;
        }, { cache: false });
      } catch (e) {
        return { error: e.message };
      }
      const loadMs = performance.now() - t0;
      peak = Math.max(peak, mem());
      if (!step) return { backend: g.backend, peak, afterAll: mem(), loadMs };
      const t1 = performance.now();
      const rgba = await g.generate({ prompt: 'a photo of a cat', seed: 1, steps: 1, guidanceScale: 1,
        width: 64, height: 64 }, null, null, null, false);
      const stepMs = performance.now() - t1;
      let sum = 0;
      for (let i = 0; i < rgba.length; i++) sum += rgba[i];
      return { backend: g.backend, peak, afterAll: mem(), loadMs, stepMs, len: rgba.length, mean: sum / rgba.length };
    }, { backend, defaultLimits, base, step });
  } finally {
    await browser.close();
  }
}

function report(name, r, model = LAYOUT) {
  console.log(`${model} ${name}: ${r.backend}; peak wasm memory while loading ${(r.peak / MiB).toFixed(0)} MiB, `
    + `at the end ${(r.afterAll / MiB).toFixed(0)} MiB; load ${(r.loadMs / 1000).toFixed(1)} s`
    + (r.stepMs === undefined ? '' : `, one 64×64 step + decode ${(r.stepMs / 1000).toFixed(1)} s`));
}

// The largest tensor held in wasm memory: the token table (49408 × 768, f16),
// kept on the host (CLIPTextModel::host_key). Device tensors pass through wasm
// memory in 8 MiB pieces.
const LARGEST = 49408 * 768 * 2;

test('WebGPU: streamed load stays under 256 MiB plus the largest tensor', { timeout: 900_000 }, async () => {
  const r = await loadAndStep('webgpu', { step: false });
  assert.equal(r.error, undefined, r.error);
  report('WebGPU (SwiftShader)', r);
  assert.match(r.backend, /WebGPU/);
  const bound = 256 * MiB + LARGEST;
  assert.ok(r.peak < bound, `peak wasm memory ${r.peak} ≥ ${bound}`);
});

test('WebGPU held to the default limits (128 MiB bindings) still loads', { timeout: 900_000 }, async () => {
  const r = await loadAndStep('webgpu', { defaultLimits: true, step: false });
  assert.equal(r.error, undefined, r.error);
  report('WebGPU, default limits', r);
  assert.match(r.backend, /WebGPU/);
});

test('CPU: the same folder loads into wasm memory and steps', { timeout: 900_000 }, async () => {
  const r = await loadAndStep('cpu');
  assert.equal(r.error, undefined, r.error);
  report('CPU (WebAssembly)', r);
  assert.match(r.backend, /CPU/);
  assert.equal(r.len, 64 * 64 * 4);
  assert.ok(r.mean > 0 && r.mean < 255, `image mean ${r.mean}`);
  // The weights as f32 (2.12 GB) are the floor; nothing else may add a second copy.
  assert.ok(r.peak < 2.12e9 + 512 * MiB, `peak wasm memory ${r.peak}`);
});

test('the shipped model: peak wasm memory while loading, for the README', { timeout: 300_000 }, async () => {
  for (const backend of ['webgpu', 'cpu']) {
    const r = await loadAndStep(backend, { base: '/www/models/emoji-4step/' });
    assert.equal(r.error, undefined, r.error);
    report(r.backend, r, 'emoji-4step');
    assert.ok(r.peak < 256 * MiB, `peak wasm memory ${r.peak}`);
  }
});
