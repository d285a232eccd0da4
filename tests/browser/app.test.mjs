// The generator page end to end in headless chromium (WebGPU on SwiftShader):
// generate equals diffusers' image within one level, for the tiny pipeline and
// for the shipped model with the page's default settings (the native CLI is
// held to the same bound); img2img redoes the image; cancel stops a run and
// the next one works; inpainting keeps what is not painted; a bad model URL or
// a corrupted weight file is an error that leaves the page usable; after one
// visit it works with the server gone.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { expectedImage, launch, openPage, ROOT, runPage, serve, worstLevel } from './harness.mjs';

let server, browser, page;

let ctx;

before(async () => {
  await mkdir(`${ROOT}docs`, { recursive: true });
  ctx = await openPage('www', '');
  ({ server, browser, page } = ctx);
});

after(async () => ctx?.close());

const run = (settings) => runPage(page, settings);
const pixels = (size) => page.evaluate((n) => Array.from(
  document.getElementById('out').getContext('2d').getImageData(0, 0, n, n).data), size);

test('generate shows the image diffusers makes, and a PNG to download', async () => {
  await page.click('details summary'); // "More settings"
  await page.selectOption('#backend', 'webgpu');
  const state = await run({ model: 'models/tiny-random/', prompt: 'a red heart', negative: 'blurry',
    seed: 42, steps: 4, guidance: 3, eta: 0 });
  assert.equal(state, 'done', await page.textContent('#error'));
  const worst = await worstLevel(page, 'tiny', 'guided_eta0', 16);
  assert.ok(worst <= 1, `worst pixel differs by ${worst} levels`);
  assert.equal(await page.isHidden('#download'), false);
  assert.match(await page.textContent('#backend-info'), /^Running on WebGPU/);
  await page.selectOption('#backend', 'auto');
});

test('the shipped model with the default settings makes diffusers\' red heart', async () => {
  await page.selectOption('#preset', 'models/emoji-4step/');
  assert.equal(await page.inputValue('#model'), 'models/emoji-4step/');
  assert.equal(await page.inputValue('#steps'), '4');
  assert.equal(await page.inputValue('#guidance'), '1.5');
  // "auto" on SwiftShader, a software adapter, picks the (faster) CPU path...
  assert.equal(await run({ prompt: 'red heart', negative: '', seed: 0, eta: 0 }), 'done',
    await page.textContent('#error'));
  assert.match(await page.textContent('#backend-info'), /Running on CPU \(WebAssembly\)\. The only WebGPU adapter here is a software renderer/);
  // "auto" precision keeps a 15 MB model in f32 (30.2 MB of weights; its token table stays f16).
  assert.match(await page.textContent('#backend-info'), /Weights in f32: \d+\.\d MB\.$/);
  let worst = await worstLevel(page, 'emoji-4step', 'red_heart', 64);
  assert.ok(worst <= 1, `CPU: worst pixel differs by ${worst} levels`);
  await page.screenshot({ path: `${ROOT}docs/screenshot-generate.png`, fullPage: true });
  // ...and WebGPU, when asked for, makes the same image.
  await page.selectOption('#backend', 'webgpu');
  assert.equal(await run({ prompt: 'red heart' }), 'done', await page.textContent('#error'));
  assert.match(await page.textContent('#backend-info'), /^Running on WebGPU/);
  worst = await worstLevel(page, 'emoji-4step', 'red_heart', 64);
  assert.ok(worst <= 1, `WebGPU: worst pixel differs by ${worst} levels`);
  await page.selectOption('#backend', 'auto');
  // Precision f16 (More settings): the CPU path holds half the bytes and the
  // image stays within a few levels of diffusers' f32 one (natively: 3.4).
  await page.selectOption('#precision', 'f16');
  assert.equal(await run({ prompt: 'red heart' }), 'done', await page.textContent('#error'));
  assert.match(await page.textContent('#backend-info'), /Weights in f16: \d+\.\d MB\.$/);
  worst = await worstLevel(page, 'emoji-4step', 'red_heart', 64);
  assert.ok(worst <= 6, `f16: worst pixel differs by ${worst} levels`);
  await page.selectOption('#precision', 'auto');
});

