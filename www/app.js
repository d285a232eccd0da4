// The page: collects options, talks to the worker, draws progress and images,
// keeps a history of results and makes share links.
import { ModelWorker } from './panic-watch.js';

const $ = (id) => document.getElementById(id);
let busy = false;
let runs = 0; // counts submitted runs, so a late cancel timer spares the next one
let hasImage = false; // the canvas holds a result or an upload (img2img/inpaint need one)
let lastRun = null; // the settings of the run in progress / of the image shown

function fail(message) {
  upscaleEnded();
  $('error').textContent = message;
  $('status').textContent = 'Failed.';
  setBusy(false);
  document.body.dataset.state = 'error';
}

function setBusy(b) {
  busy = b;
  $('generate').disabled = b;
  $('cancel').disabled = !b;
}

function resize(w, h) {
  for (const id of ['out', 'mask']) {
    const c = $(id);
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  }
  $('stage').style.aspectRatio = `${w} / ${h}`;
  fitStage();
}

/** The image's size on screen: at most 512 px and the column's width; with
 * sharp pixels a whole multiple of the image's width (no uneven pixels). */
function fitStage() {
  const stage = $('stage'), w = $('out').width;
  const room = Math.min(stage.parentElement.clientWidth, Math.max(512, w));
  const sharp = $('display').value === 'pixelated';
  document.body.classList.toggle('smooth', !sharp);
  stage.style.width = sharp && w < room ? `${Math.floor(room / w) * w}px` : '';
}
addEventListener('resize', fitStage);
$('display').value = localStorage.getItem('ldw-display') ?? 'pixelated';
$('display').addEventListener('change', () => { localStorage.setItem('ldw-display', $('display').value); fitStage(); });

/** Brings the image into view (it sits below the form on narrow screens). */
function showStage() {
  const r = $('stage').getBoundingClientRect();
  if (r.top < 0 || r.bottom > innerHeight) $('stage').scrollIntoView({ block: 'nearest', behavior: 'smooth' });
}

function draw(rgba, w, h) {
  resize(w, h);
  $('out').getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba), w, h), 0, 0);
}

// The fast decoder offered for any SD-family model (4-channel latents).
const TAESD = 'https://huggingface.co/madebyollin/taesd/resolve/main/';

// ---- Fields: an empty or malformed number is shown as invalid, never replaced.

const NUMBERS = { seed: 'Seed', steps: 'Steps', guidance: 'Guidance', eta: 'Eta', strength: 'Strength', width: 'Width', height: 'Height' };
/** Why a field's value cannot be used, or '' when it can. */
function fieldProblem(id) {
  const el = $(id), name = NUMBERS[id], v = el.value.trim();
  if (el.closest('[hidden]')) return '';
  if (el.validity.badInput || !Number.isFinite(Number(v))) return `${name} is not a number.`;
  if (v === '') {
    if (id === 'width' || id === 'height') return ''; // the model's size
    return `${name} is empty: enter a number.`;
  }
  const n = Number(v), min = Number(el.min), max = Number(el.max);
  if (el.step !== 'any' && !Number.isInteger(n / Number(el.step))) {
    return el.step === '1' ? `${name} must be a whole number.` : `${name} must be a multiple of ${el.step} (this model's pixels per latent).`;
  }
  // (The size fields' max assumes guidance; a run past what the device holds
  // gets the generator's own message, which knows the settings.)
  if (n < min || (n > max && id !== 'width' && id !== 'height')) return `${name} must be between ${min} and ${max}.`;
  return '';
}
function markField(id) {
  const problem = fieldProblem(id);
  $(id).setAttribute('aria-invalid', problem ? 'true' : 'false');
  $(id).title = problem;
  if (id === 'width' || id === 'height') showSizeNote();
  return problem;
}
for (const id of Object.keys(NUMBERS)) $(id).addEventListener('input', () => markField(id));

// ---- The model: presets, what it needs, its sizes, prompts and guidance.

// What is known of the chosen model: its inspection, then (after a run) what
// the loaded generator says about this device.
let model = { base: '', vae: false, info: null, loaded: null };

