// <latent-diffusion>: the generator as a custom element any page can embed.
//
//   <script type="module" src="https://example.org/ldw/widget.js"></script>
//   <latent-diffusion prompt="red heart" steps="4"></latent-diffusion>
//
// Attributes: model (a diffusers folder URL, relative to the page; default:
// our emoji model beside this script), prompt, negative-prompt, seed, steps,
// guidance (default: 1.5 for our emoji model, which takes the scale as an input;
// 1 for a model given by URL), eta, size (pixels, square; default: the model's), mode
// ("generate", "inpaint": paint over the image to redo that part, or
// "learn": each step's estimate of the clean image in a strip), show-steps
// (a strip of the step previews), backend ("auto", "webgpu", "cpu"),
// autostart (generate once when connected), controls ("false" hides the
// prompt box and buttons).
// Methods: generate() (resolves to a PNG Blob, or null when cancelled),
// cancel(). Events: progress {file, loaded, total}, step {done, total,
// preview: ImageData | null}, done {blob, width, height}, cancel, error
// {message}.
// Every widget on a page shares one Web Worker and so one loaded model: runs
// queue. The worker is a same-origin blob that imports this script's
// worker.js, so the widget works when this script, the wasm and the weights
// are on another origin than the page (they must be served with CORS).

import { ModelWorker } from './panic-watch.js';

const WORKER_URL = new URL('worker.js', import.meta.url).href;
const DEFAULT_MODEL = new URL('models/emoji-4step/', import.meta.url).href;
// Our model's guidance scale is an input (one pass per step); 1.5 balances
// following the prompt against variety between seeds (its model card).
const DEFAULT_MODEL_GUIDANCE = 1.5;

/** The one worker of this page (started with the first job), and its job
 * queue. */
const hub = {
  model: null,
  queue: [],
  current: null,
  workerUrl: null,
  createWorker() {
    this.workerUrl ??= URL.createObjectURL(
      new Blob([`import ${JSON.stringify(WORKER_URL)};`], { type: 'text/javascript' }));
    return new Worker(this.workerUrl, { type: 'module' });
  },
  run(job) {
    this.model ??= new ModelWorker(
      () => this.createWorker(),
      ({ data }) => this.current?.on(data),
      (why) => this.current?.on({ type: 'error', message: `The generator failed to start or crashed (${why || 'no details'}).` }),
    );
    this.queue.push(job);
    if (!this.current) this.next();
  },
  next() {
    this.current = this.queue.shift() ?? null;
    if (this.current) this.model.post(this.current.message);
  },
  /** Ends the current job (its last message was handled) and starts the next. */
  finish(job) {
    if (this.current === job) this.next();
  },
  cancel(job) {
    const i = this.queue.indexOf(job);
    if (i >= 0) { this.queue.splice(i, 1); job.on({ type: 'cancelled' }); return; }
    if (this.current !== job) return;
    this.model.post({ type: 'cancel' });
    // A step that does not end within 3 s is stopped by replacing the worker.
    setTimeout(() => {
      if (this.current !== job) return;
      this.model.restart();
      job.on({ type: 'cancelled' });
    }, 3000);
  },
};

const STYLE = `
:host { display: inline-block; max-width: 100%; font: 14px system-ui, sans-serif; color: #222; }
.w { display: flex; flex-direction: column; gap: .4rem; width: var(--ldw-width, 256px); max-width: 100%; }
.stage { position: relative; aspect-ratio: 1; background: #fff; border: 1px solid #ddd; }
.stage canvas { position: absolute; inset: 0; width: 100%; height: 100%; image-rendering: pixelated; }
.mask { opacity: .45; touch-action: none; pointer-events: none; }
:host([mode=inpaint]) .mask { pointer-events: auto; cursor: crosshair; }
.bar { display: flex; gap: .3rem; }
.bar input { flex: 1; min-width: 0; }
progress { width: 100%; }
.status { margin: 0; color: #555; font-size: .85em; min-height: 1.2em; }
.error { margin: 0; color: #b00020; font-size: .85em; }
.error:empty, .note:empty { display: none; }
.note { margin: 0; color: #555; font-size: .8em; }
.strip { display: flex; gap: .25rem; overflow-x: auto; }
.strip:empty { display: none; }
.strip figure { margin: 0; font-size: .7em; color: #555; text-align: center; }
.strip canvas { width: 48px; height: 48px; image-rendering: pixelated; display: block; }
:host([controls=false]) .bar { display: none; }
`;