test('on a phone-sized screen everything fits in one column', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction(() => window.innerWidth === 390);
  // Twice in about nine full-suite runs the first layout after the resize
  // still had the image 512px wide (the page 134px too wide), right after a
  // run had redrawn it. Give layout up to 5 s to settle; if the page never
  // fits, the checks below fail and name what sticks out.
  await page.waitForFunction(() => document.documentElement.scrollWidth <= window.innerWidth, null,
    { timeout: 5000 }).catch(() => {});
  const layout = await page.evaluate(() => ({
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    stage: document.getElementById('stage').getBoundingClientRect().width,
    hiddenTools: getComputedStyle(document.getElementById('image-tools')).display,
    // What sticks out, to name it when the check fails.
    wide: [...document.querySelectorAll('body *')]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
      .slice(0, 5)
      .map((e) => `${e.tagName.toLowerCase()}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}px`),
  }));
  assert.ok(layout.overflow <= 0, `page is ${layout.overflow}px wider than the screen: ${layout.wide.join(', ')}`);
  assert.ok(layout.stage > 300 && layout.stage <= 390, `image is ${layout.stage}px wide`);
  assert.equal(layout.hiddenTools, 'none');
  for (const id of ['prompt', 'generate', 'preset', 'model']) {
    const box = await page.locator(`#${id}`).boundingBox();
    assert.ok(box.x >= 0 && box.x + box.width <= 390, `#${id} sticks out: ${JSON.stringify(box)}`);
  }
  await page.setViewportSize({ width: 1280, height: 1000 });
});

test('Upscale 4× makes the red heart 256×256, as diffusers\' upscaler does', async () => {
  await page.selectOption('#preset', 'models/emoji-4step/');
  assert.equal(await run({ prompt: 'red heart', negative: '', seed: 0, eta: 0 }), 'done', await page.textContent('#error'));
  assert.equal(await page.isHidden('#upscale'), false);
  await page.click('#upscale');
  await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(document.body.dataset.state)
    && document.querySelector('#out').width === 256, null, { timeout: 300_000 }).catch(() => {});
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'done', await page.textContent('#error'));
  assert.equal(await page.textContent('#status'), 'Upscaled to 256×256.');
  assert.equal(await page.isHidden('#upscale'), true); // once is enough
  assert.match(await page.getAttribute('#download', 'download'), /^red-heart-seed0-x4\.png$/);
  // The page's 64×64 input is its own red heart, within a level of diffusers'
  // (the fixture's input), so the 256×256 images agree on average to a level.
  const rgba = await page.evaluate(() => Array.from(document.querySelector('#out').getContext('2d').getImageData(0, 0, 256, 256).data));
  const want = await expectedImage('emoji-upscaler', 'red_heart_x4');
  let total = 0;
  for (let i = 0; i < 256 * 256; i++) for (let c = 0; c < 3; c++) total += Math.abs(rgba[i * 4 + c] - want[c * 65536 + i] * 255);
  const mean = total / (3 * 65536);
  assert.ok(mean <= 1, `mean difference ${mean.toFixed(2)} levels`);
  await page.screenshot({ path: `${ROOT}docs/screenshot-upscale.png` });
});

test('img2img redoes the whole image from the current one', async () => {
  assert.equal(await run({ model: 'models/tiny-random/', steps: 4, seed: 42 }), 'done');
  const before = await pixels(16);
  await page.selectOption('#mode', 'img2img');
  assert.equal(await page.inputValue('#strength'), '0.6');
  assert.equal(await run({ seed: 5 }), 'done', await page.textContent('#error'));
  const after = await pixels(16);
  let changed = 0;
  for (let i = 0; i < 256; i++) changed += [0, 1, 2].some((c) => after[i * 4 + c] !== before[i * 4 + c]);
  assert.ok(changed > 128, `only ${changed} of 256 pixels changed`);
  await page.selectOption('#mode', 'generate');
});

