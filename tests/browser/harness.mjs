// Shared pieces of the browser tests: a static server on 127.0.0.1 and
// Debian's chromium in headless mode (flags from shared/STACK.md).
import { createServer } from 'node:http';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';

export const ROOT = new URL('../../', import.meta.url).pathname;

const TYPES = {
  '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.wasm': 'application/wasm', '.json': 'application/json', '.png': 'image/png',
};

/** Serves `dir` (relative to the repo root) on a free loopback port. Paths
 * under /models/corrupt/ serve /models/tiny-random/ with every .safetensors
 * file cut in half, for the corrupted-download tests. */
export async function serve(dir = 'www') {
  const base = join(ROOT, dir);
  const server = createServer(async (req, res) => {
    let path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    const corrupt = path.startsWith('/models/corrupt/');
    if (corrupt) path = path.replace('/models/corrupt/', '/models/tiny-random/');
    const file = join(base, path.endsWith('/') ? path + 'index.html' : path);
    if (!file.startsWith(base)) { res.writeHead(403).end(); return; }
    try {
      let body = await readFile(file);
      if (corrupt && file.endsWith('.safetensors')) body = body.subarray(0, body.length >> 1);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' }).end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    close: () => { server.closeAllConnections(); server.close(); },
  };
}

/** Launches Debian's chromium headless with WebGPU on its software adapter. */
export async function launch() {
  const userDataDir = await mkdtemp(join(tmpdir(), 'ldw-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'],
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
export async function openPage(dir, path) {
  const server = await serve(dir);
  const browser = await launch();
  const page = await browser.context.newPage();
  await page.goto(server.url + path);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
  return { server, browser, page, close: async () => { await browser.close(); server.close(); } };
}
