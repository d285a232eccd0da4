// The shipped model on our wasm CPU path vs onnxruntime-web (issue 11), in
// one headless Debian chromium, interleaved: each round runs one image on
// every engine in turn (seed = round; the prompt and the engines' order
// rotate), after a warm-up round. Same weights (tools/export_onnx.py writes
// them as ONNX), same prompt, same seeded initial latents (our
// gaussianNoise), same DDIM steps; the images are compared and the worst
// 8-bit difference printed.
//
// Per part: text encoder (ours: start(), which also tokenizes and draws the
// noise; ort: the same tokenizer and noise, then the session run), one UNet
// step (ours: step(), UNet + DDIM; ort: session run + the DDIM update in
// JS), decoder (ours: result(), decode + RGBA bytes; ort: session run + RGBA
// bytes), whole image. Then, once per engine: its loading (our worker's
// module, pool and weights; onnxruntime-web's sessions, from the moment our
// helper module is on the page) and its first image after that, which the
// medians leave out.
//
//   ./build.sh wasm && python tools/export_onnx.py      (once)
//   npm ci --prefix tools/ort                            (once)
//   node tools/bench_ort.mjs [rounds] [--webgpu] [--baseline DIR [--baseline-threads N]]
//
// Engines: ours-cpu, ort-wasm-1 (1 thread), ort-wasm-2 (2 threads; the page
// is served cross-origin isolated so onnxruntime-web may use them); with
// --webgpu also ours-webgpu and ort-webgpu on the browser's adapter; with
// --baseline DIR also ours-cpu-base-N, our CPU path on N threads (1 unless
// --baseline-threads says; N > 1 needs a copy of www/pkg-threads) from
// another build's folder (a copy kept from before a change), for an A/B in
// the same rounds.
import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { resolve } from 'node:path';
import { ROOT, launch, serve } from '../tests/browser/harness.mjs';

const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
// The rounds: the one number that is not an option's value.
const rounds = Number(args.find((a, i) => /^\d+$/.test(a) && !args[i - 1]?.startsWith('--baseline')) ?? 7);
const webgpu = args.includes('--webgpu');
const baseline = option('--baseline', null);
const baselineThreads = Number(option('--baseline-threads', 1));
const MODEL = 'emoji-4step';
const ONNX = `${ROOT}target/onnx/${MODEL}/`;
const ORT = `${ROOT}tools/ort/node_modules/onnxruntime-web/dist/`;
for (const [path, how] of [[`${ROOT}www/pkg/latent_diffusion_web.js`, './build.sh wasm'],
  [`${ONNX}unet.onnx`, 'python tools/export_onnx.py'], [`${ORT}ort.all.min.mjs`, 'npm ci --prefix tools/ort']]) {
  if (!existsSync(path)) throw new Error(`${path} is missing: run ${how}`);
}
// A different prompt each round: our pipeline reuses the last prompt's
// embedding, so a repeated prompt would not run our text encoder at all.
const PROMPTS = ['red heart', 'smiling cat face', 'pizza', 'blue car'];
const STEPS = 4;

if (baseline && !existsSync(`${baseline}/latent_diffusion_web.js`)) {
  throw new Error(`--baseline ${baseline} has no latent_diffusion_web.js (a copy of www/pkg is expected)`);
}
const mounts = { '/onnx/': ONNX, '/ort/': ORT, '/bench/': `${ROOT}tools/`, ...(baseline ? { '/pkg-base/': `${resolve(baseline)}/` } : {}) };
const server = await serve('www', mounts, { isolate: true });
const browser = await launch({ webgpu });