test('cancel stops a run and the next generate works', async () => {
  await page.fill('#steps', '500');
  await page.click('#generate');
  await page.waitForFunction(() => /step [2-9]/.test(document.getElementById('status').textContent), null,
    { timeout: 120_000 });
  await page.click('#cancel');
  await page.waitForFunction(() => document.body.dataset.state === 'cancelled', null, { timeout: 60_000 });
  assert.equal(await page.textContent('#status'), 'Cancelled.');
  assert.equal(await run({ steps: 2 }), 'done');
});

test('cancel during one long step replaces the worker, and the next run works', async () => {
  // 1024×1024 on the CPU path: one step of the shipped model takes far longer
  // than the 3 s the page waits for a step to end after Cancel.
  await page.evaluate(() => { document.querySelector('details').open = true; });
  await page.selectOption('#preset', 'models/emoji-4step/');
  await page.selectOption('#backend', 'cpu');
  await page.evaluate(() => { document.getElementById('backend-info').textContent = ''; });
  for (const [id, v] of Object.entries({ width: 1024, height: 1024, steps: 4 })) await page.fill(`#${id}`, String(v));
  await page.click('#generate');
  await page.waitForFunction(() => /^Running on CPU/.test(document.getElementById('backend-info').textContent),
    null, { timeout: 120_000 });
  const clicked = Date.now();
  await page.click('#cancel');
  await page.waitForFunction(() => document.body.dataset.state === 'cancelled', null, { timeout: 30_000 });
  assert.match(await page.textContent('#status'), /restarted to stop a long step/);
  assert.ok(Date.now() - clicked < 30_000);
  await page.fill('#width', '');
  await page.fill('#height', '');
  assert.equal(await run({ steps: 2 }), 'done', await page.textContent('#error'));
  await page.selectOption('#backend', 'auto');
});

test('a bad model URL shows an error and the page stays usable', async () => {
  assert.equal(await run({ model: 'models/does-not-exist/', steps: 2 }), 'error');
  assert.match(await page.textContent('#error'), /does-not-exist\/unet\/config\.json: HTTP 404/);
  assert.equal(await run({ model: 'models/tiny-random/', steps: 2 }), 'done');
  assert.equal(await page.textContent('#error'), '');
});

