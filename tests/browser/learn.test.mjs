// The learning view (www/learn.html) in headless chromium: the forward
// process equals the crate's native add_noise (tests/fixtures/forward_process.json,
// checked against native code by tests/pipeline_parity.rs) within one 8-bit
// level; a traced generation has one strip entry per step and ends in the
// image the generator makes for the same settings; comparisons run.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { openPage, ROOT } from './harness.mjs';

let ctx, page;

before(async () => {
  ctx = await openPage('www', 'learn.html');
  page = ctx.page;
});

after(async () => ctx?.close());

const canvasPixels = (selector) => page.$eval(selector, (c) =>
  Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data));
// After a resize, text is repainted a few frames later: a screenshot waits for it.
const settle = () => page.evaluate(() => new Promise((r) => setTimeout(() => requestAnimationFrame(() => requestAnimationFrame(r)), 300)));
const worst = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

test('the forward process on the example image equals the native add_noise within one level', async () => {
  const fixture = JSON.parse(await readFile(`${ROOT}tests/fixtures/forward_process.json`, 'utf8'));
  for (const c of fixture.cases) {
    await page.selectOption('#schedule', c.schedule);
    await page.fill('#fseed', String(c.seed));
    await page.$eval('#t', (el, t) => { el.value = String(t); el.dispatchEvent(new Event('input')); }, c.t);
    const got = await canvasPixels('#xt');
    const want = [...Buffer.from(c.x_t, 'base64')];
    assert.equal(got.length, want.length);
    assert.ok(worst(got, want) <= 1, `${c.schedule} t=${c.t}: worst ${worst(got, want)} levels`);
    assert.match(await page.textContent('#formula'), new RegExp(`^t = ${c.t}: ᾱ_t = 0\\.\\d{4}`));
  }
  // The latent side: the example's latents, noised at t and decoded.
  await page.waitForFunction(() => document.body.dataset.forward === '900', null, { timeout: 60_000 });
  assert.equal(await page.$$eval('#channels canvas', (c) => c.length), 4);
  assert.deepEqual(ctx.browser.errors, []);
});

test('a traced run has one strip entry per step and ends in the generator\'s image', async () => {
  for (const [id, v] of [['prompt', 'rocket'], ['seed', '1'], ['steps', '4'], ['eta', '0']]) await page.fill(`#${id}`, v);
  await page.click('#run');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.trace), null, { timeout: 120_000 });
  assert.equal(await page.textContent('#error'), '');
  const labels = await page.$$eval('#strip button.step span', (s) => s.map((x) => x.textContent));
  assert.equal(labels.length, 4, labels.join());
  const ts = labels.map((l) => Number(l.match(/t = (\d+)/)[1]));
  assert.ok(ts.every((t, i) => i === 0 || t < ts[i - 1]), ts.join());
  assert.match(await page.textContent('#update'), /x_\{t−1\} = 1\.0000·x̂₀ \+ 0\.0000·ε̂|x_\{t−1\} = \d\.\d{4}·x̂₀/);
  assert.equal(await page.$$eval('#noise-channels canvas', (c) => c.length), 4);
  const traced = await canvasPixels('#result');
  // The same settings through the plain generate path (the comparison grid's "4 steps").
  await page.fill('#cprompt', 'rocket');
  await page.fill('#cseed', '1');
  await page.click('[data-compare="steps"]');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.compare), null, { timeout: 300_000 });
  assert.equal(await page.textContent('#error'), '');
  const captions = await page.$$eval('#grid figcaption', (f) => f.map((x) => x.textContent));
  assert.deepEqual(captions, ['1 step', '2 steps', '4 steps', '8 steps', '50 steps']);
  const plain = await canvasPixels('#grid figure:nth-child(3) canvas');
  assert.ok(worst(traced, plain) <= 1, `traced vs generated: worst ${worst(traced, plain)} levels`);
  // Scrubbing selects a step and writes out its update.
  await page.$eval('#scrub', (el) => { el.value = '0'; el.dispatchEvent(new Event('input')); });
  assert.match(await page.textContent('#update'), new RegExp(`^step 1, t = ${ts[0]}:`));
  await page.setViewportSize({ width: 1280, height: 900 });
  await settle();
  await page.screenshot({ path: `${ROOT}docs/screenshot-learn.png`, fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
  assert.ok(overflow <= 0, `learning view is ${overflow}px wider than a phone`);
  await settle();
  await page.screenshot({ path: `${ROOT}docs/screenshot-learn-phone.png`, fullPage: true });
  assert.deepEqual(ctx.browser.errors, []);
});

