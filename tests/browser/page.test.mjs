// The page as a visitor meets it (issue 12), in headless chromium: image modes
// ask for an image first; malformed numbers are shown, not replaced; the result
// is in view at desktop and phone sizes; the model's prompts are suggested and
// an emoji is read as its name (the same image); the history survives a
// reload and restores settings; downloads are named from prompt and seed; a
// share link makes the same image, byte for byte, in a fresh browser profile;
// Escape cancels; pixels are shown sharp at whole multiples, or smooth.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, ROOT } from './harness.mjs';

let ctx, page;

before(async () => {
  ctx = await openPage('www', '');
  page = ctx.page;
  // The default model's inspection fills the suggestions.
  await page.waitForFunction(() => document.getElementById('suggestions').options.length > 0, null,
    { timeout: 60_000 });
});

after(async () => ctx?.close());

async function run(settings = {}) {
  for (const [id, v] of Object.entries(settings)) await page.fill(`#${id}`, String(v));
  await page.click('#generate');
  await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(document.body.dataset.state),
    null, { timeout: 300_000 });
  return page.evaluate(() => document.body.dataset.state);
}
const pixels = (p = page) => p.evaluate(() => {
  const c = document.getElementById('out');
  return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
});
const text = (id) => page.textContent(`#${id}`);

test('on a fresh page, image modes ask for an image and bad numbers are shown, not replaced', async () => {
  await page.selectOption('#mode', 'img2img');
  assert.match(await text('mode-info'), /Upload an image \(or generate one first\)/);
  assert.equal(await run(), 'error');
  assert.match(await text('error'), /no image to start from: upload one/);
  await page.selectOption('#mode', 'generate');

  for (const [id, value, want] of [
    ['seed', '1.5', /^Seed must be a whole number/],
    ['seed', '-1', /^Seed must be between 0 and 9007199254740991/],
    ['guidance', '', /^Guidance is empty/],
    ['steps', '0', /^Steps must be between 1 and 1000/],
  ]) {
    const before = await page.inputValue(`#${id}`);
    assert.equal(await run({ [id]: value }), 'error', `${id} = ${value}`);
    assert.match(await text('error'), want);
    assert.equal(await page.getAttribute(`#${id}`, 'aria-invalid'), 'true');
    assert.equal(await page.inputValue(`#${id}`), value, 'the field keeps what was typed');
    await page.fill(`#${id}`, before);
    assert.equal(await page.getAttribute(`#${id}`, 'aria-invalid'), 'false');
  }
  // Sizes are multiples of the model's pixels per latent (4), and a size the
  // model was not trained at is said to be one.
  await page.evaluate(() => { document.querySelector('details').open = true; });
  assert.equal(await page.getAttribute('#width', 'placeholder'), '64');
  assert.equal(await run({ width: 62 }), 'error');
  assert.match(await text('error'), /^Width must be a multiple of 4/);
  await page.fill('#width', '128');
  assert.match(await text('size-info'), /trained at 64×64; 128×64 is outside that/);
  await page.fill('#width', '');
  assert.equal(await text('size-info'), '');
  const sizes = await page.$$eval('#sizes option', (o) => o.map((x) => x.value));
  assert.ok(sizes.includes('64') && sizes.every((s) => Number(s) % 4 === 0), sizes.join());
  // Guidance is explained for a model that takes it as an input.
  assert.match(await text('guidance-info'), /takes the guidance scale as an input .*Lower gives more variety between seeds/);
  assert.match(await text('model-info'), /the guidance scale is an input of this model \(no second pass\)/);
});

test('the result is in view after generating, at 1440×900 and at 390×844', async () => {
  for (const [width, height] of [[1440, 900], [390, 844]]) {
    await page.setViewportSize({ width, height });
    await page.evaluate(() => scrollTo(0, 0));
    assert.equal(await run({ prompt: 'rocket', seed: 1 }), 'done', await text('error'));
    // (The phone scrolls smoothly to it.)
    await page.waitForFunction(() => {
      const r = document.getElementById('stage').getBoundingClientRect();
      return r.top >= -1 && r.bottom <= innerHeight + 1 && r.height > 100;
    }, null, { timeout: 10_000 }).catch(() => {});
    const r = await page.evaluate(() => {
      const s = document.getElementById('stage').getBoundingClientRect();
      const f = document.getElementById('controls').getBoundingClientRect();
      return { top: s.top, bottom: s.bottom, left: s.left, formRight: f.right, h: innerHeight, w: s.width };
    });
    assert.ok(r.top >= -1 && r.bottom <= r.h + 1, `${width}×${height}: image at ${r.top}–${r.bottom} of ${r.h}`);
    if (width === 1440) {
      assert.ok(r.left >= r.formRight, 'on a wide screen the image sits beside the settings');
      await page.screenshot({ path: `${ROOT}docs/screenshot-desktop.png` });
    }
    // Sharp pixels: a whole multiple of the image's 64 px.
    assert.equal(r.w % 64, 0, `${width}: shown ${r.w}px wide`);
  }
  await page.screenshot({ path: `${ROOT}docs/screenshot-phone.png`, fullPage: true });
  // Nothing veils the image: the (empty) mask layer over it is transparent.
  assert.equal(await page.$eval('#mask', (c) => getComputedStyle(c).backgroundColor), 'rgba(0, 0, 0, 0)');
  await page.selectOption('#display', 'smooth');
  assert.equal(await page.$eval('#out', (c) => getComputedStyle(c).imageRendering), 'auto');
  await page.selectOption('#display', 'pixelated');
  assert.equal(await page.$eval('#out', (c) => getComputedStyle(c).imageRendering), 'pixelated');
  await page.setViewportSize({ width: 1280, height: 1000 });
});

