// The threaded CPU module's Web Workers (src/cpu_pool.rs, initThreadPool).
// This file is both the module's helper, imported by its JS, and the script
// of each pool worker: such a worker instantiates the module on the shared
// memory and runs one thread of the pool, for good.
const NAME = 'ldw-cpu-pool';

if (typeof WorkerGlobalScope !== 'undefined' && self.name === NAME) {
  self.addEventListener('message', async ({ data }) => {
    try {
      const pkg = await import(data.mainJS);
      await pkg.default({ module_or_path: data.module, memory: data.memory });
      postMessage({ ready: true });
      pkg.cpuPoolWorker();
    } catch (e) {
      postMessage({ ready: false, error: String(e?.message ?? e) });
    }
  }, { once: true });
}

// Kept referenced while they run (Firefox collects workers nobody holds).
let workers = [];

/** Starts `count` pool workers and resolves once each has the module. */
export async function startWorkers(module, memory, mainJS, count) {
  if (count === 0) return;
  // From a blob: a worker's script must come from the page's origin, and
  // this file may be served from another (a CDN).
  const script = await fetch(import.meta.url).then((r) => {
    if (!r.ok) throw new Error(`${import.meta.url}: HTTP ${r.status}`);
    return r.blob();
  });
  const url = URL.createObjectURL(new Blob([script], { type: 'text/javascript' }));
  const started = Array.from({ length: count }, () => new Worker(url, { type: 'module', name: NAME }));
  try {
    await Promise.all(started.map((w) => new Promise((ok, fail) => {
      w.onmessage = ({ data }) => {
        w.onmessage = null;
        w.onerror = null;
        if (data.ready) ok();
        else fail(new Error(data.error));
      };
      w.onerror = (e) => fail(new Error(e.message || 'the worker script failed to load'));
      w.postMessage({ module, memory, mainJS });
    })));
    workers = started;
  } catch (e) {
    for (const w of started) w.terminate(); // the pool will not start
    throw e;
  } finally {
    URL.revokeObjectURL(url);
  }
}
