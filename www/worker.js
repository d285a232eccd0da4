// Runs the pipeline off the main thread so the page never freezes. Downloads,
// the Cache API and the model file list live in the wasm module
// (Generator.fromUrl): this file only relays messages.
// In:  {type: 'generate', base, backend, options, preview, image?, mask?} | {type: 'cancel'}
// Out: {type: 'download', file, loaded, total} | {type: 'loaded', backend, notice}
//      {type: 'step', done, total, rgba?, width, height} | {type: 'result', rgba, width, height}
//      {type: 'cancelled'} | {type: 'error', message}
import init, { Generator } from './pkg/latent_diffusion_web.js';

const ready = init();
let generator = null, loadedKey = null, cancelled = false, download = null;

async function load(base, backend) {
  const key = `${backend} ${base}`;
  if (generator && loadedKey === key) return;
  generator?.free();
  generator = null;
  loadedKey = null;
  download = new AbortController();
  try {
    generator = await Generator.fromUrl(base, backend,
      (file, loaded, total) => postMessage({ type: 'download', file, loaded, total }),
      { signal: download.signal });
  } finally {
    download = null;
  }
  loadedKey = key;
  postMessage({ type: 'loaded', backend: generator.backend, notice: generator.notice });
}

const tick = () => new Promise((r) => setTimeout(r, 0));

async function generate({ base, backend, options, preview, image, mask }) {
  cancelled = false;
  await ready;
  await load(base, backend ?? 'auto');
  const width = options.width ?? generator.defaultSize, height = options.height ?? generator.defaultSize;
  generator.start(options, image ?? null, mask ?? null);
  const total = generator.totalSteps();
  for (;;) {
    const more = generator.step();
    const done = generator.stepsDone();
    const msg = { type: 'step', done, total, width, height };
    if (preview && more) msg.rgba = await generator.result();
    postMessage(msg);
    await tick(); // lets a 'cancel' message in
    if (cancelled) {
      generator.cancel();
      postMessage({ type: 'cancelled' });
      return;
    }
    if (!more) break;
  }
  const rgba = await generator.result();
  postMessage({ type: 'result', rgba, width, height }, [rgba.buffer]);
}

onmessage = async ({ data }) => {
  if (data.type === 'cancel') {
    cancelled = true;
    download?.abort();
    return;
  }
  if (data.type === 'generate') {
    try {
      await generate(data);
    } catch (e) {
      if (cancelled) postMessage({ type: 'cancelled' });
      else postMessage({ type: 'error', message: e?.message ?? String(e) });
    }
  }
};
