// Where the time goes on our wasm CPU path, per thread: Chrome's sampling
// profiler (CDP `Profiler`) on the bench worker and on every Web Worker of
// the threaded module's pool, over `images` images of the shipped model.
// Prints each thread's self time by function, or, with `--under NAME`, the
// time of every function on stacks through a function whose name contains
// NAME (e.g. `UNet2DConditionModel>::forward` for the UNet alone; the pool's
// helper threads run jobs, so their stacks do not show the caller).
//
//   WASM_OPT=0 ./build.sh wasm        (wasm-opt -Oz strips the function names)
//   node tools/profile_browser.mjs [threads] [images] [--pkg /pkg/] [--under NAME] [--top N]
//
// threads: 1 for the single-threaded module (`--pkg /pkg/`), ≥ 1 for the
// threaded one (default `/pkg-threads/`, 2 threads).
import { ROOT, launch, serve } from '../tests/browser/harness.mjs';

const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const positional = args.filter((a, i) => /^\d+$/.test(a) && !['--pkg', '--under', '--top'].includes(args[i - 1]));
const [threads = 2, images = 10] = positional.map(Number);
const pkg = option('--pkg', '/pkg-threads/');
const under = option('--under', null);
const top = Number(option('--top', 30));
const PROMPTS = ['red heart', 'smiling cat face', 'pizza', 'blue car'];

const server = await serve('www', { '/bench/': `${ROOT}tools/` }, { isolate: true });
const browser = await launch({ webgpu: false });
const page = await browser.context.newPage();
const cdp = await browser.context.newCDPSession(page);

// Workers attach as nested targets; commands to them travel wrapped in
// Target.sendMessageToTarget through each parent.
const sessions = new Map(); // sessionId -> { info, parent }
const pending = new Map();
let nextId = 1;
let attaching = null;
function onMessage(m) {
  if (m.id && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); return; }
  if (m.method === 'Target.receivedMessageFromTarget') onMessage(JSON.parse(m.params.message));
  else if (m.method === 'Target.attachedToTarget') attached(m.params, attaching);
}
function raw(sessionId, message) {
  const parent = sessions.get(sessionId)?.parent;
  const wrapped = { sessionId, message: JSON.stringify(message) };
  if (parent) raw(parent, { id: nextId++, method: 'Target.sendMessageToTarget', params: wrapped });
  else cdp.send('Target.sendMessageToTarget', wrapped);
}
const send = (sessionId, method, params = {}) => new Promise((ok) => {
  const id = nextId++;
  pending.set(id, ok);
  raw(sessionId, { id, method, params });
});
function attached({ sessionId, targetInfo }, parent) {
  // Attaching again from a parent's session reports a worker already known.
  if ([...sessions.values()].some((s) => s.info.targetId === targetInfo.targetId)) return;
  sessions.set(sessionId, { info: targetInfo, parent });
  send(sessionId, 'Runtime.runIfWaitingForDebugger');
}
cdp.on('Target.receivedMessageFromTarget', ({ message }) => onMessage(JSON.parse(message)));
cdp.on('Target.attachedToTarget', (p) => attached(p, null));
await cdp.send('Target.setAutoAttach', { autoAttach: true, waitForDebuggerOnStart: false, flatten: false });

await page.goto(`${server.url}bench-blank`);
await page.evaluate(async ({ threads, pkg }) => {
  const w = new Worker('/bench/bench_worker.mjs', { type: 'module' });
  window.ask = (msg) => new Promise((ok, fail) => {
    w.onmessage = ({ data }) => (data.error ? fail(new Error(data.error)) : ok(data));
    w.postMessage(msg);
  });
  await window.ask({ pkg: `${location.origin}${pkg}latent_diffusion_web.js`, backend: 'cpu', threads, model: 'emoji-4step', steps: 4 });
}, { threads, pkg });
const image = (i) => page.evaluate((a) => window.ask(a), { seed: i, prompt: PROMPTS[i % PROMPTS.length] });
for (let i = 0; i < 3; i++) await image(i); // warm-up; the pool's workers start here
for (const sid of [...sessions.keys()]) {
  attaching = sid;
  await send(sid, 'Target.setAutoAttach', { autoAttach: true, waitForDebuggerOnStart: false, flatten: false });
  await new Promise((ok) => setTimeout(ok, 500));
}
for (const sid of sessions.keys()) {
  await send(sid, 'Profiler.enable');
  await send(sid, 'Profiler.setSamplingInterval', { interval: 100 });
  await send(sid, 'Profiler.start');
}
const times = [];
for (let i = 0; i < images; i++) times.push(await image(i));
const profiles = [];
for (const [sid, { info }] of sessions) profiles.push({ info, profile: (await send(sid, 'Profiler.stop')).result?.profile });
await browser.close();
server.close();

const median = (v) => [...v].sort((a, b) => a - b)[v.length >> 1];
console.log(`${pkg}, ${threads} thread(s), ${images} images (profiler on, so slower than bench_ort): ` +
  `text ${median(times.map((t) => t.text)).toFixed(2)} ms, step ${median(times.flatMap((t) => t.step)).toFixed(2)} ms, ` +
  `decode ${median(times.map((t) => t.decode)).toFixed(2)} ms`);
let poolWorkers = 0;
for (const { info, profile } of profiles) {
  if (!profile) continue;
  // The pool's workers all run the same blob URL (src/cpu_pool.js): numbered.
  const label = info.url.startsWith('blob:') ? `pool worker ${++poolWorkers}` : info.url.split('/').pop();
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const hits = new Map();
  for (const s of profile.samples) hits.set(s, (hits.get(s) ?? 0) + 1);
  const ms = (profile.endTime - profile.startTime) / 1000 / profile.samples.length;
  const name = (id) => byId.get(id).callFrame.functionName.replace(/\[[0-9a-f]{16}\]/g, '') || '(anonymous)';
  const time = new Map();
  let counted = 0;
  for (const [id, c] of hits) {
    const stack = [];
    for (let x = id; x !== undefined; x = parent.get(x)) stack.push(name(x));
    if (under && !stack.some((f) => f.includes(under))) continue;
    counted += c;
    // Self time without --under; with it, time on the stack (each name once).
    for (const f of under ? new Set(stack) : [stack[0]]) time.set(f, (time.get(f) ?? 0) + c);
  }
  if (!counted) continue;
  console.log(`\n${label}: ${(counted * ms).toFixed(0)} ms${under ? ` under ${under}` : ''}`);
  for (const [f, c] of [...time].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${((100 * c) / counted).toFixed(1).padStart(5)}%  ${f.slice(0, 150)}`);
  }
}