test('the model line says what a folder needs before it is downloaded', async () => {
  const { stat } = await import('node:fs/promises');
  let bytes = 0;
  for (const f of ['unet/diffusion_pytorch_model', 'vae/diffusion_pytorch_model', 'text_encoder/model']) {
    bytes += (await stat(`${ROOT}www/models/tiny-random/${f}.safetensors`)).size;
  }
  await page.evaluate(() => caches.delete('ldw-models-v3'));
  await page.fill('#model', 'models/tiny-random/');
  await page.dispatchEvent('#model', 'change');
  await page.waitForFunction(() => /to download/.test(document.getElementById('model-info').textContent));
  const info = await page.textContent('#model-info');
  assert.match(info, new RegExp(`^${(bytes / 1e6).toFixed(1)} MB to download`), info);
  assert.match(info, /made for 16×16 · fits the CPU path/);
  // What the line says the weights will take is what they take once loaded.
  const said = info.match(/([\d.]+ MB) of weights once loaded as f32/)?.[1];
  assert.ok(said, info);
  // Only the headers were read: no weight file was kept in the cache (the
  // fp16 variants the folder lacks are remembered as 404s).
  const kept = await page.evaluate(async () => {
    const cache = await caches.open('ldw-models-v3');
    const urls = [];
    for (const r of await cache.keys()) {
      if (r.url.includes('/tiny-random/') && r.url.endsWith('.safetensors') && (await cache.match(r)).status !== 404) urls.push(r.url);
    }
    return urls;
  });
  assert.deepEqual(kept, []);
  assert.equal(await run({ model: 'models/tiny-random/', steps: 2 }), 'done', await page.textContent('#error'));
  assert.match(await page.textContent('#backend-info'), new RegExp(`Weights in f32: ${said}\\.$`));
  // A folder that is not there is named before any Generate.
  await page.fill('#model', 'models/does-not-exist/');
  await page.dispatchEvent('#model', 'change');
  await page.waitForFunction(() => /cannot be used/.test(document.getElementById('model-info').textContent));
  assert.match(await page.textContent('#model-info'), /does-not-exist\/unet\/config\.json: HTTP 404/);
  // The public presets carry their settings, licence and model card.
  const presets = await page.$$eval('#preset option', (os) => os.map((o) => [o.value, o.dataset.steps, o.dataset.card]));
  for (const name of ['stabilityai/sd-turbo', 'IDKiro/sdxs-512-dreamshaper', 'nota-ai/bk-sdm-tiny']) {
    const p = presets.find(([v]) => v === `https://huggingface.co/${name}/resolve/main/`);
    assert.ok(p && p[1] && p[2] === `https://huggingface.co/${name}`, `preset ${name}: ${p}`);
  }
  await page.selectOption('#preset', 'models/emoji-4step/');
  await page.waitForFunction(() => /to download/.test(document.getElementById('model-info').textContent));
  assert.equal(await run({ model: 'models/tiny-random/', steps: 2 }), 'done');
});

test('typing a model URL, then pressing Generate as a person does, starts the run', async () => {
  await page.fill('#model', 'models/emoji-4step/');
  await page.dispatchEvent('#model', 'change');
  await page.waitForFunction(() => /made for 64×64/.test(document.getElementById('model-info').textContent));
  await page.fill('#steps', '2');
  await page.fill('#model', 'models/tiny-random/'); // the field keeps the focus: no 'change' yet
  const box = await page.locator('#generate').boundingBox();
  await page.evaluate(() => { document.body.dataset.state = 'idle'; });
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down(); // blurs the field: 'change', and the new model is inspected
  await page.waitForTimeout(1000); // a slow press, long enough for the inspection to answer
  await page.mouse.up();
  const started = await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state),
    null, { timeout: 60_000 }).then(() => true, () => false);
  assert.ok(started, `the click was lost: state ${await page.evaluate(() => document.body.dataset.state)}`);
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'done', await page.textContent('#error'));
  // The notes the press held back are there now.
  assert.match(await page.textContent('#model-info'), /made for 16×16/);
  assert.match(await page.textContent('#guidance-info'), /runs each step twice/);
});

test('a corrupted safetensors download shows an error and the page stays usable', async () => {
  assert.equal(await run({ model: 'models/corrupt/', steps: 2 }), 'error');
  assert.match(await page.textContent('#error'), /not a valid safetensors file.*truncated/);
  const cached = await page.evaluate(async () => (await (await caches.open('ldw-models-v3')).keys())
    .filter((r) => r.url.includes('/models/corrupt/')).length);
  assert.equal(cached, 0, 'files of a model that failed to load must not stay cached');
  assert.equal(await run({ model: 'models/tiny-random/', steps: 2 }), 'done');
  assert.deepEqual(browser.errors, []);
});

