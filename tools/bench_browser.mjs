// Times a whole generation with the shipped model in headless Debian chromium:
// WebGPU (on this machine: SwiftShader, a software adapter) vs the wasm CPU
// fallback (Burn flex, one thread). Median of 5 after 1 warm-up, seeds 0..5.
// Needs ./build.sh wasm first. An argument picks one backend.
//   node tools/bench_browser.mjs [webgpu|cpu]
import { openPage } from '../tests/browser/harness.mjs';

const ctx = await openPage('www', '');
try {
  const only = process.argv[2];
  const rows = await ctx.page.evaluate(async (backends) => {
    const m = await import('./pkg/latent_diffusion_web.js');
    await m.default();
    const out = [];
    for (const backend of backends) {
      const t0 = performance.now();
      const g = await m.Generator.fromUrl('models/emoji-4step/', backend);
      const load = performance.now() - t0;
      const times = [];
      for (let seed = 0; seed < 6; seed++) {
        const t = performance.now();
        await g.generate({ prompt: 'red heart', seed, steps: 4, guidanceScale: 1 });
        if (seed > 0) times.push(performance.now() - t);
      }
      times.sort((a, b) => a - b);
      out.push({ backend: g.backend, loadMs: Math.round(load), generateMs: Math.round(times[2]) });
      g.free();
    }
    return out;
  }, only ? [only] : ['webgpu', 'cpu']);
  const cpus = (await import('node:os')).cpus();
  console.log(`machine: ${cpus.length} cores, ${cpus[0].model}; chromium headless`);
  for (const r of rows) console.log(JSON.stringify(r));
} finally {
  await ctx.close();
}
