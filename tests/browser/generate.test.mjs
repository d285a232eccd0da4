// The Rust pipeline compiled to wasm runs on WebGPU (SwiftShader in headless
// chromium) and reproduces diffusers' StableDiffusionPipeline image for the
// tiny fixture pipeline within one 8-bit level, the same bound the native CLI
// test uses; bad model files are JS errors and the module stays usable.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { expectedImage, levelDiff, openPage } from './harness.mjs';

const MODEL = 'tests/fixtures/pipelines/tiny/';
const FILES = ['unet/config.json', 'unet/diffusion_pytorch_model.safetensors', 'vae/config.json',
  'vae/diffusion_pytorch_model.safetensors', 'text_encoder/config.json', 'text_encoder/model.safetensors',
  'tokenizer/vocab.json', 'tokenizer/merges.txt', 'tokenizer/tokenizer_config.json',
  'scheduler/scheduler_config.json'];

let server, browser, page;

let ctx;

before(async () => {
  ctx = await openPage('.', 'www/schedules.html');
  ({ server, browser, page } = ctx);
});

after(async () => ctx?.close());

async function generate(files, options) {
  return page.evaluate(async ([base, files, options]) => {
    const m = await import('./pkg/latent_diffusion_web.js');
    const bytes = {};
    for (const f of files) {
      const r = await fetch(base + f);
      if (r.ok) bytes[f] = new Uint8Array(await r.arrayBuffer());
    }
    try {
      const g = await m.Generator.create(bytes, 'webgpu');
      g.start(options, null, null);
      let steps = 0;
      while (g.step()) steps++;
      const rgba = await g.result();
      return { rgba: Array.from(rgba), steps: steps + 1 };
    } catch (e) {
      return { error: e.message ?? String(e) };
    }
  }, [`/${MODEL}`, files, options]);
}

test('generate on WebGPU matches diffusers within one level', async () => {
  const got = await generate(FILES, { prompt: 'a red heart', negativePrompt: 'blurry', seed: 42, steps: 4,
    guidanceScale: 3.0, eta: 0.0, timestepSpacing: 'leading' });
  assert.equal(got.error, undefined, got.error);
  assert.equal(got.steps, 4);
  const worst = levelDiff(got.rgba, await expectedImage('tiny', 'guided_eta0'), 16);
  assert.ok(worst <= 1, `worst pixel differs by ${worst} levels`);
});

test('an upscaler (StableDiffusionUpscalePipeline layout) on WebGPU matches diffusers within one level', async () => {
  const got = await page.evaluate(async (base) => {
    const m = await import('./pkg/latent_diffusion_web.js');
    const g = await m.Generator.fromUrl(base, 'webgpu', null, { cache: false });
    // The fixture's 8×8 input (tools/make_pipeline_fixtures.py's formula).
    const image = new Uint8Array(8 * 8 * 4);
    for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) for (let c = 0; c < 4; c++) image[(y * 8 + x) * 4 + c] = (x * 37 + y * 91 + c * 53) % 256;
    const options = { prompt: 'a red heart', negativePrompt: 'blurry', seed: 4, steps: 3, guidanceScale: 4.0, eta: 0.0,
      timestepSpacing: 'leading', noiseLevel: 20, width: 8, height: 8 };
    const rgba = await g.generate(options, image, null);
    const refused = async (opts, img) => { try { await g.generate(opts, img, null); return 'no error'; } catch (e) { return e.message; } };
    return {
      rgba: Array.from(rgba), factor: g.upscaleFactor, sizeStep: g.sizeStep,
      noImage: await refused(options, null),
      tooNoisy: await refused({ ...options, noiseLevel: 351 }, image),
    };
  }, '/tests/fixtures/pipelines/tiny-upscale/');
  assert.equal(got.factor, 2);
  assert.equal(got.sizeStep, 1);
  assert.equal(got.rgba.length, 16 * 16 * 4);
  const worst = levelDiff(got.rgba, await expectedImage('tiny-upscale', 'upscale_guided'), 16);
  assert.ok(worst <= 1, `worst pixel differs by ${worst} levels`);
  assert.match(got.noImage, /upscaler: give it the image to upscale/);
  assert.match(got.tooNoisy, /noise level = 351 must be at most 350/);
});

test('a missing or corrupted weight file is a JS error', async () => {
  const missing = await generate(FILES.filter((f) => !f.startsWith('unet/diffusion')), { prompt: 'x' });
  assert.match(missing.error, /unet\/diffusion_pytorch_model\.safetensors is missing/);
  const corrupt = await page.evaluate(async () => {
    const m = await import('./pkg/latent_diffusion_web.js');
    try {
      await m.Generator.create({ 'unet/config.json': new TextEncoder().encode('{') });
      return 'no error';
    } catch (e) { return e.message; }
  });
  assert.match(corrupt, /missing|unet\/config\.json/);
  assert.deepEqual(browser.errors, []);
});

