// The learning view: the forward process on an image, a real generation laid
// open step by step, and side-by-side comparisons. Numbers come from the wasm
// module (here for the schedule and pixel-space noising; in worker.js for
// everything that needs the model).
import init, { addNoiseRgba, alphasCumprod, signalToNoise } from './pkg/latent_diffusion_web.js';
import { ModelWorker } from './panic-watch.js';

const $ = (id) => document.getElementById(id);
const BASE = 'models/emoji-4step/';
const SIZE = 64; // the model's trained size; images are drawn at it
// The model takes the guidance scale as an input (one pass per step): lower
// gives more variety between seeds, higher follows the prompt more closely.
const GUIDANCE = 1.5;

// ---- One worker, one job at a time.

let current = null;
const queue = [];
/** Runs a worker job; `onMessage` sees its trace/step messages. Resolves to
 * the job's last message (result, forwarded or cancelled); rejects on error. */
function job(message, onMessage = () => {}) {
  return new Promise((resolve, reject) => {
    queue.push({ message, onMessage, resolve, reject });
    if (!current) next();
  });
}
function next() {
  current = queue.shift() ?? null;
  if (current) generator.post({ base: BASE, backend: 'auto', ...current.message });
}
function onWorkerMessage({ data: m }) {
  const j = current;
  if (!j) return;
  if (m.type === 'download') {
    $('status').textContent = `Downloading the model: ${m.file}`;
  } else if (['result', 'forwarded', 'cancelled'].includes(m.type)) {
    j.resolve(m); next();
  } else if (m.type === 'error') {
    j.reject(new Error(m.message)); next();
  } else {
    j.onMessage(m);
  }
}
/** The worker that runs the model; after a crash (a trap on its thread or
 * its thread pool's) the job in progress fails and a new worker takes the
 * queue. */
const generator = new ModelWorker(
  () => new Worker(new URL('./worker.js', import.meta.url), { type: 'module' }),
  onWorkerMessage,
  (why) => {
    const error = new Error(`The generator crashed (${why || 'no details'}); it has been restarted, so try again.`);
    const j = current;
    current = null;
    if (j) j.reject(error); else show(error);
    next();
  },
);

// For the crash test: a panic on a thread of the threaded module's pool.
window.ldwDebug = { trapPool: () => generator.post({ type: 'debug-trap-pool' }) };

function show(error) {
  $('error').textContent = error ? (error.message ?? String(error)) : '';
}

function draw(canvas, rgba, w, h) {
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  canvas.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba), w, h), 0, 0);
}

/** A figure of an RGBA image with a caption. */
function figure(rgba, w, h, caption) {
  const f = document.createElement('figure');
  const cv = document.createElement('canvas');
  draw(cv, rgba, w, h);
  const cap = document.createElement('figcaption');
  cap.textContent = caption;
  f.append(cv, cap);
  return f;
}

/** One latent channel as a grey image: 0 is mid-grey, ±2 black/white. */
function channelImage(values, ch, h, w) {
  const out = new Uint8ClampedArray(h * w * 4);
  for (let i = 0; i < h * w; i++) {
    const v = 127.5 + values[ch * h * w + i] * 63.75;
    out.set([v, v, v, 255], i * 4);
  }
  return out;
}
function drawChannels(container, values, [c, h, w], label) {
  container.replaceChildren(...Array.from({ length: c },
    (_, ch) => figure(channelImage(values, ch, h, w), w, h, `${label} channel ${ch}`)));
}

// ---- 1. The forward process.

let x0 = null; // RGBA of the chosen image at SIZE × SIZE

function scheduleConfig() {
  const c = { beta_schedule: $('schedule').value, num_train_timesteps: 1000 };
  if (c.beta_schedule === 'scaled_linear') Object.assign(c, { beta_start: 0.00085, beta_end: 0.012 });
  return JSON.stringify(c);
}

async function imageFrom(source) {
  if (source === 'upload') {
    const file = $('upload').files[0];
    if (!file) return null;
    try { return await createImageBitmap(file); } catch {
      throw new Error(`${file.name} is not an image this browser can read; choose a PNG, JPEG or WebP file.`);
    }
  }
  if (source === 'last') {
    const blob = await lastGenerated();
    if (!blob) throw new Error('No image has been made on the generator page in this browser yet.');
    return createImageBitmap(blob);
  }
  return createImageBitmap(await (await fetch('learn/example.png')).blob());
}
/** The newest result in the generator page's history (IndexedDB). */
function lastGenerated() {
  return new Promise((ok) => {
    const r = indexedDB.open('ldw-history', 1);
    r.onupgradeneeded = () => r.result.createObjectStore('images', { keyPath: 'id', autoIncrement: true });
    r.onerror = () => ok(null);
    r.onsuccess = () => {
      const tx = r.result.transaction('images', 'readonly');
      const c = tx.objectStore('images').openCursor(null, 'prev');
      c.onsuccess = () => { ok(c.result?.value.blob ?? null); r.result.close(); };
      c.onerror = () => ok(null);
    };
  });
}

