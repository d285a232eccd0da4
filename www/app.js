// The page: collects options, talks to the worker, draws progress and images.
const $ = (id) => document.getElementById(id);
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
let busy = false;

function setBusy(b) {
  busy = b;
  $('generate').disabled = b;
  $('cancel').disabled = !b;
}

function resize(size) {
  for (const id of ['out', 'mask']) {
    const c = $(id);
    if (c.width !== size) { c.width = size; c.height = size; }
  }
}

function draw(rgba, size) {
  resize(size);
  $('out').getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba), size, size), 0, 0);
}

// Inpainting mask: painted in red on a canvas over the image; white = repaint.
const maskCtx = () => $('mask').getContext('2d');
let painting = false;
function paint(e) {
  const c = $('mask'), r = c.getBoundingClientRect();
  const x = ((e.clientX - r.left) / r.width) * c.width, y = ((e.clientY - r.top) / r.height) * c.height;
  const rad = (Number($('brush').value) / 512) * c.width;
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
  const inpaint = $('mode').value === 'inpaint';
  document.body.classList.toggle('inpaint', inpaint);
  $('inpaint-tools').hidden = !inpaint;
  $('generate').textContent = inpaint ? 'Inpaint' : 'Generate';
});
$('upload').addEventListener('change', async () => {
  const file = $('upload').files[0];
  if (!file) return;
  const bmp = await createImageBitmap(file);
  const size = $('out').width;
  $('out').getContext('2d').drawImage(bmp, 0, 0, size, size);
  maskCtx().clearRect(0, 0, size, size);
});

/** The image and the mask as RGBA bytes for the worker. */
function inpaintInputs() {
  const size = $('out').width;
  const image = $('out').getContext('2d').getImageData(0, 0, size, size).data;
  const alpha = maskCtx().getImageData(0, 0, size, size).data;
  const mask = new Uint8Array(size * size * 4);
  let painted = 0;
  for (let i = 0; i < size * size; i++) {
    const v = alpha[i * 4 + 3] > 0 ? 255 : 0;
    painted += v > 0;
    mask.set([v, v, v, 255], i * 4);
  }
  return { size, image: new Uint8Array(image), mask, painted };
}

worker.onmessage = ({ data: m }) => {
  if (m.type === 'download') {
    $('status').textContent = `Downloading ${m.file}: ${(m.loaded / 1e6).toFixed(1)}${m.total ? ` / ${(m.total / 1e6).toFixed(1)}` : ''} MB`;
    $('bar').max = m.total || 1; $('bar').value = m.total ? m.loaded : 0;
  } else if (m.type === 'step') {
    $('status').textContent = `Denoising: step ${m.done} of ${m.total}`;
    $('bar').max = m.total; $('bar').value = m.done;
    if (m.rgba) draw(m.rgba, m.size);
  } else if (m.type === 'result') {
    draw(m.rgba, m.size);
    $('status').textContent = 'Done.';
    $('out').toBlob((b) => { $('download').href = URL.createObjectURL(b); $('download').hidden = false; });
    setBusy(false);
    document.body.dataset.state = 'done';
  } else if (m.type === 'cancelled') {
    $('status').textContent = 'Cancelled.';
    setBusy(false);
    document.body.dataset.state = 'cancelled';
  } else if (m.type === 'error') {
    $('error').textContent = m.message;
    $('status').textContent = 'Failed.';
    setBusy(false);
    document.body.dataset.state = 'error';
  }
};
worker.onerror = (e) => {
  $('error').textContent = `The worker failed: ${e.message}`;
  setBusy(false);
  document.body.dataset.state = 'error';
};

$('controls').addEventListener('submit', (e) => {
  e.preventDefault();
  if (busy) return;
  $('error').textContent = '';
  $('download').hidden = true;
  document.body.dataset.state = 'running';
  setBusy(true);
  const num = (id) => Number($(id).value);
  const options = {
    prompt: $('prompt').value, negativePrompt: $('negative').value, seed: num('seed'),
    steps: num('steps'), guidanceScale: num('guidance'), eta: num('eta'),
  };
  let image = null, mask = null;
  if ($('mode').value === 'inpaint') {
    const inp = inpaintInputs();
    if (!inp.painted) {
      $('error').textContent = 'Paint over the part of the image to redo first.';
      setBusy(false);
      document.body.dataset.state = 'error';
      return;
    }
    Object.assign(options, { width: inp.size, height: inp.size, strength: num('strength') });
    ({ image, mask } = inp);
  }
  worker.postMessage({ type: 'generate', base: $('model').value, preview: true, options, image, mask });
});
$('cancel').addEventListener('click', () => worker.postMessage({ type: 'cancel' }));
$('dice').addEventListener('click', () => { $('seed').value = Math.floor(Math.random() * 2 ** 32); });

if (!navigator.gpu) {
  $('error').textContent = 'This browser does not offer WebGPU, which the generator needs. '
    + 'Try a recent Chrome, Edge or Safari, or enable WebGPU in your browser settings.';
}
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('sw.js').catch((e) => console.warn('no offline support:', e));
}
$('status').textContent = 'Ready.';
document.body.dataset.ready = 'true';