/** Opens a page for one engine; `setup` defines window.run(seed). */
async function engine(name, kind, threads, pkg = '/pkg/') {
  const page = await browser.context.newPage();
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('404')) console.error(`${name}: ${m.text()}`); });
  await page.goto(`${server.url}bench-blank`);
  const info = await page.evaluate(async ({ kind, threads, steps, model, pkg }) => {
    const m = await import(`${pkg}latent_diffusion_web.js`);
    await m.default();
    // Loading: from here (our module on the page is only the tokenizer and
    // noise for onnxruntime-web) until the engine can make an image.
    const loadStart = performance.now();
    const base = `/models/${model}/`;
    if (kind.startsWith('ours')) {
      const w = new Worker('/bench/bench_worker.mjs', { type: 'module' });
      const ask = (msg) => new Promise((ok, fail) => {
        w.onmessage = ({ data }) => (data.error ? fail(new Error(data.error)) : ok(data));
        w.postMessage(msg);
      });
      const { backend } = await ask({
        pkg: `${location.origin}${pkg}latent_diffusion_web.js`, backend: kind === 'ours-webgpu' ? 'webgpu' : 'cpu',
        threads, model, steps,
      });
      window.run = ask;
      return { backend, isolated: crossOriginIsolated, load: performance.now() - loadStart };
    }
    // onnxruntime-web; our module only supplies the tokenizer, noise and
    // DDIM schedule (computed before the clock starts).
    const ort = await import('/ort/ort.all.min.mjs');
    ort.env.wasm.wasmPaths = '/ort/';
    ort.env.wasm.numThreads = threads;
    const ep = kind === 'ort-webgpu' ? ['webgpu'] : ['wasm'];
    const sessions = {};
    for (const n of ['text_encoder', 'unet', 'vae_decoder']) {
      sessions[n] = await ort.InferenceSession.create(`/onnx/${n}.onnx`, { executionProviders: ep });
    }
    const text = (p) => fetch(base + p).then((r) => r.text());
    const tok = new m.Tokenizer(await text('tokenizer/vocab.json'), await text('tokenizer/merges.txt'),
      await text('tokenizer/tokenizer_config.json'));
    const sched = await text('scheduler/scheduler_config.json');
    const { num_train_timesteps: T } = JSON.parse(sched);
    const acp = m.alphasCumprod(sched);
    const ts = Array.from(m.ddimTimesteps(sched, steps));
    const exp = await fetch('/onnx/export.json').then((r) => r.json());
    const [c, s] = [exp.latent_channels, exp.latent_side];
    const n = c * s * s;
    window.run = async ({ seed, prompt }) => {
      // Tokenizing and drawing the noise are timed, as our start() does both.
      const t0 = performance.now();
      const ids = new ort.Tensor('int64', BigInt64Array.from(tok.encode(prompt), BigInt), [1, 77]);
      let x = m.gaussianNoise(BigInt(seed), n);
      const ctx = (await sessions.text_encoder.run({ input_ids: ids })).last_hidden_state;
      const t1 = performance.now();
      const step = [];
      for (const t of ts) {
        const st = performance.now();
        const out = await sessions.unet.run({
          sample: new ort.Tensor('float32', x, [1, c, s, s]),
          timestep: new ort.Tensor('int64', BigInt64Array.of(BigInt(t)), [1]),
          encoder_hidden_states: ctx,
        });
        const v = out.out_sample.data;
        // DDIM, eta 0, v-prediction, set_alpha_to_one (the model's config).
        const a = acp[t];
        const prev = t - T / steps;
        const ap = prev >= 0 ? acp[prev] : 1;
        const [sa, sb, spa, spb] = [Math.sqrt(a), Math.sqrt(1 - a), Math.sqrt(ap), Math.sqrt(1 - ap)];
        const next = new Float32Array(n);
        for (let i = 0; i < n; i++) {
          const x0 = sa * x[i] - sb * v[i];
          const eps = sa * v[i] + sb * x[i];
          next[i] = spa * x0 + spb * eps;
        }
        x = next;
        step.push(performance.now() - st);
      }
      const t2 = performance.now();
      const img = (await sessions.vae_decoder.run({ latents: new ort.Tensor('float32', x, [1, c, s, s]) })).image;
      const [, , h, w] = img.dims;
      const px = h * w;
      const d = img.data;
      const rgba = new Uint8Array(px * 4);
      for (let i = 0; i < px; i++) {
        for (let ch = 0; ch < 3; ch++) {
          rgba[i * 4 + ch] = Math.round(Math.min(1, Math.max(0, d[ch * px + i] / 2 + 0.5)) * 255);
        }
        rgba[i * 4 + 3] = 255;
      }
      const t3 = performance.now();
      return { text: t1 - t0, step, decode: t3 - t2, total: t3 - t0, rgba: Array.from(rgba) };
    };
    return { backend: `onnxruntime-web ${ort.env.versions?.web ?? ''} ${ep[0]}`, isolated: crossOriginIsolated,
      load: performance.now() - loadStart };
  }, { kind, threads, steps: STEPS, model: MODEL, pkg });
  return { name, page, ...info };
}