// Presets fill in the model URL and the settings that suit that model.
$('preset').addEventListener('change', () => {
  const o = $('preset').selectedOptions[0];
  if (!o.value) { $('model').focus(); return; }
  $('model').value = o.value;
  for (const k of ['steps', 'guidance', 'prompt']) if (o.dataset[k]) $(k).value = o.dataset[k];
  for (const id of ['steps', 'guidance']) markField(id);
  inspect();
});
const presetOf = (base) => [...$('preset').options].find((o) => o.value && o.value === base);
$('model').addEventListener('input', () => {
  const match = presetOf($('model').value);
  $('preset').value = match ? match.value : '';
});
$('model').addEventListener('change', () => inspect());
$('taesd').addEventListener('change', () => inspect());

// The notes and example chips above the buttons follow the chosen model, and
// a new model is chosen by leaving its field: often by pressing Generate,
// whose press blurs the field before the click. Were the notes to change
// between press and release, the button would move away from the pointer and
// the click would be lost, so while a pointer is down they wait for its
// release (and the click that follows it).
let pointerDown = false;
const whenReleased = [];
addEventListener('pointerdown', () => { pointerDown = true; }, true);
for (const type of ['pointerup', 'pointercancel']) {
  addEventListener(type, () => {
    pointerDown = false;
    setTimeout(() => { for (const f of whenReleased.splice(0)) f(); });
  }, true);
}
const afterRelease = (f) => (pointerDown ? whenReleased.push(f) : f());

// What the chosen model needs, read from its configs and weight headers
// before anything large is downloaded (Generator.inspect in the worker).
let inspections = 0;
function inspect() {
  const base = $('model').value.trim();
  model = { base, vae: $('taesd').checked, info: null, loaded: null };
  const id = ++inspections;
  afterRelease(() => {
    if (id !== inspections) return;
    showSizes();
    showGuidance();
    showExamples([], []);
  });
  $('model-info').textContent = base ? 'Checking what this model needs…' : '';
  if (base) generator.post({ type: 'inspect', id, base, vae: $('taesd').checked ? TAESD : null });
}
const gb = (b) => (b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : `${(b / 1e6).toFixed(1)} MB`);
function showInspection(m) {
  if (m.id !== inspections) return; // a later choice replaced this one
  const el = $('model-info');
  el.replaceChildren();
  if (m.error) {
    el.textContent = `This model cannot be used: ${m.error}`;
    return;
  }
  const i = m.info;
  model.info = i;
  showSizes();
  showGuidance();
  showExamples(m.examples ?? [], m.suggestions ?? []);
  checkPrompt();
  const parts = [
    `${gb(i.downloadBytes)} to download (once; then cached)`,
    `${gb(i.weightBytesF32)} of weights once loaded as f32, ${gb(i.weightBytesF16)} as f16`,
    `made for ${i.defaultSize}×${i.defaultSize}`,
    i.cpuFits ? 'fits the CPU path' : `too large for the CPU path (at most ${gb(i.cpuWeightLimit)} of weights): it needs WebGPU`,
  ];
  if (i.guidanceDistilled) parts.push('the guidance scale is an input of this model (no second pass)');
  el.append(parts.join(' · ') + '.');
  if (i.schedulerNote) el.append(` Note: ${i.schedulerNote}.`);
  const o = presetOf($('model').value);
  if (o?.dataset.card) {
    const a = document.createElement('a');
    a.href = o.dataset.card; a.target = '_blank'; a.rel = 'noopener'; a.textContent = 'model card';
    el.append(` Licence: ${o.dataset.license} (`, a, ').');
  }
  startShared();
}

/** Width/height: multiples of the model's pixels per latent, up to what the
 * device holds (known once loaded), its trained size suggested. */