test('prompts: suggestions and examples, an emoji read as its name, words the model never saw, long prompts', async () => {
  const names = await page.$$eval('#suggestions option', (o) => o.map((x) => x.value));
  assert.ok(names.length > 1000 && names.includes('cat face'), `${names.length} suggestions`);
  const chips = await page.$$eval('#examples button', (b) => b.map((x) => x.textContent));
  assert.ok(chips.includes('red heart') && chips.includes('ghost'), chips.join());
  await page.click('#examples button:text-is("ghost")');
  assert.equal(await page.inputValue('#prompt'), 'ghost');

  await page.fill('#prompt', '🐱');
  await page.waitForFunction(() => /Read as "cat face"/.test(document.getElementById('prompt-info').textContent));
  assert.equal(await run({ seed: 3 }), 'done', await text('error'));
  const byEmoji = await pixels();
  assert.equal(await run({ prompt: 'cat face', seed: 3 }), 'done');
  assert.deepEqual(await pixels(), byEmoji, '🐱 and "cat face" make the same image');
  assert.equal(await page.getAttribute('#download', 'download'), 'cat-face-seed3.png');

  await page.fill('#prompt', 'Katze und Hund');
  await page.waitForFunction(() => /No word of the prompt is one this model was trained on/
    .test(document.getElementById('prompt-info').textContent));
  // "photo" was never trained on but has a neighbour in meaning it was (its
  // embedding row is that word's); a made-up word has none.
  await page.fill('#prompt', 'red heart and a photo of a blorptastic lake');
  await page.waitForFunction(() => /read as the nearest it was: "photo" as "[a-z]+"[,.]/
    .test(document.getElementById('prompt-info').textContent));
  assert.match(await text('prompt-info'), /Words this model never saw: blorptastic\.$/);
  await page.fill('#prompt', 'red heart '.repeat(50));
  await page.waitForFunction(() => /100 tokens long and the model reads only the first 75/
    .test(document.getElementById('prompt-info').textContent));
  await page.fill('#prompt', 'red heart');
  await page.waitForFunction(() => document.getElementById('prompt-info').textContent === '');
});

test('the history survives a reload, restores settings on click, and can be cleared', async () => {
  const count = () => page.$$eval('#history img', (i) => i.length);
  await page.waitForFunction(() => document.querySelectorAll('#history img').length >= 4);
  const n = await count();
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  await page.waitForFunction((k) => document.querySelectorAll('#history img').length === k, n);
  // The newest first: "cat face", seed 3.
  const want = await page.evaluate(async () => {
    const img = document.querySelector('#history img');
    await img.decode();
    const c = new OffscreenCanvas(img.naturalWidth, img.naturalHeight);
    c.getContext('2d').drawImage(img, 0, 0);
    return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
  });
  await page.fill('#prompt', 'something else');
  await page.fill('#seed', '99');
  await page.click('#history button');
  await page.waitForFunction(() => /Restored/.test(document.getElementById('status').textContent));
  assert.equal(await page.inputValue('#prompt'), 'cat face');
  assert.equal(await page.inputValue('#seed'), '3');
  assert.deepEqual(await pixels(), want);
  assert.equal(await page.getAttribute('#download', 'download'), 'cat-face-seed3.png');
  await page.click('#clear-history');
  await page.waitForFunction(() => document.querySelectorAll('#history img').length === 0);
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  assert.equal(await count(), 0);
  assert.equal(await page.isVisible('#history-empty'), true);
});

test('a share link makes the same image, byte for byte, in a fresh browser profile', async () => {
  await page.waitForFunction(() => document.getElementById('suggestions').options.length > 0, null, { timeout: 60_000 });
  assert.equal(await run({ prompt: 'hot beverage', negative: 'blurry', seed: 11, steps: 3, eta: 0.5 }), 'done',
    await text('error'));
  const want = await pixels();
  await page.click('#share');
  const url = await page.inputValue('#share-url');
  assert.match(url, /#model=.*prompt=hot\+beverage/);
  const other = await launch();
  try {
    const p = await other.context.newPage();
    await p.goto(url);
    await p.waitForFunction(() => document.body.dataset.state === 'done' || document.body.dataset.state === 'error',
      null, { timeout: 120_000 });
    assert.equal(await p.textContent('#error'), '');
    for (const [id, v] of [['prompt', 'hot beverage'], ['negative', 'blurry'], ['seed', '11'], ['steps', '3'], ['eta', '0.5']]) {
      assert.equal(await p.inputValue(`#${id}`), v, id);
    }
    assert.deepEqual(await pixels(p), want);
    assert.deepEqual(other.errors, []);
  } finally {
    await other.close();
  }
  await page.fill('#negative', '');
  await page.fill('#eta', '0');
  await page.fill('#steps', '4');
});

test('Enter in the prompt generates, Escape cancels', async () => {
  await page.fill('#steps', '500');
  await page.focus('#prompt');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => /step [2-9]/.test(document.getElementById('status').textContent), null,
    { timeout: 120_000 });
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => document.body.dataset.state === 'cancelled', null, { timeout: 60_000 });
  await page.fill('#steps', '4');
  assert.deepEqual(ctx.browser.errors, []);
});
