// The page: collects options, talks to the worker, draws progress and images.
const $ = (id) => document.getElementById(id);
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
let busy = false;

function setBusy(b) {
  busy = b;
  $('generate').disabled = b;
  $('cancel').disabled = !b;
}

function draw(rgba, size) {
  const c = $('out');
  c.width = size; c.height = size;
  c.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba), size, size), 0, 0);
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
  worker.postMessage({
    type: 'generate',
    base: $('model').value,
    preview: true,
    options: {
      prompt: $('prompt').value, negativePrompt: $('negative').value, seed: num('seed'),
      steps: num('steps'), guidanceScale: num('guidance'), eta: num('eta'),
    },
  });
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