test('page bad input: a trap restarts the worker, empty fields, sizes past the device, a non-image upload', async () => {
  // A panic inside the worker's wasm: the page says so, replaces the worker,
  // and the next run works without a reload.
  await page.evaluate(() => window.ldwDebug.trapWorker());
  await page.waitForFunction(() => document.body.dataset.state === 'error', null, { timeout: 30_000 });
  assert.match(await page.textContent('#error'), /crashed[\s\S]*deliberate panic/);
  assert.equal(await run({ model: 'models/tiny-random/', steps: 2 }), 'done');
  // An emptied number field is named, not read as 0.
  assert.equal(await run({ steps: '' }), 'error');
  assert.match(await page.textContent('#error'), /^Steps is empty/);
  // The size inputs' limit comes from the model and the device.
  await page.evaluate(() => { document.querySelector('details').open = true; });
  const max = Number(await page.getAttribute('#width', 'max'));
  assert.ok(max >= 16 && max < 2048, `max size ${max}`);
  assert.equal(await run({ steps: 2, width: 2048, height: 2048 }), 'error');
  // (The input's limit assumes guidance; without it a run may go larger.)
  const said = (await page.textContent('#error')).match(/largest square image it can make with this model is (\d+)×\1/);
  assert.ok(said && Number(said[1]) >= max, await page.textContent('#error'));
  assert.equal(await run({ steps: 2, width: '', height: '' }), 'done');
  // A file that is not an image is said to be one.
  await page.selectOption('#mode', 'img2img');
  await page.setInputFiles('#upload', { name: 'notes.txt', mimeType: 'image/png', buffer: Buffer.from('not an image') });
  await page.waitForFunction(() => /notes\.txt is not an image/.test(document.getElementById('error').textContent));
  await page.selectOption('#mode', 'generate');
  assert.deepEqual(browser.errors, []);
});

test('inpaint keeps unmasked pixels and changes masked ones', async () => {
  await page.selectOption('#preset', 'models/emoji-4step/');
  assert.equal(await run({ prompt: 'red heart', seed: 0 }), 'done', await page.textContent('#error'));
  const before = await pixels(64);
  await page.selectOption('#mode', 'inpaint');
  // Paint the left half with the brush, as a person would.
  await page.setViewportSize({ width: 1280, height: 1600 });
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
    document.getElementById('mask').getContext('2d').getImageData(0, 0, 64, 64).data).filter((_, i) => i % 4 === 3));
  assert.equal(await run({ prompt: 'cat face', seed: 7 }), 'done', await page.textContent('#error'));
  const after = await pixels(64);
  let kept = 0, changed = 0, masked = 0;
  for (let i = 0; i < 64 * 64; i++) {
    const same = [0, 1, 2].every((c) => after[i * 4 + c] === before[i * 4 + c]);
    if (mask[i] > 0) { masked++; changed += !same; } else { assert.ok(same, `unmasked pixel ${i} changed`); kept++; }
  }
  assert.ok(masked > 1024 && kept > 1024, `mask covers ${masked} pixels`);
  assert.ok(changed > masked / 4, `only ${changed} of ${masked} masked pixels changed`);
  await page.screenshot({ path: `${ROOT}docs/screenshot-inpaint.png`, fullPage: true });
  await page.selectOption('#mode', 'generate');
});

test('the service worker deletes the weight caches of earlier model versions', async () => {
  // A returning visitor: weights cached under v1 or v2 (files in them are
  // used without asking the server again, so a changed model needs a new cache).
  const srv = await serve('www');
  const b = await launch();
  try {
    const p = await b.context.newPage();
    await p.goto(`${srv.url}learn/example.png`);
    await p.evaluate(async () => {
      for (const old of ['ldw-models-v1', 'ldw-models-v2']) {
        await (await caches.open(old)).put('/models/emoji-4step/unet/config.json', new Response('{}'));
      }
      await (await caches.open('ldw-models-v3')).put('/kept', new Response('kept'));
    });
    await p.goto(srv.url);
    await p.evaluate(() => navigator.serviceWorker.ready);
    const t0 = Date.now();
    while (await p.evaluate(async () => (await caches.has('ldw-models-v1')) || caches.has('ldw-models-v2'))) {
      assert.ok(Date.now() - t0 < 30_000, 'an old weight cache is still there after 30 s');
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(await p.evaluate(() => caches.has('ldw-models-v3')), 'the current cache must stay');
  } finally {
    await b.close();
    srv.close();
  }
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