test('fromUrl + generate(onStep): byte progress, step callbacks with previews, same image', async () => {
  const got = await page.evaluate(async (base) => {
    const m = await import('./pkg/latent_diffusion_web.js');
    const progress = new Set(), steps = [];
    const g = await m.Generator.fromUrl(base, 'webgpu', (file, loaded, total) => progress.add(`${file} ${loaded}/${total}`));
    const rgba = await g.generate({ prompt: 'a red heart', negativePrompt: 'blurry', seed: 42, steps: 4,
      guidanceScale: 3.0, eta: 0.0, timestepSpacing: 'leading' }, null, null,
    (done, total, preview) => steps.push([done, total, preview ? preview.length : 0]), true);
    return { rgba: Array.from(rgba), progress: [...progress], steps, backend: g.backend };
  }, `/${MODEL}`);
  assert.match(got.backend, /^WebGPU/);
  assert.ok(got.progress.some((p) => /^unet\/diffusion_pytorch_model\.safetensors (\d+)\/\1$/.test(p)),
    got.progress.join('\n'));
  // Previews on every step but the last; the final image is the return value.
  assert.deepEqual(got.steps, [[1, 4, 1024], [2, 4, 1024], [3, 4, 1024], [4, 4, 0]]);
  const worst = levelDiff(got.rgba, await expectedImage('tiny', 'guided_eta0'), 16);
  assert.ok(worst <= 1, `worst pixel differs by ${worst} levels`);
});

test('generate(): cancel from the step callback resolves to undefined; a bad URL is an error', async () => {
  const got = await page.evaluate(async (base) => {
    const m = await import('./pkg/latent_diffusion_web.js');
    const g = await m.Generator.fromUrl(base);
    const seen = [];
    const result = await g.generate({ prompt: 'x', steps: 50 }, null, null, (done) => {
      seen.push(done);
      if (done === 2) g.cancel();
    });
    const after = await g.generate({ prompt: 'x', steps: 2 });
    let bad;
    try { await m.Generator.fromUrl('/no/such/model/'); } catch (e) { bad = e.message; }
    return { result: result === undefined, seen, after: after.length, bad };
  }, `/${MODEL}`);
  assert.equal(got.result, true);
  assert.deepEqual(got.seen, [1, 2]);
  assert.equal(got.after, 16 * 16 * 4);
  assert.match(got.bad, /\/no\/such\/model\/unet\/config\.json: HTTP 404/);
});

test('fromUrl: two generate() at once is an error, a stalled body times out, an abort cancels', async () => {
  const got = await page.evaluate(async (base) => {
    const m = await import('./pkg/latent_diffusion_web.js');
    const g = await m.Generator.fromUrl(base, 'cpu', null, { cache: false });
    const first = g.generate({ prompt: 'a red heart', steps: 3 });
    let second;
    try { await g.generate({ prompt: 'x', steps: 2 }); second = 'no error'; } catch (e) { second = e.message; }
    const image = await first;
    const again = await g.generate({ prompt: 'x', steps: 2 });
    // An aborted download rejects at once with "download cancelled".
    const ctl = new AbortController();
    ctl.abort();
    let aborted;
    try { await m.Generator.fromUrl(base, 'cpu', null, { cache: false, signal: ctl.signal }); } catch (e) { aborted = e.message; }
    let badOptions;
    try { await m.Generator.fromUrl(base, 'cpu', null, { stallTimeoutMs: -1 }); } catch (e) { badOptions = e.message; }
    // A body that stops sending is given up after the stall timeout.
    let stalled;
    try {
      await m.Generator.fromUrl('/stall' + base, 'cpu', null, { cache: false, stallTimeoutMs: 1000 });
    } catch (e) { stalled = e.message; }
    // A folder URL typed without its trailing slash still finds the files.
    const noSlash = await m.Generator.fromUrl(base.replace(/\/$/, ''), 'cpu', null, { cache: false });
    return { second, image: image.length, again: again.length, aborted, badOptions, stalled, noSlash: noSlash.backend };
  }, `/${MODEL}`);
  assert.match(got.second, /already running on this Generator/);
  assert.equal(got.image, 16 * 16 * 4);
  assert.equal(got.again, 16 * 16 * 4);
  assert.match(got.aborted, /download cancelled/);
  assert.match(got.badOptions, /stallTimeoutMs = -1/);
  assert.match(got.stalled, /no data arrived for 1 s after 100 bytes; the server stalled/);
  assert.match(got.noSlash, /CPU/);
});

