// The CLIP tokenizer compiled to wasm gives transformers' ids in a real browser.
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

test('wasm tokenizer matches transformers CLIPTokenizer', async () => {
  const dir = `${ROOT}tests/fixtures/clip_tokenizer/`;
  const [vocab, merges, config, expected] = await Promise.all(
    ['vocab.json', 'merges.txt', 'tokenizer_config.json', 'expected.json'].map((f) => readFile(dir + f, 'utf8')));
  const cases = JSON.parse(expected).cases;
  const got = await page.evaluate(async ([v, m, c, prompts]) => {
    const mod = await import('./pkg/latent_diffusion_web.js');
    const tok = new mod.Tokenizer(v, m, c);
    return prompts.map((p) => Array.from(tok.encode(p)));
  }, [vocab, merges, config, cases.map((c) => c.prompt)]);
  cases.forEach((c, i) => assert.deepEqual(got[i], c.ids, `prompt ${JSON.stringify(c.prompt)}`));
  assert.deepEqual(browser.errors, []);
});

test('a broken vocab.json is a JS error, not a crash', async () => {
  const msg = await page.evaluate(async () => {
    const mod = await import('./pkg/latent_diffusion_web.js');
    try { new mod.Tokenizer('{oops', '', null); return 'no error'; } catch (e) { return e.message; }
  });
  assert.match(msg, /vocab\.json/);
  // The module still works afterwards.
  const ok = await page.evaluate(async () => (await import('./pkg/latent_diffusion_web.js')).version());
  assert.match(ok, /^\d+\.\d+\.\d+$/);
});