class LatentDiffusion extends HTMLElement {
  static get observedAttributes() { return ['prompt']; }

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${STYLE}</style><div class="w" part="widget">
      <div class="stage" part="image"><canvas class="out" width="64" height="64" role="img" aria-label="generated image"></canvas>
        <canvas class="mask" width="64" height="64" aria-label="inpainting mask"></canvas></div>
      <div class="bar"><input class="prompt" aria-label="prompt"><button class="go" type="button">Generate</button>
        <button class="stop" type="button" disabled>Cancel</button></div>
      <progress max="1" value="0" aria-label="progress"></progress>
      <p class="status" role="status"></p><p class="note"></p><p class="error" role="alert"></p>
      <div class="strip" aria-label="steps"></div></div>`;
    this.$ = (sel) => root.querySelector(sel);
    this.$('.go').addEventListener('click', () => this.generate().catch(() => {}));
    this.$('.stop').addEventListener('click', () => this.cancel());
    this.$('.prompt').addEventListener('keydown', (e) => { if (e.key === 'Enter') this.generate().catch(() => {}); });
    this.job = null;
    this.hasImage = false;
    this.setupMask();
  }

  connectedCallback() {
    this.$('.prompt').value = this.getAttribute('prompt') ?? 'red heart';
    if (!navigator.gpu && !this.getAttribute('backend')) {
      this.$('.note').textContent = 'This browser does not offer WebGPU, so images are made on the CPU.';
    }
    if (this.hasAttribute('autostart')) this.generate().catch(() => {});
  }

  attributeChangedCallback(name, _, value) {
    if (name === 'prompt' && value !== null) this.$('.prompt').value = value;
  }

  /** The model folder as an absolute URL (the worker runs from a blob URL). */
  get model() {
    const m = this.getAttribute('model');
    return m ? new URL(m, document.baseURI).href : DEFAULT_MODEL;
  }

  options() {
    const num = (name, fallback) => {
      const v = this.getAttribute(name);
      if (v === null || v.trim() === '') return fallback;
      const n = Number(v);
      if (!Number.isFinite(n)) throw new Error(`attribute ${name}="${v}" is not a number`);
      return n;
    };
    const o = {
      prompt: this.$('.prompt').value, negativePrompt: this.getAttribute('negative-prompt') ?? '',
      seed: num('seed', 0), steps: num('steps', 4), eta: num('eta', 0),
      guidanceScale: num('guidance', this.getAttribute('model') ? 1 : DEFAULT_MODEL_GUIDANCE),
    };
    const size = num('size', undefined);
    if (size !== undefined) { o.width = size; o.height = size; }
    return o;
  }

  /** Makes an image; resolves to a PNG Blob, or null when cancelled. */
  generate() {
    if (this.job) return Promise.reject(new Error('this widget is already running'));
    const err = this.$('.error');
    err.textContent = '';
    let options;
    try {
      options = this.options();
    } catch (e) {
      return Promise.reject(this.fail(e.message));
    }
    const mode = this.getAttribute('mode') ?? 'generate';
    let image = null, mask = null;
    if (mode === 'inpaint') {
      if (!this.hasImage) return Promise.reject(this.fail('Generate an image first, then paint over the part to redo.'));
      const { width: w, height: h } = this.$('.out');
      image = new Uint8Array(this.$('.out').getContext('2d').getImageData(0, 0, w, h).data);
      const alpha = this.$('.mask').getContext('2d').getImageData(0, 0, w, h).data;
      mask = new Uint8Array(w * h * 4);
      let painted = 0;
      for (let i = 0; i < w * h; i++) { const v = alpha[i * 4 + 3] ? 255 : 0; painted += v > 0; mask.set([v, v, v, 255], i * 4); }
      if (!painted) return Promise.reject(this.fail('Paint over the part of the image to redo first.'));
      Object.assign(options, { width: w, height: h, strength: 1 });
    }
    const learn = mode === 'learn';
    const strip = this.$('.strip');
    strip.replaceChildren();
    this.setBusy(true);
    this.$('.status').textContent = 'Starting…';
    return new Promise((resolve, reject) => {
      const job = {
        message: {
          type: learn ? 'trace' : 'generate', base: this.model, backend: this.getAttribute('backend') ?? 'auto',
          preview: true, options, image, mask,
        },
        on: (m) => this.onMessage(job, m, resolve, reject),
      };
      this.job = job;
      hub.run(job);
    });
  }

  cancel() {
    if (this.job) hub.cancel(this.job);
  }

  onMessage(job, m, resolve, reject) {
    if (this.job !== job) return;
    const end = () => { this.job = null; this.setBusy(false); hub.finish(job); };
    if (m.type === 'download') {
      this.$('.status').textContent = `Downloading ${m.file}: ${(m.loaded / 1e6).toFixed(1)} MB`;
      this.$('progress').max = m.total || 1; this.$('progress').value = m.total ? m.loaded : 0;
      this.emit('progress', { file: m.file, loaded: m.loaded, total: m.total });
    } else if (m.type === 'loaded') {
      // Where it runs and why (no WebGPU, a software adapter, a GPU too small).
      this.$('.note').textContent = m.notice ? `Running on ${m.backend}. ${m.notice}` : '';
    } else if (m.type === 'step' || m.type === 'trace') {
      let preview = null;
      const rgba = m.type === 'trace' ? m.images.predOriginal : m.rgba;
      if (rgba) preview = new ImageData(new Uint8ClampedArray(rgba), m.width, m.height);
      if (preview && m.type === 'step') this.draw(preview);
      this.$('.status').textContent = `Step ${m.done} of ${m.total}`;
      this.$('progress').max = m.total; this.$('progress').value = m.done;
      if (preview && (this.hasAttribute('show-steps') || m.type === 'trace')) this.addToStrip(preview, m);
      this.emit('step', { done: m.done, total: m.total, preview });
    } else if (m.type === 'result') {
      this.draw(new ImageData(new Uint8ClampedArray(m.rgba), m.width, m.height));
      this.hasImage = true;
      this.$('.mask').getContext('2d').clearRect(0, 0, m.width, m.height);
      this.$('.status').textContent = 'Done.';
      end();
      this.$('.out').toBlob((blob) => {
        this.emit('done', { blob, width: m.width, height: m.height });
        resolve(blob);
      }, 'image/png');
    } else if (m.type === 'cancelled') {
      this.$('.status').textContent = 'Cancelled.';
      end();
      this.emit('cancel', {});
      resolve(null);
    } else if (m.type === 'error') {
      end();
      reject(this.fail(m.message));
    }
  }

  fail(message) {
    this.$('.error').textContent = message;
    this.$('.status').textContent = '';
    this.emit('error', { message });
    return new Error(message);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setBusy(b) {
    this.$('.go').disabled = b;
    this.$('.stop').disabled = !b;
  }

  draw(img) {
    for (const sel of ['.out', '.mask']) {
      const c = this.$(sel);
      if (c.width !== img.width || c.height !== img.height) { c.width = img.width; c.height = img.height; }
    }
    this.$('.out').getContext('2d').putImageData(img, 0, 0);
  }

  addToStrip(img, m) {
    const f = document.createElement('figure');
    const c = document.createElement('canvas');
    c.width = img.width; c.height = img.height;
    c.getContext('2d').putImageData(img, 0, 0);
    const cap = document.createElement('figcaption');
    cap.textContent = m.type === 'trace' ? `x̂₀ at t=${m.details.timestep}` : `step ${m.done}`;
    f.append(c, cap);
    this.$('.strip').append(f);
  }

  setupMask() {
    const c = this.$('.mask');
    let down = false;
    const paint = (e) => {
      const r = c.getBoundingClientRect();
      const g = c.getContext('2d');
      g.fillStyle = '#f00';
      g.beginPath();
      g.arc(((e.clientX - r.left) / r.width) * c.width, ((e.clientY - r.top) / r.height) * c.height, c.width / 10, 0, 7);
      g.fill();
    };
    c.addEventListener('pointerdown', (e) => { down = true; c.setPointerCapture(e.pointerId); paint(e); });
    c.addEventListener('pointermove', (e) => down && paint(e));
    c.addEventListener('pointerup', () => { down = false; });
  }
}

if (!customElements.get('latent-diffusion')) customElements.define('latent-diffusion', LatentDiffusion);
export { LatentDiffusion };
