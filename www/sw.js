// Service worker: keeps the app shell so the page works offline after one
// visit. Network first (so a rebuild is picked up), the cache when offline.
// Model weights are cached by worker.js in their own cache.
const SHELL = 'ldw-shell-v1';
const FILES = ['./', 'index.html', 'app.js', 'panic-watch.js', 'worker.js', 'style.css', 'schedules.html', 'schedules.js',
  'learn.html', 'learn.js', 'learn.css', 'learn/example.png',
  'pkg/latent_diffusion_web.js', 'pkg/latent_diffusion_web_bg.wasm'];

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(SHELL).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

// Weight caches of earlier versions (the crate's default cache is named by
// version, since cached files are used without revalidation): v1 held the
// emoji model before its guidance became an input, v2 before its text
// encoder read unseen words as their nearest trained word.
const OLD_MODEL_CACHES = ['ldw-models-v1', 'ldw-models-v2'];

self.addEventListener('activate', (e) => e.waitUntil(
  Promise.all(OLD_MODEL_CACHES.map((c) => caches.delete(c))).then(() => self.clients.claim())));

// The app's files go out cross-origin isolated (COOP/COEP), so that on a
// host that does not send those headers the page still gets
// SharedArrayBuffer, and with it the threaded CPU module, from the second
// visit on (the first is not yet under this worker). Its only cross-origin
// requests are the weights, fetched with CORS, which isolation allows.
function isolated(res) {
  if (res.type === 'opaque' || res.type === 'opaqueredirect') return res;
  const headers = new Headers(res.headers);
  if (!headers.has('cross-origin-opener-policy')) headers.set('cross-origin-opener-policy', 'same-origin');
  if (!headers.has('cross-origin-embedder-policy')) headers.set('cross-origin-embedder-policy', 'require-corp');
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
}

self.addEventListener('fetch', (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== 'GET' || url.origin !== self.location.origin || url.pathname.includes('/models/')) return;
  e.respondWith((async () => {
    const cache = await caches.open(SHELL);
    try {
      const res = await fetch(e.request);
      if (res.ok) await cache.put(e.request, res.clone());
      return isolated(res);
    } catch (err) {
      const hit = await cache.match(e.request, { ignoreSearch: true });
      if (hit) return isolated(hit);
      throw err;
    }
  })());
});
