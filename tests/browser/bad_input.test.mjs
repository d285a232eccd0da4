// The bad-input corpus (tests/fixtures/bad_input/corpus.json) through the JS
// API in headless Chromium, on the CPU path: each folder case is served
// edited from 127.0.0.1 and loaded with Generator.fromUrl, each options case
// runs generate() on one Generator kept through all of them (which must work
// after each), each host case misbehaves as it says. Every case must reject with a message holding its fragment (or
// succeed where it says ok) within a time limit, never trap; after each, a
// good run must work on the same page. The native twin is tests/bad_input.rs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFile, readdir } from 'node:fs/promises';
import { join, extname } from 'node:path';
import { ROOT, launch } from './harness.mjs';

const corpus = JSON.parse(await readFile(join(ROOT, 'tests/fixtures/bad_input/corpus.json'), 'utf8'));
const TINY = join(ROOT, 'tests/fixtures/pipelines/tiny');

/** The tiny folder's files (symlinks read through). */
async function goodFiles() {
  const files = {};
  for (const sub of ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler']) {
    for (const f of await readdir(join(TINY, sub))) files[`${sub}/${f}`] = await readFile(join(TINY, sub, f));
  }
  files['model_index.json'] = await readFile(join(TINY, 'model_index.json'));
  return files;
}

const hex = (s) => Buffer.from(s, 'hex');
const headerLen = (b) => Number(b.readBigUInt64LE(0));

/** A safetensors file split into `n` shards by key order, with its index, as
 * diffusers saves a large checkpoint (the same as tests/common/mod.rs). */
function shard(path, bytes, n) {
  const stem = path.replace(/\.safetensors$/, '');
  const len = headerLen(bytes);
  const header = JSON.parse(bytes.subarray(8, 8 + len).toString());
  const data = bytes.subarray(8 + len);
  const keys = Object.keys(header).filter((k) => k !== '__metadata__').sort();
  const per = Math.ceil(keys.length / n);
  const out = {}, map = {};
  for (let i = 0; i * per < keys.length; i++) {
    const name = `${stem.split('/').pop()}-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
    const h = {}, parts = [];
    let at = 0;
    for (const k of keys.slice(i * per, (i + 1) * per)) {
      const [s, e] = header[k].data_offsets;
      parts.push(data.subarray(s, e));
      h[k] = { ...header[k], data_offsets: [at, at + e - s] };
      at += e - s;
      map[k] = name;
    }
    const json = Buffer.from(JSON.stringify(h));
    const size = Buffer.alloc(8);
    size.writeBigUInt64LE(BigInt(json.length));
    out[`${stem.slice(0, stem.lastIndexOf('/') + 1)}${name}`] = Buffer.concat([size, json, ...parts]);
  }
  out[`${path}.index.json`] = Buffer.from(JSON.stringify({ metadata: { total_size: bytes.length }, weight_map: map }));
  return out;
}

/** The corpus edits (see its "about"); the same as tests/bad_input.rs. */
function edit(files, file, e) {
  const [[op, arg]] = Object.entries(e);
  const old = files[file] ?? Buffer.alloc(0);
  let out;
  if (op === 'delete') { delete files[file]; return; }
  if (op === 'shard') { delete files[file]; Object.assign(files, shard(file, old, arg)); return; }
  if (op === 'rename') { delete files[file]; files[arg] = old; return; }
  if (op === 'text') out = Buffer.from(arg);
  else if (op === 'hex') out = hex(arg);
  else if (op === 'copy_from') out = files[arg];
  else if (op === 'truncate') out = old.subarray(0, arg < 0 ? old.length + arg : arg);
  else if (op === 'patch') { out = Buffer.from(old); hex(arg.hex).copy(out, arg.at); }
  else if (op === 'set') {
    let v = {};
    try { v = JSON.parse(old.toString()); } catch { /* a new file */ }
    out = Buffer.from(JSON.stringify(Object.assign(v, arg)));
  } else if (op === 'nested') out = Buffer.from('['.repeat(arg) + ']'.repeat(arg));
  else if (op === 'pad') out = Buffer.concat([old, Buffer.alloc(arg - old.length, ' ')]);
  else if (op === 'header_replace') {
    const [from, to] = arg;
    assert.equal(from.length, to.length);
    out = Buffer.from(old);
    const at = out.subarray(8, 8 + headerLen(out)).indexOf(from) + 8;
    Buffer.from(to).copy(out, at);
  } else if (op === 'nan') {
    out = Buffer.from(old);
    const n = headerLen(out);
    const t = JSON.parse(out.subarray(8, 8 + n).toString())[arg];
    const nan = { F16: hex('007e'), F32: hex('0000c07f') }[t.dtype];
    for (let i = 8 + n + t.data_offsets[0]; i < 8 + n + t.data_offsets[1]; i += nan.length) nan.copy(out, i);
  } else throw new Error(`unknown edit ${op}`);
  files[file] = out;
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };

let good, server, other, browser, page, base;
const folders = new Map(); // URL prefix → files

/** /www/… the app; /f/<id>/… an edited folder; /host/<kind>/… misbehaving. */
function handler(req, res) {
  const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const send = (status, body, headers = {}) => res.writeHead(status, { 'content-length': body.length, ...headers }).end(body);
  if (path.startsWith('/www/')) {
    readFile(join(ROOT, path)).then((b) => send(200, b, { 'content-type': TYPES[extname(path)] ?? 'application/octet-stream' }),
      () => send(404, Buffer.from('not found')));
    return;
  }
  const m = path.match(/^\/(f\/\d+|host\/\w+|good)\/(.*)$/);
  if (!m) return send(404, Buffer.from('not found'));
  const [, prefix, file] = m;
  const body = (prefix.startsWith('host/') ? good : folders.get(prefix) ?? good)[file];
  const kind = prefix.startsWith('host/') ? prefix.slice(5) : null;
  const weights = file.endsWith('.safetensors');
  if (kind === '404') return send(404, Buffer.from('Not Found'));
  if (kind === '500' && file.startsWith('unet/diffusion')) return send(500, Buffer.from('Internal Server Error'));
  if (kind === 'html') return send(200, Buffer.from('<!DOCTYPE html><html><body>Welcome</body></html>'), { 'content-type': 'text/html' });
  if (!body) return send(404, Buffer.from('Not Found'));
  if (kind === 'cut' && file.startsWith('text_encoder/model')) {
    res.writeHead(200, { 'content-length': body.length });
    res.write(body.subarray(0, body.length >> 1));
    setTimeout(() => res.destroy(), 50);
    return;
  }
  if (kind === 'stall' && weights) {
    res.writeHead(200, { 'content-length': body.length });
    res.write(body.subarray(0, 100));
    return; // never ends
  }
  if (kind === 'slow' && weights) {
    res.writeHead(200, { 'content-length': body.length });
    let at = 0;
    const tick = () => {
      if (res.destroyed) return;
      res.write(body.subarray(at, at + 65536));
      at += 65536;
      if (at < body.length) setTimeout(tick, 20); else res.end();
    };
    tick();
    return;
  }
  send(200, body);
}

async function listen(h) {
  const s = createServer(h);
  await new Promise((ok) => s.listen(0, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${s.address().port}`, close: () => { s.closeAllConnections(); s.close(); } };
}

