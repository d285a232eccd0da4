// Runs the pipeline off the main thread so the page never freezes. Downloads,
// the Cache API, the model file list and the step loop live in the wasm module
// (Generator.fromUrl, Generator.generate): this file only relays messages.
// In:  {type: 'generate', base, backend, options, preview, image?, mask?, vae?, precision?, role?} | {type: 'cancel'}
//      (role 'upscale': an upscaler folder, kept loaded beside the generator; `image` is the one to upscale)
//      {type: 'inspect', id, base, vae?} (what a folder needs, read before downloading it)
//      {type: 'debug-trap'} (a deliberate panic, for the recovery test)
//      {type: 'debug-trap-pool'} (a deliberate panic on a thread of the threaded module's pool)
//      {type: 'panic-channel', name} (where that module posts such a panic: panic-watch.js)
//      {type: 'check-prompt', id, base, prompt} (what the model will read of a prompt)
//      {type: 'trace', base, backend, options, image?, mask?, vae?} (a run laid open step by step)
//      {type: 'forward', base, backend, vae?, rgba, width, height, config, t, seed} (latent forward process)
// Out: {type: 'download', file, loaded, total}
//      {type: 'loaded', role, base, backend, notice, maxSize, defaultSize, sizeStep, upscaleFactor, precision, weightBytes}
//      {type: 'step', done, total, rgba?, width, height} | {type: 'result', rgba, width, height}
//      {type: 'cancelled'} | {type: 'error', message, fatal}
//      {type: 'inspected', id, base, info, examples, suggestions} | {type: 'inspected', id, base, error}
//      {type: 'prompt-checked', id, check}
//      {type: 'trace', details, images: {sample, predOriginal, prevSample}, width, height, done, total}
//      {type: 'forwarded', latents, noisy, decoded, shape, t}
// `fatal`: the wasm instance trapped and cannot be trusted; the page replaces this worker.
import init, * as webgpuModule from './pkg/latent_diffusion_web.js';

const { Prompts, addNoise, debugPanic } = webgpuModule;
const ready = init();

/** The CPU path's module: the threaded one (./build.sh builds it into
 * pkg-threads/; no WebGPU; a rayon pool of one thread per core, this worker
 * being the first and the models' caller: src/cpu_pool.rs) where the page is
 * cross-origin isolated and the machine has cores to share; else the WebGPU
 * module's own CPU path, one thread. */
let cpuModule = null;
let panicChannel = null; // the page's channel for panics on the pool's threads
function threadedCpu() {
  if (!self.crossOriginIsolated || (navigator.hardwareConcurrency ?? 1) < 2) return Promise.resolve(null);
  cpuModule ??= (async () => {
    const m = await import('./pkg-threads/latent_diffusion_web.js');
    await m.default();
    await m.initThreadPool(navigator.hardwareConcurrency);
    m.setPanicChannel(panicChannel);
    return m;
  })().catch((e) => {
    console.warn('the threaded CPU module did not start; the CPU path runs on one thread:', e);
    return null;
  });
  return cpuModule;
}

/** The module that runs `backend` for this page, and the notice "auto"
 * gives when it picks the CPU (the WebGPU module's `cpuNotice`). */
async function engineFor(backend) {
  if (backend === 'webgpu') return { engine: webgpuModule };
  let notice;
  if (backend === 'auto') {
    notice = await webgpuModule.cpuNotice();
    if (notice === undefined) return { engine: webgpuModule }; // "auto" picks WebGPU
  }
  const threaded = await threadedCpu();
  return threaded ? { engine: threaded, backend: 'cpu', notice } : { engine: webgpuModule };
}
let engine = webgpuModule; // the module of the last run's pipeline
// One loaded pipeline per role: the generator, and an upscaler beside it.
const slots = { generate: { gen: null, key: null }, upscale: { gen: null, key: null } };
let generator = null; // the pipeline of the run in progress (or the last one)
let cancelled = false, download = null;
let prompts = null, promptsBase = null; // the inspected model's prompt reading

async function load(base, backend, vae, precision, role = 'generate') {
  const slot = slots[role] ?? slots.generate;
  const key = `${backend} ${base} ${vae ?? ''} ${precision ?? 'auto'}`;
  if (slot.gen && slot.key === key) { generator = slot.gen; engine = slot.engine; return; }
  slot.gen?.free();
  slot.gen = null;
  slot.key = null;
  generator = null;
  const route = await engineFor(backend);
  download = new AbortController();
  try {
    slot.gen = await route.engine.Generator.fromUrl(base, route.backend ?? backend,
      (file, loaded, total) => postMessage({ type: 'download', file, loaded, total }),
      { signal: download.signal, ...(vae ? { vae } : {}), ...(precision ? { precision } : {}) });
  } finally {
    download = null;
  }
  slot.key = key;
  slot.engine = route.engine;
  slot.notice = route.notice ?? slot.gen.notice;
  generator = slot.gen;
  engine = slot.engine;
  postMessage({
    type: 'loaded', role, base, backend: generator.backend, notice: slot.notice, maxSize: generator.maxSize,
    precision: generator.precision, weightBytes: generator.weightBytes,
    defaultSize: generator.defaultSize, sizeStep: generator.sizeStep, upscaleFactor: generator.upscaleFactor,
  });
}

/** Loads the run's model (unless loaded); resolves to the size of the image
 * the run makes (an upscaler's is its input's times its factor). */
async function prepare({ base, backend, options, vae, precision, role }) {
  cancelled = false;
  await ready;
  await load(base, backend ?? 'auto', vae, precision, role);
  if (cancelled) throw new Error('cancelled');
  const f = generator.upscaleFactor;
  return { width: (options.width ?? generator.defaultSize) * f, height: (options.height ?? generator.defaultSize) * f };
}

