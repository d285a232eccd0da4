// Shared pieces of the browser tests: a static server on 127.0.0.1 and
// Debian's chromium in headless mode (flags from shared/STACK.md).
import { createServer } from 'node:http';
import { readFile, mkdtemp, rm, stat } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { extname, join, normalize } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';

export const ROOT = new URL('../../', import.meta.url).pathname;

const TYPES = {
  '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.wasm': 'application/wasm', '.json': 'application/json', '.png': 'image/png',
  '.onnx': 'application/octet-stream',
};

/** Serves `dir` (relative to the repo root) on a free loopback port. Paths
 * under /models/corrupt/ serve /models/tiny-random/ with every .safetensors
 * file cut in half, for the corrupted-download tests; /stall/<path> serves
 * <path> with weight files that stop mid-body and hang. `mounts` maps a URL
 * prefix (e.g. '/big/') to an absolute folder whose files are streamed from
 * disk (full-size models). `cors`: every response allows any origin.
 * `isolate`: every response carries COOP/COEP, so the page is cross-origin
 * isolated (SharedArrayBuffer, wasm threads). `requests` lists the paths
 * asked for. */
export async function serve(dir = 'www', mounts = {}, { cors = false, isolate = false } = {}) {
  const base = join(ROOT, dir);
  const requests = [];
  const server = createServer(async (req, res) => {
    let path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    requests.push(path);
    // Another origin's page may load this one's files (the widget test).
    if (cors) res.setHeader('access-control-allow-origin', '*');
    if (isolate) {
      res.setHeader('cross-origin-opener-policy', 'same-origin');
      res.setHeader('cross-origin-embedder-policy', 'require-corp');
    }
    for (const [prefix, folder] of Object.entries(mounts)) {
      if (!path.startsWith(prefix)) continue;
      const file = join(folder, path.slice(prefix.length));
      if (!file.startsWith(folder)) { res.writeHead(403).end(); return; }
      try {
        const { size } = await stat(file);
        res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'content-length': size });
        createReadStream(file).pipe(res);
      } catch {
        res.writeHead(404).end('not found');
      }
      return;
    }
    // /stall/<path>: <path>, but a .safetensors body stops after 100 bytes and hangs.
    const stall = path.startsWith('/stall/');
    if (stall) path = path.slice('/stall'.length);
    const corrupt = path.startsWith('/models/corrupt/');
    if (corrupt) path = path.replace('/models/corrupt/', '/models/tiny-random/');
    const file = join(base, path.endsWith('/') ? path + 'index.html' : path);
    if (!file.startsWith(base)) { res.writeHead(403).end(); return; }
    try {
      let body = await readFile(file);
      if (corrupt && file.endsWith('.safetensors')) body = body.subarray(0, body.length >> 1);
      if (stall && file.endsWith('.safetensors')) {
        res.writeHead(200, { 'content-length': body.length });
        res.write(body.subarray(0, 100));
        return; // never ends
      }
      res.writeHead(200, {
        'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'content-length': body.length,
      }).end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    requests,
    close: () => { server.closeAllConnections(); server.close(); },
  };
}

/** Launches Debian's chromium headless with WebGPU on its software adapter
 * (`webgpu: false` leaves the flag out: no adapter, as on a browser without a
 * usable GPU). */
export async function launch({ webgpu = true } = {}) {
  const userDataDir = await mkdtemp(join(tmpdir(), 'ldw-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', ...(webgpu ? ['--enable-unsafe-webgpu'] : [])],
  });
  const errors = [];
  context.on('weberror', (e) => errors.push(String(e.error())));
  return {
    context, errors,
    close: async () => { await context.close(); await rm(userDataDir, { recursive: true, force: true }); },
  };
}

/** Serves `dir`, opens `path` in a fresh browser and waits for the page's
 * `data-ready`. Returns { server, browser, page }; `close()` ends both. */
export async function openPage(dir, path, options, serveOptions) {
  const server = await serve(dir, {}, serveOptions);
  const browser = await launch(options);
  const page = await browser.context.newPage();
  await page.goto(server.url + path);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
  return { server, browser, page, close: async () => { await browser.close(); server.close(); } };
}

/** One image of a fixture file written by tools/make_pipeline_fixtures.py:
 * CHW float32 in [0, 1]. */
export async function expectedImage(fixture, name) {
  const buf = await readFile(`${ROOT}tests/fixtures/pipelines/${fixture}/expected.safetensors`);
  const n = Number(buf.readBigUInt64LE(0));
  const [s, e] = JSON.parse(buf.subarray(8, 8 + n).toString())[name].data_offsets;
  const d = buf.subarray(8 + n + s, 8 + n + e);
  return new Float32Array(d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength));
}

/** The largest difference in 8-bit levels between RGBA bytes and a CHW
 * [0, 1] image of `size` × `size`. */
export function levelDiff(rgba, want, size) {
  const px = size * size;
  let worst = 0;
  for (let i = 0; i < px; i++) {
    for (let c = 0; c < 3; c++) worst = Math.max(worst, Math.abs(rgba[i * 4 + c] - Math.round(want[c * px + i] * 255)));
  }
  return worst;
}

/** The largest difference in 8-bit levels between the page's output canvas
 * and a fixture image of `size` × `size`. */
export async function worstLevel(page, fixture, name, size) {
  const rgba = await page.evaluate((n) => Array.from(
    document.getElementById('out').getContext('2d').getImageData(0, 0, n, n).data), size);
  return levelDiff(rgba, await expectedImage(fixture, name), size);
}

/** Fills the page's fields, presses Generate and waits for the end state. */
export async function runPage(page, settings) {
  for (const [id, v] of Object.entries(settings)) await page.fill(`#${id}`, String(v));
  await page.click('#generate');
  await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(document.body.dataset.state),
    null, { timeout: 300_000 });
  return page.evaluate(() => document.body.dataset.state);
}