function showSizes() {
  const step = model.loaded?.sizeStep ?? model.info?.sizeStep ?? 8;
  const trained = model.loaded?.defaultSize ?? model.info?.defaultSize;
  const max = model.loaded?.maxSize ?? 2048;
  const sizes = $('sizes');
  sizes.replaceChildren();
  for (const id of ['width', 'height']) {
    Object.assign($(id), { step, min: step, max: Math.max(step, max - (max % step)) });
    $(id).placeholder = trained ? String(trained) : "model's";
    if ($(id).value) markField(id);
  }
  if (trained) {
    for (const f of [0.5, 0.75, 1, 1.5, 2]) {
      const s = Math.round((trained * f) / step) * step;
      if (s >= step && s <= max && ![...sizes.options].some((o) => o.value === String(s))) {
        sizes.append(new Option(f === 1 ? `${s} (trained size)` : String(s), s));
      }
    }
  }
  showSizeNote();
}
function showSizeNote() {
  const trained = model.loaded?.defaultSize ?? model.info?.defaultSize;
  const w = Number($('width').value || trained), h = Number($('height').value || trained);
  let note = '';
  if (model.loaded) note = `At most ${model.loaded.maxSize}×${model.loaded.maxSize} with this model on this device. `;
  if (trained && (w !== trained || h !== trained)) {
    note += `This model was trained at ${trained}×${trained}; ${w}×${h} is outside that and usually gives poorer images.`;
  }
  $('size-info').textContent = note.trim();
}

/** Says what guidance does for this model: distilled models have it baked in. */
function showGuidance() {
  const o = presetOf($('model').value);
  let note = '';
  if (model.info?.guidanceDistilled) {
    note = 'This model takes the guidance scale as an input (guidance-distilled): one pass per step at any scale. Lower gives more variety between seeds, higher follows the prompt more closely.';
  } else if (o?.dataset.baked) {
    note = `Guidance is baked into this model (${o.dataset.baked}): keep ${o.dataset.guidance}. Above 1, each step runs twice and the image washes out.`;
  } else if (model.info) {
    note = 'Guidance above 1 runs each step twice (with and without the prompt) and follows the prompt more closely.';
  }
  $('guidance-info').textContent = note;
}

/** Example chips and autocomplete: the model folder's prompts.json, else the preset's. */
function showExamples(examples, suggestions) {
  const o = presetOf($('model').value);
  if (!examples.length && o?.dataset.examples) examples = o.dataset.examples.split('|');
  $('examples').replaceChildren(...examples.map((e) => {
    const b = document.createElement('button');
    b.type = 'button'; b.textContent = e;
    b.addEventListener('click', () => { $('prompt').value = e; checkPrompt(); });
    return b;
  }));
  $('suggestions').replaceChildren(...suggestions.map((n) => new Option(n)));
}

// What the model will read of the prompt (emoji as names, cut at 77 tokens,
// words it never saw), asked of the worker as the visitor types.
let promptChecks = 0, promptTimer = 0;
function checkPrompt() {
  clearTimeout(promptTimer);
  promptTimer = setTimeout(() => {
    if (model.info) generator.post({ type: 'check-prompt', id: ++promptChecks, base: model.base, prompt: $('prompt').value });
  }, 150);
}
$('prompt').addEventListener('input', checkPrompt);
function showPromptCheck(m) {
  if (m.id !== promptChecks) return;
  const c = m.check, parts = [];
  if (c.text !== $('prompt').value) parts.push(`Read as "${c.text}".`);
  for (const n of c.notes) parts.push(`${n[0].toUpperCase()}${n.slice(1)}.`);
  if (c.hasKnownWord && c.unknownWords.length) parts.push(`Words this model never saw: ${c.unknownWords.slice(0, 8).join(', ')}${c.unknownWords.length > 8 ? ', …' : ''}.`);
  $('prompt-info').textContent = parts.join(' ');
}

// ---- Image modes: inpainting mask, uploads, the image they start from.

