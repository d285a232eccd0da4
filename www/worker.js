// Runs the pipeline off the main thread so the page never freezes.
// In:  {type: 'generate', base, backend, options, preview, image?, mask?} | {type: 'cancel'}
// Out: {type: 'download', file, loaded, total} | {type: 'loaded', backend, notice}
//      {type: 'step', done, total, rgba?, width, height} | {type: 'result', rgba, width, height}
//      {type: 'cancelled'} | {type: 'error', message}
import init, { Generator } from './pkg/latent_diffusion_web.js';

const FILES = ['unet/config.json', 'unet/diffusion_pytorch_model.safetensors', 'vae/config.json',
  'vae/diffusion_pytorch_model.safetensors', 'text_encoder/config.json', 'text_encoder/model.safetensors',
  'tokenizer/vocab.json', 'tokenizer/merges.txt', 'tokenizer/tokenizer_config.json',
  'scheduler/scheduler_config.json'];
const OPTIONAL = new Set(['tokenizer/tokenizer_config.json']);
const CACHE = 'ldw-models-v1';

let ready = init();
let generator = null, loadedKey = null, cancelled = false;

/** One file: from the Cache API if there, else streamed from the network with byte progress. */
async function fetchFile(base, file) {
  const url = new URL(file, new URL(base, self.location.href)).href;
  const cache = await caches.open(CACHE);
  const hit = await cache.match(url);
  if (hit) return new Uint8Array(await hit.arrayBuffer());
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new Error(`could not reach ${url}: ${e.message}`);
  }
  if (!res.ok) {
    if (OPTIONAL.has(file) && res.status === 404) return null;
    throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
  }
  const total = Number(res.headers.get('content-length')) || 0;
  const reader = res.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    postMessage({ type: 'download', file, loaded, total });
  }
  if (total && loaded !== total) throw new Error(`${url}: download stopped at ${loaded} of ${total} bytes`);
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) { bytes.set(c, at); at += c.length; }
  await cache.put(url, new Response(bytes, { headers: { 'content-type': 'application/octet-stream' } }));
  return bytes;
}

async function load(base, backend) {
  const key = `${backend} ${base}`;
  if (generator && loadedKey === key) return;
  generator?.free();
  generator = null;
  const files = {};
  for (const f of FILES) {
    const b = await fetchFile(base, f);
    if (b) files[f] = b;
  }
  try {
    generator = await Generator.create(files, backend);
  } catch (e) {
    // Never keep files that failed to load: the next attempt downloads them again.
    const cache = await caches.open(CACHE);
    await Promise.all(FILES.map((f) => cache.delete(new URL(f, new URL(base, self.location.href)).href)));
    throw e;
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
  if (data.type === 'cancel') { cancelled = true; return; }
  if (data.type === 'generate') {
    try {
      await generate(data);
    } catch (e) {
      postMessage({ type: 'error', message: e?.message ?? String(e) });
    }
  }
};