test('fromUrl with the VAE from its own folder (TAESD as a fast decoder); a misspelt option is an error', async () => {
  const got = await page.evaluate(async ([base, taesd]) => {
    const m = await import('./pkg/latent_diffusion_web.js');
    const options = { prompt: 'a red heart', steps: 2, guidanceScale: 1, seed: 3 };
    const kl = await (await m.Generator.fromUrl(base, 'cpu', null, { cache: false })).generate(options);
    const swapped = await m.Generator.fromUrl(base, 'cpu', null, { cache: false, vae: taesd });
    const tiny = await swapped.generate(options);
    const info = await m.Generator.inspect(base, { cache: false, vae: taesd });
    let missing, typo;
    try { await m.Generator.fromUrl(base, 'cpu', null, { cache: false, vae: '/no/such/vae/' }); } catch (e) { missing = e.message; }
    try { await m.Generator.fromUrl(base, 'cpu', null, { stallTimeout: 5 }); } catch (e) { typo = e.message; }
    return {
      sizes: [kl.length, tiny.length], missing, typo,
      vaeBytes: info.files.find((f) => f.path.startsWith('vae/')).bytes,
    };
  }, [`/${MODEL}`, '/tests/fixtures/models/vae_tiny/']);
  // The test TAESD upsamples 4× (three blocks), the tiny KL VAE 2×: 8×8 latents
  // give 32×32 and 16×16 images (both are 8× for real SD models and TAESD).
  assert.deepEqual(got.sizes, [16 * 16 * 4, 32 * 32 * 4]);
  const { stat } = await import('node:fs/promises');
  const want = (await stat(new URL('../fixtures/models/vae_tiny/diffusion_pytorch_model.safetensors', import.meta.url))).size;
  assert.equal(got.vaeBytes, want, 'inspect sizes the swapped VAE');
  assert.match(got.missing, /\/no\/such\/vae\/config\.json: HTTP 404/);
  assert.match(got.typo, /bad load options: unknown option `stallTimeout`/);
});

// Precision: f16 weights (half the memory) on the CPU path, and on WebGPU
// where the adapter has shader-f16 (an error naming it where it has not).
test('precision f16 halves the weights and stays near the f32 image', async () => {
  const got = await page.evaluate(async (base) => {
    const m = await import('./pkg/latent_diffusion_web.js');
    const opts = { prompt: 'a red heart', negativePrompt: 'blurry', seed: 42, steps: 4, guidanceScale: 3.0,
      eta: 0.0, timestepSpacing: 'leading' };
    const run = async (backend, precision) => {
      try {
        const g = await m.Generator.fromUrl(base, backend, null, { cache: false, precision });
        const rgba = await g.generate(opts, null, null, null, false);
        const out = { precision: g.precision, bytes: g.weightBytes, rgba: Array.from(rgba) };
        g.free();
        return out;
      } catch (e) {
        return { error: e.message ?? String(e) };
      }
    };
    const adapter = await navigator.gpu?.requestAdapter();
    return {
      f32: await run('cpu', 'f32'), f16: await run('cpu', 'f16'), auto: await run('cpu', undefined),
      gpu: await run('webgpu', 'f16'), bad: await run('cpu', 'half'),
      gpuF16: !!adapter?.features.has('shader-f16'),
    };
  }, `/${MODEL}`);
  for (const k of ['f32', 'f16', 'auto']) assert.equal(got[k].error, undefined, got[k].error);
  assert.equal(got.f32.precision, 'f32');
  assert.equal(got.auto.precision, 'f32', 'auto keeps a small model in f32');
  assert.equal(got.f16.precision, 'f16');
  // Half, but for the token table, which stays on the host as stored (f16) either way.
  assert.ok(got.f16.bytes < 0.65 * got.f32.bytes, `f16 ${got.f16.bytes} vs f32 ${got.f32.bytes} bytes`);
  const worst = levelDiff(got.f16.rgba, await expectedImage('tiny', 'guided_eta0'), 16);
  assert.ok(worst <= 12, `f16 on the CPU: worst pixel differs by ${worst} levels`);
  console.log(`WebGPU adapter has shader-f16: ${got.gpuF16}`);
  if (got.gpuF16) {
    assert.equal(got.gpu.error, undefined, got.gpu.error);
    assert.equal(got.gpu.precision, 'f16');
  } else {
    assert.match(got.gpu.error, /cannot compute in f16 .*shader-f16/);
  }
  assert.match(got.bad.error, /bad load options: precision "half" is not one of "auto", "f32" or "f16"/);
});