// Inpainting mask: painted in red on a canvas over the image; white = repaint.
const maskCtx = () => $('mask').getContext('2d');
let painting = false;
function paint(e) {
  const c = $('mask'), r = c.getBoundingClientRect();
  const x = ((e.clientX - r.left) / r.width) * c.width, y = ((e.clientY - r.top) / r.height) * c.height;
  const rad = (Number($('brush').value) / 512) * Math.max(c.width, c.height);
  const g = maskCtx();
  g.globalCompositeOperation = $('erase').checked ? 'destination-out' : 'source-over';
  g.fillStyle = '#f00';
  g.beginPath(); g.arc(x, y, Math.max(rad, 0.5), 0, 7); g.fill();
}
$('mask').addEventListener('pointerdown', (e) => { painting = true; $('mask').setPointerCapture(e.pointerId); paint(e); });
$('mask').addEventListener('pointermove', (e) => painting && paint(e));
$('mask').addEventListener('pointerup', () => { painting = false; });
$('clear').addEventListener('click', () => maskCtx().clearRect(0, 0, $('mask').width, $('mask').height));
function showModeInfo() {
  const mode = $('mode').value;
  $('mode-info').textContent = mode === 'generate' ? ''
    : hasImage ? (mode === 'inpaint' ? 'Paint over the part of the image to redo.' : 'Starts from the image shown; lower strength keeps more of it.')
      : 'Upload an image (or generate one first): this mode reworks an existing picture.';
}
$('mode').addEventListener('change', () => {
  const mode = $('mode').value;
  document.body.classList.toggle('inpaint', mode === 'inpaint');
  $('image-tools').hidden = mode === 'generate';
  $('strength').value = mode === 'img2img' ? '0.6' : '1';
  $('generate').textContent = { generate: 'Generate', img2img: 'Redo image', inpaint: 'Inpaint' }[mode];
  showModeInfo();
});
$('upload').addEventListener('change', async () => {
  const file = $('upload').files[0];
  if (!file) return;
  let bmp;
  try {
    bmp = await createImageBitmap(file);
  } catch {
    $('error').textContent = `${file.name} is not an image this browser can read; choose a PNG, JPEG or WebP file.`;
    return;
  }
  $('error').textContent = '';
  const { width: w, height: h } = $('out');
  $('out').getContext('2d').drawImage(bmp, 0, 0, w, h);
  maskCtx().clearRect(0, 0, w, h);
  hasImage = true;
  showModeInfo();
});

/** The current image and the mask as RGBA bytes for the worker. */
function imageInputs() {
  const { width: w, height: h } = $('out');
  const image = $('out').getContext('2d').getImageData(0, 0, w, h).data;
  const alpha = maskCtx().getImageData(0, 0, w, h).data;
  const mask = new Uint8Array(w * h * 4);
  let painted = 0;
  for (let i = 0; i < w * h; i++) {
    const v = alpha[i * 4 + 3] > 0 ? 255 : 0;
    painted += v > 0;
    mask.set([v, v, v, 255], i * 4);
  }
  return { w, h, image: new Uint8Array(image), mask, painted };
}

// ---- Settings as one object: for runs, the history and share links.

const SETTINGS = ['model', 'prompt', 'negative', 'seed', 'steps', 'guidance', 'eta', 'width', 'height', 'spacing'];
function currentSettings() {
  const s = Object.fromEntries(SETTINGS.map((id) => [id, $(id).value.trim()]));
  if ($('taesd').checked) s.vae = 'taesd';
  return s;
}
function applySettings(s) {
  for (const id of SETTINGS) $(id).value = s[id] ?? '';
  $('taesd').checked = s.vae === 'taesd';
  const match = presetOf($('model').value);
  $('preset').value = match ? match.value : '';
  for (const id of Object.keys(NUMBERS)) markField(id);
  if ($('model').value.trim() !== model.base || $('taesd').checked !== model.vae) inspect();
  checkPrompt();
}

/** "red heart", 42 → "red-heart-seed42.png" (upscaled: "…-seed42-x4.png") */
function fileName(s) {
  const slug = s.prompt.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, '-').replace(/^-|-$/g, '').slice(0, 60) || 'image';
  return `${slug}-seed${s.seed}${s.upscaled ? '-x4' : ''}.png`;
}

