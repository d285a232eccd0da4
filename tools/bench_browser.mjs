// Times a whole generation with the shipped model in headless Debian chromium:
// WebGPU (on this machine: SwiftShader, a software adapter) vs the wasm CPU
// fallback (Burn flex, one thread). Median of 5 after 1 warm-up, seeds 0..5.
// Needs ./build.sh wasm first. An argument picks one backend; "upscale" after
// it also times the 4x upscaler (www/models/emoji-upscaler, 4 steps) on the
// 64x64 image, median of 3 after 1 warm-up.
//   node tools/bench_browser.mjs [webgpu|cpu] [upscale]
import { openPage } from '../tests/browser/harness.mjs';

const ctx = await openPage('www', '');
try {
  const only = ['webgpu', 'cpu'].includes(process.argv[2]) ? process.argv[2] : null;
  const upscale = process.argv.includes('upscale');
  const rows = await ctx.page.evaluate(async ([backends, upscale]) => {
    const m = await import('./pkg/latent_diffusion_web.js');
    await m.default();
    const out = [];
    for (const backend of backends) {
      const t0 = performance.now();
      const g = await m.Generator.fromUrl('models/emoji-4step/', backend);
      const load = performance.now() - t0;
      const times = [];
      let image;
      for (let seed = 0; seed < 6; seed++) {
        const t = performance.now();
        image = await g.generate({ prompt: 'red heart', seed, steps: 4, guidanceScale: 1 });
        if (seed > 0) times.push(performance.now() - t);
      }
      times.sort((a, b) => a - b);
      const row = { backend: g.backend, loadMs: Math.round(load), generateMs: Math.round(times[2]) };
      g.free();
      if (upscale) {
        const u = await m.Generator.fromUrl('models/emoji-upscaler/', backend);
        const ups = [];
        for (let seed = 0; seed < 4; seed++) {
          const t = performance.now();
          await u.generate({ seed, steps: 4, guidanceScale: 1, noiseLevel: 20, width: 64, height: 64 }, image, null);
          if (seed > 0) ups.push(performance.now() - t);
        }
        ups.sort((a, b) => a - b);
        row.upscaleMs = Math.round(ups[1]);
        u.free();
      }
      out.push(row);
    }
    return out;
  }, [only ? [only] : ['webgpu', 'cpu'], upscale]);
  const cpus = (await import('node:os')).cpus();
  console.log(`machine: ${cpus.length} cores, ${cpus[0].model}; chromium headless`);
  for (const r of rows) console.log(JSON.stringify(r));
} finally {
  await ctx.close();
}
