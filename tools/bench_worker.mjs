// One of our engines for tools/bench_ort.mjs, in a dedicated worker as the
// page runs it (the threaded module's caller must be allowed to block,
// which the page's main thread is not).
// In:  {pkg, backend, threads, model, steps} once, then {seed, prompt} per image.
// Out: {backend} once, then {text, step, decode, total, rgba} per image.
let g = null;
let steps = 0;
onmessage = async ({ data }) => {
  try {
    if (!g) {
      const m = await import(data.pkg);
      await m.default();
      if (m.initThreadPool) await m.initThreadPool(data.threads);
      g = await m.Generator.fromUrl(`/models/${data.model}/`, data.backend);
      steps = data.steps;
      postMessage({ backend: g.backend });
      return;
    }
    const t0 = performance.now();
    g.start({ prompt: data.prompt, seed: data.seed, steps, guidanceScale: 1 });
    const t1 = performance.now();
    const step = [];
    while (g.stepsDone() < g.totalSteps()) {
      const s = performance.now();
      g.step();
      step.push(performance.now() - s);
    }
    const t2 = performance.now();
    const rgba = await g.result();
    const t3 = performance.now();
    postMessage({ text: t1 - t0, step, decode: t3 - t2, total: t3 - t0, rgba: Array.from(rgba) });
  } catch (e) {
    postMessage({ error: String(e?.stack ?? e) });
  }
};
