import init, { ddimTimesteps, alphasCumprod, gaussianNoise, randomSeed, version } from './pkg/latent_diffusion_web.js';

const $ = (id) => document.getElementById(id);

function config() {
  const schedule = $('beta_schedule').value;
  const c = { beta_schedule: schedule, timestep_spacing: $('timestep_spacing').value,
    rescale_betas_zero_snr: $('zero_snr').checked };
  if (schedule === 'scaled_linear') Object.assign(c, { beta_start: 0.00085, beta_end: 0.012, steps_offset: 1 });
  return JSON.stringify(c);
}

function plot(alphas, steps) {
  const cv = $('plot'), g = cv.getContext('2d'), w = cv.width, h = cv.height, T = alphas.length;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = '#3366cc'; g.lineWidth = 2; g.beginPath();
  alphas.forEach((a, t) => { const x = (t / (T - 1)) * w, y = h - a * (h - 10) - 5; t ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke();
  g.fillStyle = '#cc3333';
  for (const t of steps) { const x = (t / (T - 1)) * w, y = h - alphas[t] * (h - 10) - 5; g.beginPath(); g.arc(x, y, 4, 0, 7); g.fill(); }
}

function update() {
  $('error').textContent = '';
  try {
    const cfg = config();
    const steps = ddimTimesteps(cfg, Number($('steps').value));
    $('timesteps').textContent = Array.from(steps).join(', ');
    plot(alphasCumprod(cfg), steps);
  } catch (e) {
    $('error').textContent = e.message ?? String(e);
  }
}

function showNoise() {
  const v = gaussianNoise(BigInt($('seed').value || 0), 6);
  $('noise').textContent = Array.from(v, (x) => x.toFixed(4)).join(', ');
}

await init();
$('version').textContent = version();
$('sched').addEventListener('input', update);
$('seed').addEventListener('input', showNoise);
$('dice').addEventListener('click', () => { $('seed').value = randomSeed(); showNoise(); });
update();
showNoise();
document.body.dataset.ready = 'true';