test('seeds side by side at guidance 1 and 3: each seed its own image', async () => {
  await page.fill('#cprompt', 'cat face');
  await page.click('[data-compare="seeds"]');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.compare), null, { timeout: 300_000 });
  assert.equal(await page.textContent('#error'), '');
  const captions = await page.$$eval('#grid figcaption', (f) => f.map((x) => x.textContent));
  assert.deepEqual(captions, [1, 3].flatMap((g) => [0, 1, 2, 3].map((s) => `guidance ${g}, seed ${s}`)));
  const images = [];
  for (let i = 1; i <= 8; i++) images.push(await canvasPixels(`#grid figure:nth-child(${i}) canvas`));
  // Mean level difference between two images (RGB, 0-255).
  const mean = (a, b) => { let d = 0, n = 0; for (let i = 0; i < a.length; i++) if (i % 4 !== 3) { d += Math.abs(a[i] - b[i]); n++; } return d / n; };
  for (const [a, b] of [[0, 1], [1, 2], [2, 3], [4, 5], [5, 6], [6, 7], [0, 4]]) {
    assert.ok(mean(images[a], images[b]) > 1, `${captions[a]} and ${captions[b]} are the same image`);
  }
});

test('inpainting laid open: the mask in latent space, the known region kept', async () => {
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.check('#inpaint');
  await page.click('#run');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.trace), null, { timeout: 120_000 });
  assert.equal(await page.textContent('#error'), '');
  assert.equal(await page.isVisible('#inpaint-note'), true);
  assert.equal(await page.isVisible('#mask-figure'), true);
  // The latent mask: the left half white (redone), the right half black.
  const mask = await canvasPixels('#latent-mask');
  const w = await page.$eval('#latent-mask', (c) => c.width);
  assert.equal(w, 16);
  for (let y = 0; y < 16; y++) {
    assert.equal(mask[(y * 16 + 2) * 4], 255, 'left: redone');
    assert.equal(mask[(y * 16 + 13) * 4], 0, 'right: kept');
  }
  // The result keeps the example's right half exactly.
  const result = await canvasPixels('#result'), example = await canvasPixels('#x0');
  let kept = 0;
  for (let y = 0; y < 64; y++) {
    for (let x = 40; x < 64; x++) kept += [0, 1, 2].every((c) => result[(y * 64 + x) * 4 + c] === example[(y * 64 + x) * 4 + c]);
  }
  assert.equal(kept, 64 * 24, 'unmasked pixels changed');
  await page.uncheck('#inpaint');
});

test('the learning API refuses bad input with clear errors', async () => {
  const errors = await page.evaluate(async () => {
    const m = await import('./pkg/latent_diffusion_web.js');
    await m.default();
    const out = [];
    const tryIt = async (f) => { try { await f(); out.push('no error'); } catch (e) { out.push(e.message); } };
    const cfg = '{"beta_schedule":"linear"}';
    await tryIt(() => m.addNoise(cfg, new Float32Array(4), 5000, 0n));
    await tryIt(() => m.addNoise('{"beta_schedule":"nope"}', new Float32Array(4), 1, 0n));
    await tryIt(() => m.addNoiseRgba(cfg, new Uint8Array(10), 4, 4, 1, 0n));
    const g = await m.Generator.fromUrl('models/emoji-4step/', 'cpu');
    await tryIt(() => g.stepDetails());
    g.start({ prompt: 'red heart', steps: 2, guidanceScale: 1 });
    g.step();
    await tryIt(() => g.stepDetails());
    await tryIt(() => g.decodeLatents(new Float32Array(3 * 16 * 16), 3, 16, 16));
    await tryIt(() => g.decodeLatents(new Float32Array(5), 4, 16, 16));
    await tryIt(() => g.decodeLatents(new Float32Array(4), 4, 1e6, 1e6));
    await tryIt(() => g.encodeImage(new Uint8Array(64 * 64 * 4), 63, 64));
    g.free();
    return out;
  });
  const want = [/timestep 5000 is outside/, /nope/, /image/, /no run: call start first/, /no step traced: call trace\(true\)/,
    /latents have 3 channels; this model's have 4/, /5 latent values given for a 4×16×16 latent/, /width = 4000000 must be a multiple of 4/, /width = 63 must be a multiple of 4/];
  assert.equal(errors.length, want.length, errors.join('\n'));
  errors.forEach((e, i) => assert.match(e, want[i]));
  assert.deepEqual(ctx.browser.errors, []);
});

test('after one visit the learning view works with the server gone', async () => {
  await page.evaluate(() => navigator.serviceWorker.ready);
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
  assert.ok(await page.evaluate(() => !!navigator.serviceWorker.controller), 'controlled by the service worker');
  ctx.server.close();
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
  await page.fill('#steps', '2');
  await page.click('#run');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.trace), null, { timeout: 120_000 });
  assert.equal(await page.textContent('#error'), '');
  assert.equal(await page.$$eval('#strip button.step', (s) => s.length), 2);
});
