// A cross-origin isolated page (COOP/COEP, as tools/serve.py and the service
// worker send them) runs the CPU path on the threaded module (www/pkg-threads,
// a rayon pool of Web Workers) and still makes diffusers' images within one
// level; WebGPU, asked for, stays on the WebGPU module; an error on the
// threaded path, or a panic on one of its pool's threads, leaves the page
// usable.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { openPage, runPage, worstLevel } from './harness.mjs';

let ctx;

before(async () => { ctx = await openPage('www', '', {}, { isolate: true }); });
after(async () => ctx?.close());

test('isolated: "auto" on a software adapter runs the threaded CPU module, diffusers\' red heart', async () => {
  const { page } = ctx;
  assert.equal(await page.evaluate(() => crossOriginIsolated), true);
  await page.selectOption('#preset', 'models/emoji-4step/');
  assert.equal(await runPage(page, { prompt: 'red heart', negative: '', seed: 0, eta: 0 }), 'done',
    await page.textContent('#error'));
  // The notice is the WebGPU module's, as on a page without threads.
  assert.match(await page.textContent('#backend-info'),
    /^Running on CPU \(WebAssembly, [2-9]\d* threads\)\. The only WebGPU adapter here is a software renderer/);
  const worst = await worstLevel(page, 'emoji-4step', 'red_heart', 64);
  assert.ok(worst <= 1, `threads: worst pixel differs by ${worst} levels`);
});

test('isolated: the CPU choice, guided, with a negative prompt, matches diffusers; WebGPU stays WebGPU', async () => {
  const { page } = ctx;
  await page.click('details summary'); // "More settings"
  await page.selectOption('#backend', 'cpu');
  assert.equal(await runPage(page, { model: 'models/tiny-random/', prompt: 'a red heart', negative: 'blurry',
    seed: 42, steps: 4, guidance: 3, eta: 0 }), 'done', await page.textContent('#error'));
  assert.match(await page.textContent('#backend-info'), /^Running on CPU \(WebAssembly, \d+ threads\)/);
  let worst = await worstLevel(page, 'tiny', 'guided_eta0', 16);
  assert.ok(worst <= 1, `threads: worst pixel differs by ${worst} levels`);
  await page.selectOption('#backend', 'webgpu');
  assert.equal(await runPage(page, {}), 'done', await page.textContent('#error'));
  assert.match(await page.textContent('#backend-info'), /^Running on WebGPU/);
  worst = await worstLevel(page, 'tiny', 'guided_eta0', 16);
  assert.ok(worst <= 1, `WebGPU: worst pixel differs by ${worst} levels`);
  await page.selectOption('#backend', 'cpu');
});

test('isolated: a bad model URL on the threaded path is an error; the next run works', async () => {
  const { page } = ctx;
  assert.equal(await runPage(page, { model: 'models/no-such-model/', steps: 2 }), 'error');
  assert.match(await page.textContent('#error'), /no-such-model\/unet\/config\.json: HTTP 404/);
  assert.equal(await runPage(page, { model: 'models/tiny-random/', steps: 2 }), 'done',
    await page.textContent('#error'));
  assert.match(await page.textContent('#backend-info'), /threads\)/);
  assert.deepEqual(ctx.browser.errors, []);
});

test('isolated: initThreadPool refuses 0 threads and a second start; a pool of 3 on this machine generates', async () => {
  // The threaded module's API as an embedding page's worker calls it.
  const { page } = ctx;
  const got = await page.evaluate(async () => {
    const src = `onmessage = async ({ data: origin }) => {
      const out = [];
      try {
        const m = await import(origin + '/pkg-threads/latent_diffusion_web.js');
        await m.default();
        for (const n of [0, 3, 2]) {
          out.push(await m.initThreadPool(n).then(() => 'started', (e) => String(e?.message ?? e)));
        }
        const g = await m.Generator.fromUrl(origin + '/models/tiny-random/', 'cpu');
        g.start({ prompt: 'a red heart', seed: 1, steps: 2, guidanceScale: 1 });
        while (g.stepsDone() < g.totalSteps()) g.step();
        out.push(g.backend, (await g.result()).length);
      } catch (e) {
        out.push('failed: ' + String(e?.stack ?? e));
      }
      postMessage(out);
    };`;
    const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })), { type: 'module' });
    const out = await new Promise((ok) => { w.onmessage = ({ data }) => ok(data); w.postMessage(location.origin); });
    w.terminate();
    return out;
  });
  assert.match(got[0], /initThreadPool: 0 threads/);
  assert.equal(got[1], 'started');
  assert.match(got[2], /already been started/);
  assert.equal(got[3], 'CPU (WebAssembly, 3 threads)');
  assert.equal(got[4], 16 * 16 * 4, String(got));
});

test('isolated: a panic on a thread of the pool is reported, the worker replaced, and the next run works', async () => {
  // Such a panic traps one of the pool's Web Workers while the model's worker
  // (the pool's thread 0) waits for its job, so no error reaches the worker's
  // own handlers: the page hears of it through panic-watch.js (else the run
  // hangs until Cancel; checked by posting no panic: a 30 s timeout here).
  const { page } = ctx;
  await page.evaluate(() => window.ldwDebug.trapPool());
  await page.waitForFunction(() => document.body.dataset.state === 'error', null, { timeout: 30_000 });
  assert.match(await page.textContent('#error'), /crashed \([\s\S]*deliberate panic on a pool thread[\s\S]*restarted/);
  assert.equal(await runPage(page, { model: 'models/tiny-random/', steps: 2 }), 'done',
    await page.textContent('#error'));
  assert.match(await page.textContent('#backend-info'), /threads\)/);
});

test('isolated: in the learning view too, a pool thread\'s panic fails the run and the next run works', async () => {
  const learn = await ctx.browser.context.newPage();
  try {
    await learn.goto(`${ctx.server.url}learn.html`);
    await learn.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
    const trace = async () => {
      await learn.click('#run');
      await learn.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.trace), null, { timeout: 120_000 });
      return learn.evaluate(() => document.body.dataset.trace);
    };
    // A traced run loads the threaded module in the view's worker.
    assert.equal(await trace(), 'done', await learn.textContent('#error'));
    await learn.evaluate(() => window.ldwDebug.trapPool());
    await learn.waitForFunction(() => /crashed/.test(document.getElementById('error').textContent), null, { timeout: 30_000 });
    assert.match(await learn.textContent('#error'), /crashed \([\s\S]*deliberate panic on a pool thread[\s\S]*restarted/);
    assert.equal(await trace(), 'done', await learn.textContent('#error'));
    assert.equal(await learn.textContent('#error'), '');
  } finally {
    await learn.close();
  }
});