before(async () => {
  good = await goodFiles();
  server = await listen(handler);
  // Another origin with the same files and no CORS headers.
  other = await listen(handler);
  browser = await launch({ webgpu: false });
  page = await browser.context.newPage();
  await page.goto(`${server.url}/www/schedules.html`);
  base = server.url;
  await page.evaluate(async () => {
    const m = await import('/www/pkg/latent_diffusion_web.js');
    await m.default();
    window.m = m;
  });
});

after(async () => {
  await browser?.close();
  server?.close();
  other?.close();
});

/** Loads `url` and generates with `options`; resolves to { error } or { bytes },
 * or { hang } when nothing settles within `ms`. */
function attempt(url, options, image, mask, shared = false, ms = 60_000) {
  return page.evaluate(async ([url, options, image, mask, shared, ms]) => {
    const timeout = new Promise((ok) => setTimeout(() => ok({ hang: true }), ms));
    const run = (async () => {
      try {
        // Options cases run on one Generator that lives through all of them.
        const load = () => window.m.Generator.fromUrl(url, 'cpu', null, { cache: false, stallTimeoutMs: 2000 });
        const g = shared ? (window.shared ??= await load()) : await load();
        const size = g.defaultSize;
        const w = options.width ?? size, h = options.height ?? size;
        const bytes = (spec) => (spec === 'fit' ? new Uint8Array(Math.min(w * h * 4, 1 << 26)).fill(200)
          : spec == null ? null : new Uint8Array(spec).fill(200));
        const rgba = await g.generate(options, bytes(image), bytes(mask));
        if (!shared) g.free();
        return { bytes: rgba.length };
      } catch (e) {
        return { error: e?.message ?? String(e), trap: e instanceof WebAssembly.RuntimeError };
      }
    })();
    return Promise.race([run, timeout]);
  }, [url, options, image ?? null, mask ?? null, shared, ms]);
}

function options(c) {
  const o = { ...corpus.base_options, ...(c.options ?? {}) };
  if (c.repeat_prompt) o.prompt = o.prompt.repeat(c.repeat_prompt);
  return o;
}

test('the bad-input corpus: clear errors, no trap, no hang, and the next run works', { timeout: 900_000 }, async () => {
  const cases = [...corpus.cases, ...corpus.host_cases];
  const wrong = [];
  let clear = 0, ok = 0, traps = 0, hangs = 0;
  for (const [i, c] of cases.entries()) {
    let url = `${base}/good/`;
    const edits = c.edits ?? (c.file ? [c] : []);
    if (edits.length) {
      const files = { ...good };
      for (const e of edits) edit(files, e.file, e.edit);
      folders.set(`f/${i}`, files);
      url = `${base}/f/${i}/`;
    } else if (c.host === 'nocors') {
      url = `${other.url}/good/`;
    } else if (c.host) {
      url = `${base}/host/${c.host}/`;
    }
    const shared = !edits.length && !c.host;
    const got = await attempt(url, options(c), c.image, c.mask, shared);
    folders.delete(`f/${i}`);
    if (got.trap) traps++;
    if (got.hang) hangs++;
    if (c.ok ? got.bytes > 0 : got.error?.toLowerCase().includes(c.error.toLowerCase()) && !got.trap) {
      if (c.ok) ok++; else clear++;
      console.log(`ok   ${c.name}: ${got.error ?? `${got.bytes} bytes`}`);
    } else {
      wrong.push(`${c.name}: got ${JSON.stringify(got)}, wanted ${c.ok ? 'an image' : JSON.stringify(c.error)}`);
    }
    // The same Generator after an options case; a new one after a folder case.
    const after = await attempt(`${base}/good/`, corpus.base_options, null, null, shared);
    if (!(after.bytes > 0)) wrong.push(`${c.name}: the good run after it failed: ${JSON.stringify(after)}`);
  }
  console.log(`${cases.length} cases: ${clear} clear errors, ${ok} good runs, ${traps} traps, ${hangs} hangs, `
    + `${wrong.length} wrong`);
  assert.deepEqual(wrong, []);
  assert.deepEqual(browser.errors, []);
});