async function chooseImage() {
  show(null);
  $('upload').hidden = $('source').value !== 'upload';
  try {
    const bmp = await imageFrom($('source').value);
    if (!bmp) return;
    const g = $('x0').getContext('2d', { willReadFrequently: true });
    g.fillStyle = '#fff'; g.fillRect(0, 0, SIZE, SIZE);
    g.drawImage(bmp, 0, 0, SIZE, SIZE);
    x0 = g.getImageData(0, 0, SIZE, SIZE).data;
    forward();
  } catch (e) {
    show(e);
  }
}

let latentTimer = 0;
function forward() {
  if (!x0) return;
  const t = Number($('t').value), seed = BigInt(Math.max(0, Math.floor(Number($('fseed').value) || 0)));
  const config = scheduleConfig();
  $('tval').textContent = t;
  try {
    draw($('xt'), addNoiseRgba(config, new Uint8Array(x0), SIZE, SIZE, t, seed), SIZE, SIZE);
    const a = alphasCumprod(config), snr = signalToNoise(config);
    plot(a, snr, t);
    $('formula').textContent = `t = ${t}: ᾱ_t = ${a[t].toFixed(4)}, so x_t = ${Math.sqrt(a[t]).toFixed(4)}·x₀ + `
      + `${Math.sqrt(1 - a[t]).toFixed(4)}·ε   (signal-to-noise ratio ᾱ/(1−ᾱ) = ${snr[t].toPrecision(3)})`;
  } catch (e) {
    show(e);
  }
  // The latent path needs the model: asked of the worker, at most every 150 ms.
  clearTimeout(latentTimer);
  latentTimer = setTimeout(async () => {
    try {
      const m = await job({ type: 'forward', rgba: new Uint8Array(x0), width: SIZE, height: SIZE, config, t, seed: Number(seed) });
      const [, h, w] = m.shape;
      draw($('zt'), m.decoded, w * (SIZE / h), SIZE);
      drawChannels($('channels'), m.noisy, m.shape, 'x_t');
      document.body.dataset.forward = String(m.t);
    } catch (e) {
      show(e);
    }
  }, 150);
}