// Share links carry the settings in the fragment (never sent to a server).
function shareUrl(s) {
  const q = new URLSearchParams(Object.entries(s).filter(([, v]) => v !== ''));
  return `${location.origin}${location.pathname}#${q}`;
}
$('share').addEventListener('click', async () => {
  const url = shareUrl(lastRun.saved);
  $('share-url').value = url;
  $('share-url').hidden = false;
  $('share-url').select();
  try {
    await navigator.clipboard.writeText(url);
    $('status').textContent = 'Share link copied.';
  } catch {
    $('status').textContent = 'Share link below: copy it.';
  }
});
/** Settings from a share link, applied at start; the image is made at once
 * when the model is served with this page (a download elsewhere waits for
 * the visitor to press Generate). */
let shared = null;
function readShared() {
  if (!location.hash.includes('=')) return;
  const s = Object.fromEntries(new URLSearchParams(location.hash.slice(1)));
  if (!s.model || !s.prompt) return;
  shared = s;
  applySettings(s);
  $('mode').value = 'generate';
  $('status').textContent = 'Settings from a shared link.';
}
function startShared() {
  if (!shared || shared.model !== $('model').value) return;
  const local = new URL(shared.model, location.href).origin === location.origin;
  shared = null;
  if (local) $('controls').requestSubmit();
  else $('status').textContent = 'Settings from a shared link: press Generate to download the model and make the image.';
}

// ---- History: results kept in IndexedDB, newest first, each restoring its settings.

const HISTORY_MAX = 60;
function historyDb() {
  return new Promise((ok, err) => {
    const r = indexedDB.open('ldw-history', 1);
    r.onupgradeneeded = () => r.result.createObjectStore('images', { keyPath: 'id', autoIncrement: true });
    r.onsuccess = () => ok(r.result);
    r.onerror = () => err(r.error);
  });
}
async function historyDo(mode, f) {
  const db = await historyDb();
  try {
    return await new Promise((ok, err) => {
      const tx = db.transaction('images', mode);
      const out = f(tx.objectStore('images'));
      tx.oncomplete = () => ok(out?.result);
      tx.onerror = () => err(tx.error);
    });
  } finally {
    db.close();
  }
}
async function addToHistory(blob, settings) {
  try {
    await historyDo('readwrite', (st) => st.add({ blob, settings, time: Date.now() }));
    const keys = await historyDo('readonly', (st) => st.getAllKeys());
    if (keys.length > HISTORY_MAX) {
      await historyDo('readwrite', (st) => st.delete(IDBKeyRange.upperBound(keys[keys.length - HISTORY_MAX - 1])));
    }
    await showHistory();
  } catch (e) {
    console.warn('history not kept:', e);
  }
}
async function showHistory() {
  let items = [];
  try { items = await historyDo('readonly', (st) => st.getAll()); } catch { /* private mode */ }
  const strip = $('history');
  for (const img of strip.querySelectorAll('img')) URL.revokeObjectURL(img.src);
  strip.replaceChildren(...items.reverse().map((it) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.title = `${it.settings.prompt} · seed ${it.settings.seed} · ${it.settings.steps} steps`;
    const img = document.createElement('img');
    img.src = URL.createObjectURL(it.blob);
    img.alt = it.settings.prompt;
    b.append(img);
    b.addEventListener('click', () => restore(it));
    return b;
  }));
  $('history-empty').hidden = items.length > 0;
  $('clear-history').hidden = items.length === 0;
}
async function restore(item) {
  applySettings(item.settings);
  $('mode').value = 'generate';
  $('mode').dispatchEvent(new Event('change'));
  const bmp = await createImageBitmap(item.blob);
  resize(bmp.width, bmp.height);
  $('out').getContext('2d').drawImage(bmp, 0, 0);
  hasImage = true;
  lastRun = { ...item.settings, mode: 'generate', saved: item.settings };
  showResultLinks(item.blob);
  $('status').textContent = 'Restored from the history.';
}
$('clear-history').addEventListener('click', async () => {
  try { await historyDo('readwrite', (st) => st.clear()); } catch { /* nothing kept */ }
  await showHistory();
});