async function generate(data) {
  const { options, preview, image, mask } = data;
  const { width, height } = await prepare(data);
  const rgba = await generator.generate(options, image ?? null, mask ?? null, (done, total, preview) => {
    const msg = { type: 'step', done, total, width, height };
    if (preview) msg.rgba = preview;
    postMessage(msg);
  }, preview);
  if (rgba === undefined) postMessage({ type: 'cancelled' });
  else postMessage({ type: 'result', rgba, width, height }, [rgba.buffer]);
}

/** A run laid open step by step (the learning view): after each step its
 * numbers (Generator.stepDetails) and x_t, x̂₀ and x_{t−1} decoded by the
 * VAE; then the result, as for `generate`. */
async function traced(data) {
  const { options, image, mask } = data;
  const { width, height } = await prepare(data);
  generator.start(options, image ?? null, mask ?? null);
  generator.trace(true);
  const total = generator.totalSteps();
  for (let more = true; more;) {
    more = generator.step();
    const d = await generator.stepDetails();
    const [c, h, w] = d.shape;
    const decode = (values) => generator.decodeLatents(values, c, h, w);
    const images = { sample: await decode(d.sample), predOriginal: await decode(d.predOriginal), prevSample: await decode(d.prevSample) };
    postMessage({ type: 'trace', details: d, images, width, height, done: generator.stepsDone(), total });
    await new Promise((ok) => setTimeout(ok, 0));
    if (cancelled) { generator.cancel(); postMessage({ type: 'cancelled' }); return; }
  }
  const rgba = await generator.result();
  postMessage({ type: 'result', rgba, width, height }, [rgba.buffer]);
}

/** An image's latents, their forward process at t under the model's
 * schedule or another, and both decoded (the learning view's latent space). */
async function forwardLatents({ base, backend, vae, rgba, width, height, config, t, seed }) {
  await ready;
  await load(base, backend ?? 'auto', vae);
  const latents = await generator.encodeImage(rgba, width, height);
  const f = generator.sizeStep, c = latents.length / ((width / f) * (height / f));
  const noisy = addNoise(config, latents, t, BigInt(seed));
  const decoded = await generator.decodeLatents(noisy, c, height / f, width / f);
  postMessage({ type: 'forwarded', latents, noisy, decoded, shape: [c, height / f, width / f], t });
}

/** A trap (a Rust panic or a wasm fault) leaves the module unusable. */
const fatal = (e) => e instanceof WebAssembly.RuntimeError;
/** What a trap was about: the panic's message where Rust panicked. */
function crash(e) {
  let why = e?.message ?? String(e);
  try { why = engine.lastPanic() ?? webgpuModule.lastPanic() ?? why; } catch { /* the module is too broken to say */ }
  return `The generator crashed (${why}); it has been restarted, so try again.`;
}

onmessage = async ({ data }) => {
  if (data.type === 'cancel') {
    cancelled = true;
    download?.abort();
    generator?.cancel();
    return;
  }
  if (data.type === 'panic-channel') {
    panicChannel = data.name;
    cpuModule?.then((m) => m?.setPanicChannel(panicChannel));
    return;
  }
  if (data.type === 'debug-trap') {
    await ready;
    try { debugPanic('a deliberate panic (debug-trap)'); } catch (e) {
      postMessage({ type: 'error', message: crash(e), fatal: fatal(e) });
    }
    return;
  }
  if (data.type === 'debug-trap-pool') {
    const m = await threadedCpu();
    if (!m) postMessage({ type: 'error', message: 'This page has no threaded CPU module.' });
    else m.debugPoolPanic('a deliberate panic on a pool thread (debug-trap-pool)'); // never returns
    return;
  }
  if (data.type === 'inspect') {
    try {
      await ready;
      const info = await webgpuModule.Generator.inspect(data.base, data.vae ? { vae: data.vae } : {});
      if (promptsBase !== data.base) {
        prompts?.free();
        prompts = null;
        prompts = await Prompts.fromUrl(data.base, {});
        promptsBase = data.base;
      }
      postMessage({
        type: 'inspected', id: data.id, base: data.base, info,
        examples: prompts.examples, suggestions: prompts.suggestions,
      });
    } catch (e) {
      if (fatal(e)) postMessage({ type: 'error', fatal: true, message: crash(e) });
      else postMessage({ type: 'inspected', id: data.id, base: data.base, error: e?.message ?? String(e) });
    }
    return;
  }
  if (data.type === 'check-prompt') {
    if (prompts && promptsBase === data.base) {
      try {
        postMessage({ type: 'prompt-checked', id: data.id, check: prompts.check(data.prompt) });
      } catch (e) {
        if (fatal(e)) postMessage({ type: 'error', fatal: true, message: crash(e) });
      }
    }
    return;
  }
  if (data.type === 'generate' || data.type === 'trace' || data.type === 'forward') {
    try {
      await { generate, trace: traced, forward: forwardLatents }[data.type](data);
    } catch (e) {
      if (cancelled && !fatal(e)) postMessage({ type: 'cancelled' });
      else {
        postMessage({
          type: 'error', fatal: fatal(e),
          message: fatal(e) ? crash(e) : (e?.message ?? String(e)),
        });
      }
    }
  }
};

// A trap inside a task the relay does not await (a download callback, say)
// still reaches the page.
addEventListener('unhandledrejection', (e) => {
  postMessage({ type: 'error', fatal: fatal(e.reason), message: fatal(e.reason) ? crash(e.reason) : `The generator failed: ${e.reason?.message ?? e.reason}` });
});
