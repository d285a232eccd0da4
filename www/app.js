// The page: collects options, talks to the worker, draws progress and images.
const $ = (id) => document.getElementById(id);
let worker = null;
let busy = false;
let runs = 0; // counts submitted runs, so a late cancel timer spares the next one

/** Starts the worker that runs the model. After a trap (a Rust panic or a
 * wasm fault) its module cannot be trusted, so it is replaced by a new one. */
function startWorker() {
  worker?.terminate();
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = onWorkerMessage;
  worker.onerror = (e) => {
    e.preventDefault?.();
    fail(`The generator crashed (${e.message || 'no details'}); it has been restarted, so try again.`);
    startWorker();
  };
}

function fail(message) {
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
}

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

// Presets fill in the model URL and the settings that suit that model.
$('preset').addEventListener('change', () => {
  const o = $('preset').selectedOptions[0];
  if (!o.value) { $('model').focus(); return; }
  $('model').value = o.value;
  for (const k of ['steps', 'guidance', 'prompt']) if (o.dataset[k]) $(k).value = o.dataset[k];
  inspect();
});
$('model').addEventListener('input', () => {
  const match = [...$('preset').options].find((o) => o.value && o.value === $('model').value);
  $('preset').value = match ? match.value : '';
});
$('model').addEventListener('change', () => inspect());
$('taesd').addEventListener('change', () => inspect());

// What the chosen model needs, read from its configs and weight headers
// before anything large is downloaded (Generator.inspect in the worker).
let inspections = 0;
function inspect() {
  const base = $('model').value.trim();
  $('model-info').textContent = base ? 'Checking what this model needs…' : '';
  if (base) worker.postMessage({ type: 'inspect', id: ++inspections, base, vae: $('taesd').checked ? TAESD : null });
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
  const parts = [
    `${gb(i.downloadBytes)} to download (once; then cached)`,
    `${gb(i.weightBytesF32)} of weights once loaded (f32)`,
    `made for ${i.defaultSize}×${i.defaultSize}`,
    i.cpuFits ? 'fits the CPU path' : `too large for the CPU path (at most ${gb(i.cpuWeightLimit)} of weights): it needs WebGPU`,
  ];
  if (i.guidanceDistilled) parts.push('guidance is distilled into this model (no second pass)');
  el.append(parts.join(' · ') + '.');
  if (i.schedulerNote) el.append(` Note: ${i.schedulerNote}.`);
  const o = $('preset').selectedOptions[0];
  if (o?.value && o.value === $('model').value && o.dataset.card) {
    const a = document.createElement('a');
    a.href = o.dataset.card; a.target = '_blank'; a.rel = 'noopener'; a.textContent = 'model card';
    el.append(` Licence: ${o.dataset.license} (`, a, ').');
  }
}

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
$('mode').addEventListener('change', () => {
  const mode = $('mode').value;
  document.body.classList.toggle('inpaint', mode === 'inpaint');
  $('image-tools').hidden = mode === 'generate';
  $('strength').value = mode === 'img2img' ? '0.6' : '1';
  $('generate').textContent = { generate: 'Generate', img2img: 'Redo image', inpaint: 'Inpaint' }[mode];
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

function onWorkerMessage({ data: m }) {
  if (m.type === 'download') {
    $('status').textContent = `Downloading ${m.file}: ${(m.loaded / 1e6).toFixed(1)}${m.total ? ` / ${(m.total / 1e6).toFixed(1)}` : ''} MB`;
    $('bar').max = m.total || 1; $('bar').value = m.total ? m.loaded : 0;
  } else if (m.type === 'loaded') {
    $('backend-info').textContent = `Running on ${m.backend}.${m.notice ? ` ${m.notice}` : ''}`;
    // The largest size this model can make on this device.
    for (const id of ['width', 'height']) $(id).max = m.maxSize;
    $('width').title = $('height').title = `at most ${m.maxSize} with this model on this device`;
  } else if (m.type === 'step') {
    $('status').textContent = `Denoising: step ${m.done} of ${m.total}`;
    $('bar').max = m.total; $('bar').value = m.done;
    if (m.rgba) { draw(m.rgba, m.width, m.height); if (m.done === 1) showStage(); }
  } else if (m.type === 'result') {
    draw(m.rgba, m.width, m.height);
    showStage();
    $('status').textContent = 'Done.';
    $('out').toBlob((b) => { $('download').href = URL.createObjectURL(b); $('download').hidden = false; });
    setBusy(false);
    document.body.dataset.state = 'done';
  } else if (m.type === 'cancelled') {
    $('status').textContent = 'Cancelled.';
    setBusy(false);
    document.body.dataset.state = 'cancelled';
  } else if (m.type === 'inspected') {
    showInspection(m);
  } else if (m.type === 'error') {
    fail(m.message);
    if (m.fatal) startWorker();
  }
}
startWorker();
// For the recovery test: makes the worker panic on purpose.
window.ldwDebug = { trapWorker: () => worker.postMessage({ type: 'debug-trap' }) };

$('controls').addEventListener('submit', (e) => {
  e.preventDefault();
  if (busy) return;
  runs++;
  $('error').textContent = '';
  $('download').hidden = true;
  document.body.dataset.state = 'running';
  setBusy(true);
  // An empty or unreadable number field is an error, never a silent 0.
  const names = { seed: 'Seed', steps: 'Steps', guidance: 'Guidance', eta: 'Eta', strength: 'Strength' };
  const empty = Object.keys(names).find((id) => $(id).value.trim() === '' && !(id === 'strength' && $('mode').value === 'generate'));
  if (empty) {
    fail(`${names[empty]} is empty or not a number: enter a number.`);
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
    const inp = imageInputs();
    if (mode === 'inpaint' && !inp.painted) {
      fail('Paint over the part of the image to redo first.');
      return;
    }
    Object.assign(options, { width: inp.w, height: inp.h, strength: num('strength') });
    image = inp.image;
    if (mode === 'inpaint') mask = inp.mask;
  }
  worker.postMessage({
    type: 'generate', base: $('model').value, backend: $('backend').value, preview: true, options, image, mask,
    vae: $('taesd').checked ? TAESD : null,
  });
});
// Cancel stops between steps; a step that does not finish within 3 s (a huge
// size on the CPU, say) is stopped by replacing the worker.
$('cancel').addEventListener('click', () => {
  worker.postMessage({ type: 'cancel' });
  const run = runs;
  setTimeout(() => {
    if (!busy || run !== runs) return;
    startWorker();
    $('status').textContent = 'Cancelled (the generator was restarted to stop a long step).';
    setBusy(false);
    document.body.dataset.state = 'cancelled';
  }, 3000);
});
$('dice').addEventListener('click', () => { $('seed').value = Math.floor(Math.random() * 2 ** 32); });

if (!navigator.gpu) {
  $('backend-info').textContent = 'This browser does not offer WebGPU, so images will be made on the CPU. '
    + 'A recent Chrome, Edge or Safari with WebGPU enabled can use the GPU.';
}
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('sw.js').catch((e) => console.warn('no offline support:', e));
}
inspect();
$('status').textContent = 'Ready.';
document.body.dataset.ready = 'true';