function showResultLinks(blob) {
  const a = $('download');
  if (a.href) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(blob);
  a.download = fileName(lastRun);
  a.hidden = false;
  $('share').hidden = false;
  $('share-url').hidden = true;
  $('upscale').hidden = !upscalerFor(lastRun);
}

// ---- Upscaling: a model preset may name an upscaler folder
// (StableDiffusionUpscalePipeline layout) that makes its images 4× larger.

let upscaling = null; // the settings an upscale in progress will show
/** After a failed or cancelled upscale the small image is still shown, with its links. */
function upscaleEnded() {
  if (!upscaling) return;
  upscaling = null;
  for (const id of ['download', 'share']) $(id).hidden = false;
  $('upscale').hidden = !upscalerFor(lastRun);
}
/** The upscaler for the image shown: its model's preset's, if the image has
 * not been upscaled already. */
function upscalerFor(run) {
  if (!run || run.upscaled) return null;
  return presetOf(run.model)?.dataset.upscaler ?? null;
}
$('upscale').addEventListener('click', () => {
  const base = upscalerFor(lastRun);
  if (busy || !base || !hasImage) return;
  runs++;
  $('error').textContent = '';
  for (const id of ['download', 'share', 'share-url', 'upscale']) $(id).hidden = true;
  document.body.dataset.state = 'running';
  setBusy(true);
  const { width: w, height: h } = $('out');
  const image = new Uint8Array($('out').getContext('2d').getImageData(0, 0, w, h).data);
  const s = lastRun.saved;
  // The upscaler's UNet sees the image, not the prompt (no attention), so it
  // runs without guidance; noise level 20 is diffusers' default.
  const options = { prompt: s.prompt, seed: Number(s.seed) || 0, steps: 4, guidanceScale: 1, noiseLevel: 20, width: w, height: h };
  upscaling = { ...lastRun, upscaled: true, saved: { ...s, upscaled: 'x4' } };
  $('status').textContent = 'Upscaling 4×…';
  generator.post({ type: 'generate', role: 'upscale', base, backend: $('backend').value, preview: false, options, image, precision: $('precision').value });
});

// ---- The worker's messages.

function onWorkerMessage({ data: m }) {
  if (m.type === 'download') {
    $('status').textContent = `Downloading ${m.file}: ${(m.loaded / 1e6).toFixed(1)}${m.total ? ` / ${(m.total / 1e6).toFixed(1)}` : ''} MB`;
    $('bar').max = m.total || 1; $('bar').value = m.total ? m.loaded : 0;
  } else if (m.type === 'loaded' && m.role === 'upscale') {
    $('status').textContent = 'Upscaling 4×…';
  } else if (m.type === 'loaded') {
    $('backend-info').textContent = `Running on ${m.backend}.${m.notice ? ` ${m.notice}` : ''}`
      + ` Weights in ${m.precision}: ${gb(m.weightBytes)}.`;
    if (m.base === model.base) model.loaded = m;
    showSizes();
  } else if (m.type === 'step') {
    $('status').textContent = `Denoising: step ${m.done} of ${m.total}`;
    $('bar').max = m.total; $('bar').value = m.done;
    if (m.rgba) { draw(m.rgba, m.width, m.height); if (m.done === 1) showStage(); }
  } else if (m.type === 'result') {
    draw(m.rgba, m.width, m.height);
    hasImage = true;
    showModeInfo();
    showStage();
    if (upscaling) { lastRun = upscaling; upscaling = null; }
    $('status').textContent = lastRun?.upscaled ? `Upscaled to ${m.width}×${m.height}.` : 'Done.';
    const settings = lastRun;
    $('out').toBlob((b) => {
      showResultLinks(b);
      if (settings.mode === 'generate') addToHistory(b, settings.saved);
      setBusy(false);
      document.body.dataset.state = 'done';
    });
  } else if (m.type === 'cancelled') {
    upscaleEnded();
    $('status').textContent = 'Cancelled.';
    setBusy(false);
    document.body.dataset.state = 'cancelled';
  } else if (m.type === 'inspected') {
    afterRelease(() => showInspection(m));
  } else if (m.type === 'prompt-checked') {
    showPromptCheck(m);
  } else if (m.type === 'error') {
    fail(m.message);
    if (m.fatal) generator.restart();
  }
}
/** The worker that runs the model; after a crash, a new one. */
const generator = new ModelWorker(
  () => new Worker(new URL('./worker.js', import.meta.url), { type: 'module' }),
  onWorkerMessage,
  (why) => fail(`The generator crashed (${why || 'no details'}); it has been restarted, so try again.`),
);
// For the recovery test: makes the worker panic on purpose.
window.ldwDebug = {
  trapWorker: () => generator.post({ type: 'debug-trap' }),
  trapPool: () => generator.post({ type: 'debug-trap-pool' }),
};