function plot(alphas, snr, t) {
  const cv = $('plot'), g = cv.getContext('2d'), w = cv.width, h = cv.height, T = alphas.length;
  g.clearRect(0, 0, w, h);
  const line = (values, lo, hi, color) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    values.forEach((v, i) => {
      const x = (i / (T - 1)) * w, y = h - 5 - ((Math.min(hi, Math.max(lo, v)) - lo) / (hi - lo)) * (h - 10);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  };
  line(alphas, 0, 1, '#3366cc');
  line(Array.from(snr, (s) => Math.log(s)), -12, 12, '#cc3333');
  g.strokeStyle = '#222'; g.lineWidth = 1; g.beginPath();
  g.moveTo((t / (T - 1)) * w, 0); g.lineTo((t / (T - 1)) * w, h); g.stroke();
}

// ---- 2. The reverse process, step by step.

let trace = [];
let running = false;
function setRunning(b) {
  running = b;
  $('run').disabled = b;
  $('cancel').disabled = !b;
  for (const el of document.querySelectorAll('[data-compare]')) el.disabled = b;
}
$('cancel').addEventListener('click', () => generator.post({ type: 'cancel' }));

/** Runs `body` as the page's one long task: buttons disabled meanwhile,
 * errors shown, `document.body.dataset[kind]` = running, then what `body`
 * resolves to ('done' or 'cancelled') or 'error'. */
async function exclusive(kind, body) {
  if (running) return;
  show(null);
  setRunning(true);
  document.body.dataset[kind] = 'running';
  try {
    const ended = await body();
    $('status').textContent = ended === 'cancelled' ? 'Cancelled.' : 'Done.';
    document.body.dataset[kind] = ended;
  } catch (e) {
    show(e);
    document.body.dataset[kind] = 'error';
  } finally {
    setRunning(false);
  }
}

function stepTile(entry, i) {
  const b = document.createElement('button');
  b.type = 'button'; b.className = 'step';
  b.setAttribute('aria-pressed', 'false');
  const a = document.createElement('canvas'), p = document.createElement('canvas');
  draw(a, entry.images.sample, entry.width, entry.height);
  draw(p, entry.images.predOriginal, entry.width, entry.height);
  const label = document.createElement('span');
  label.textContent = `step ${i + 1}: t = ${entry.details.timestep}`;
  b.append(label, a, p);
  b.title = 'top: x_t, the step\'s input; bottom: x̂₀, the model\'s estimate of the clean image';
  b.addEventListener('click', () => select(i));
  return b;
}

function select(i) {
  $('scrub').value = i;
  $('scrubval').textContent = `${i + 1} of ${trace.length}`;
  [...$('strip').children].forEach((el, k) => el.setAttribute('aria-pressed', String(k === i)));
  const e = trace[i], d = e.details;
  const f = (x) => x.toFixed(4);
  let text = `step ${i + 1}, t = ${d.timestep}: ᾱ_t = ${f(d.alphaProdT)}, ᾱ_prev = ${f(d.alphaProdPrev)}\n`
    + `x_t = ${f(Math.sqrt(d.alphaProdT))}·x̂₀ + ${f(Math.sqrt(1 - d.alphaProdT))}·ε̂   (the model's split of its input into image and noise)\n`;
  if (d.ddim) {
    text += `x_{t−1} = ${f(d.ddim.sqrtAlphaPrev)}·x̂₀ + ${f(d.ddim.direction)}·ε̂`
      + (d.ddim.sigma > 0 ? ` + ${f(d.ddim.sigma)}·z   (eta > 0: fresh noise z)` : '   (eta = 0: no fresh noise)');
  }
  $('update').textContent = text;
  $('update').style.whiteSpace = 'pre-wrap';
  drawChannels($('noise-channels') ?? addNoisePanel(), d.predNoise, d.shape, 'ε̂');
  $('mask-figure').hidden = !d.latentMask;
  if (d.latentMask) {
    const [, h, w] = d.shape;
    draw($('latent-mask'), channelImage(Array.from(d.latentMask, (m) => 4 * m - 2), 0, h, w), w, h);
  }
}
function addNoisePanel() {
  const div = document.createElement('div');
  div.id = 'noise-channels'; div.className = 'figures';
  $('update').after(div);
  return div;
}
$('scrub').addEventListener('input', () => select(Number($('scrub').value)));

$('rform').addEventListener('submit', (ev) => {
  ev.preventDefault();
  exclusive('trace', async () => {
    trace = [];
    $('strip').replaceChildren();
    $('scrub-label').hidden = true;
    const options = {
      prompt: $('prompt').value, seed: Number($('seed').value), steps: Number($('steps').value),
      eta: Number($('eta').value), guidanceScale: GUIDANCE,
    };
    let image = null, mask = null;
    const inpaint = $('inpaint').checked;
    $('inpaint-note').hidden = !inpaint;
    if (inpaint) {
      const ex = await imageFrom('example');
      const g = new OffscreenCanvas(SIZE, SIZE).getContext('2d');
      g.drawImage(ex, 0, 0, SIZE, SIZE);
      image = new Uint8Array(g.getImageData(0, 0, SIZE, SIZE).data);
      mask = new Uint8Array(SIZE * SIZE * 4);
      for (let i = 0; i < SIZE * SIZE; i++) { const v = i % SIZE < SIZE / 2 ? 255 : 0; mask.set([v, v, v, 255], i * 4); }
      options.strength = 1;
    }
    const m = await job({ type: 'trace', options, image, mask }, (t) => {
      if (t.type !== 'trace') return;
      trace.push(t);
      $('strip').append(stepTile(t, trace.length - 1));
      $('scrub').max = trace.length - 1;
      $('scrub-label').hidden = false;
      select(trace.length - 1);
      $('status').textContent = `Step ${t.done} of ${t.total}`;
    });
    if (m.type !== 'result') return 'cancelled';
    const tile = figure(m.rgba, m.width, m.height, 'result');
    tile.className = 'step';
    tile.querySelector('canvas').id = 'result';
    $('strip').append(tile);
    return 'done';
  });
});

// ---- 3. Comparisons.

const COMPARE = {
  steps: [1, 2, 4, 8, 50].map((n) => [`${n} step${n > 1 ? 's' : ''}`, { steps: n }]),
  eta: [['eta 0 (DDIM)', { eta: 0, steps: 8 }], ['eta 1 (DDPM-like)', { eta: 1, steps: 8 }]],
  guidance: [1, 1.5, 2, 3].map((g) => [`guidance ${g}`, { guidanceScale: g }]),
  seeds: [1, 3].flatMap((g) => [0, 1, 2, 3].map((s) => [`guidance ${g}, seed ${s}`, { guidanceScale: g, seed: s }])),
  spacing: ['trailing', 'leading', 'linspace'].map((s) => [`${s} spacing`, { timestepSpacing: s }]),
};
for (const b of document.querySelectorAll('[data-compare]')) {
  b.addEventListener('click', () => exclusive('compare', async () => {
    $('grid').replaceChildren();
    const base = { prompt: $('cprompt').value, seed: Number($('cseed').value), steps: 4, eta: 0, guidanceScale: GUIDANCE };
    for (const [label, change] of COMPARE[b.dataset.compare]) {
      $('status').textContent = `Running: ${label}`;
      const m = await job({ type: 'generate', options: { ...base, ...change } });
      if (m.type !== 'result') return 'cancelled';
      $('grid').append(figure(m.rgba, m.width, m.height, label));
    }
    return 'done';
  }));
}

// ---- Start.

await init();
for (const id of ['schedule', 'fseed', 't']) $(id).addEventListener('input', forward);
$('source').addEventListener('change', chooseImage);
$('upload').addEventListener('change', chooseImage);
await chooseImage();
if ('serviceWorker' in navigator) navigator.serviceWorker.register('sw.js').catch(() => {});
$('status').textContent = 'Ready.';
document.body.dataset.ready = 'true';