const engines = [await engine('ours-cpu', 'ours-cpu', 1), await engine('ort-wasm-1', 'ort-wasm', 1),
  await engine('ort-wasm-2', 'ort-wasm', 2)];
if (existsSync(`${ROOT}www/pkg-threads/latent_diffusion_web.js`)) {
  engines.push(await engine('ours-cpu-2', 'ours-cpu', 2, '/pkg-threads/'));
}
const baseName = `ours-cpu-base-${baselineThreads}`;
if (baseline) engines.push(await engine(baseName, 'ours-cpu', baselineThreads, '/pkg-base/'));
if (webgpu) engines.push(await engine('ours-webgpu', 'ours-webgpu'), await engine('ort-webgpu', 'ort-webgpu', 1));
for (const e of engines) console.log(`${e.name}: ${e.backend}, crossOriginIsolated ${e.isolated}`);

const times = Object.fromEntries(engines.map((e) => [e.name, { text: [], step: [], decode: [], total: [] }]));
const first = {}; // each engine's first image (round 0), after its load
let worst = 0;
for (let r = 0; r <= rounds; r++) {
  let reference;
  // The order rotates each round, with a pause before each engine: a
  // finished engine's threads (onnxruntime-web's pool spins a while) must not
  // eat into the next one's time on a small machine.
  for (let k = 0; k < engines.length; k++) {
    const e = engines[(k + r) % engines.length];
    await new Promise((ok) => setTimeout(ok, 300));
    const res = await e.page.evaluate((a) => window.run(a), { seed: r, prompt: PROMPTS[r % PROMPTS.length] });
    reference ??= res.rgba;
    for (let i = 0; i < reference.length; i++) worst = Math.max(worst, Math.abs(reference[i] - res.rgba[i]));
    if (r === 0) { first[e.name] = res.total; continue; } // warm-up
    const t = times[e.name];
    t.text.push(res.text);
    t.step.push(...res.step);
    t.decode.push(res.decode);
    t.total.push(res.total);
  }
}
await browser.close();
server.close();

const median = (v) => { const s = [...v].sort((a, b) => a - b); const k = s.length >> 1; return s.length % 2 ? s[k] : (s[k - 1] + s[k]) / 2; };
const cpu = cpus();
console.log(`\n${MODEL}, prompts ${PROMPTS.join(" / ")}, ${STEPS} steps, guidance 1; ${rounds} interleaved rounds after a warm-up, medians;`);
console.log(`${cpu.length} cores, ${cpu[0].model}; ${new Date().toISOString().slice(0, 10)}; worst image difference between engines: ${worst} levels\n`);
const parts = ['total', 'text', 'step', 'decode'];
console.log(`| engine | ${parts.map((p) => `${p} ms`).join(' | ')} |`);
console.log(`|---|${parts.map(() => '---:').join('|')}|`);
for (const e of engines) {
  console.log(`| ${e.name} | ${parts.map((p) => median(times[e.name][p]).toFixed(1)).join(' | ')} |`);
}
console.log('\nours ÷ peer (≤ 1.00 is the goal):\n');
console.log(`| ours ÷ | ${parts.join(' | ')} |`);
console.log(`|---|${parts.map(() => '---:').join('|')}|`);
for (const [ours, peer] of [['ours-cpu', 'ort-wasm-1'], ['ours-cpu', 'ort-wasm-2'], ['ours-cpu-2', 'ort-wasm-2'],
  ['ours-cpu-2', 'ours-cpu'], ['ours-webgpu', 'ort-webgpu'],
  [baselineThreads > 1 ? 'ours-cpu-2' : 'ours-cpu', baseName], [baseName, `ort-wasm-${Math.min(baselineThreads, 2)}`]]) {
  if (!times[ours] || !times[peer]) continue;
  console.log(`| ${ours} ÷ ${peer} | ${parts.map((p) => (median(times[ours][p]) / median(times[peer][p])).toFixed(2)).join(' | ')} |`);
}
console.log('\nLoading (module, weights from the local server, sessions) and the first image after it, ms:\n');
console.log('| engine | load | first image | load + first image |');
console.log('|---|---:|---:|---:|');
for (const e of engines) console.log(`| ${e.name} | ${e.load.toFixed(0)} | ${first[e.name].toFixed(0)} | ${(e.load + first[e.name]).toFixed(0)} |`);