$('controls').addEventListener('submit', (e) => {
  e.preventDefault();
  if (busy) return;
  runs++;
  $('error').textContent = '';
  $('download').hidden = true;
  $('share').hidden = true;
  $('share-url').hidden = true;
  $('upscale').hidden = true;
  document.body.dataset.state = 'running';
  setBusy(true);
  // An empty or unreadable number field is an error, never a silent 0.
  const problems = Object.keys(NUMBERS).map(markField).filter(Boolean);
  if (problems.length) {
    fail(problems.join(' '));
    return;
  }
  const num = (id) => Number($(id).value);
  const options = {
    prompt: $('prompt').value, negativePrompt: $('negative').value, seed: num('seed'),
    steps: num('steps'), guidanceScale: num('guidance'), eta: num('eta'),
  };
  if ($('spacing').value) options.timestepSpacing = $('spacing').value;
  for (const k of ['width', 'height']) if ($(k).value) options[k] = num(k);
  let image = null, mask = null;
  const mode = $('mode').value;
  if (mode !== 'generate') {
    if (!hasImage) {
      fail('There is no image to start from: upload one (Image) or generate one first.');
      return;
    }
    const inp = imageInputs();
    if (mode === 'inpaint' && !inp.painted) {
      fail('Paint over the part of the image to redo first.');
      return;
    }
    Object.assign(options, { width: inp.w, height: inp.h, strength: num('strength') });
    image = inp.image;
    if (mode === 'inpaint') mask = inp.mask;
  }
  const saved = currentSettings();
  lastRun = { ...saved, mode, saved };
  generator.post({
    type: 'generate', base: $('model').value.trim(), backend: $('backend').value, preview: true, options, image, mask,
    vae: $('taesd').checked ? TAESD : null, precision: $('precision').value,
  });
});
// Cancel stops between steps; a step that does not finish within 3 s (a huge
// size on the CPU, say) is stopped by replacing the worker.
function cancel() {
  if (!busy) return;
  generator.post({ type: 'cancel' });
  const run = runs;
  setTimeout(() => {
    if (!busy || run !== runs) return;
    generator.restart();
    upscaleEnded();
    $('status').textContent = 'Cancelled (the generator was restarted to stop a long step).';
    setBusy(false);
    document.body.dataset.state = 'cancelled';
  }, 3000);
}
$('cancel').addEventListener('click', cancel);
addEventListener('keydown', (e) => { if (e.key === 'Escape') cancel(); });
$('dice').addEventListener('click', () => {
  $('seed').value = crypto.getRandomValues(new Uint32Array(1))[0];
  markField('seed');
});

if (!navigator.gpu) {
  $('backend-info').textContent = 'This browser does not offer WebGPU, so images will be made on the CPU. '
    + 'A recent Chrome, Edge or Safari with WebGPU enabled can use the GPU.';
}
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('sw.js').catch((e) => console.warn('no offline support:', e));
}
readShared();
if (!model.base) inspect();
fitStage();
showHistory();
if (!shared) $('status').textContent = 'Ready.';
document.body.dataset.ready = 'true';
