// When the model's worker has crashed: an error it could not handle (its
// `error` event), or a panic on a thread of its threaded CPU module's pool
// (www/pkg-threads). Such a panic traps that thread's Web Worker while the
// model's worker sleeps on, waiting for the answer, so no error reaches it:
// the module's panic hook posts the panic on a BroadcastChannel whose name the
// worker passes to it (`setPanicChannel`), and the page listens there.

/** Calls `crashed(message)` when `worker` crashes; returns a function that
 * stops listening (call it before replacing the worker). */
export function onWorkerCrash(worker, crashed) {
  worker.onerror = (e) => { e.preventDefault?.(); crashed(e.message); };
  if (typeof BroadcastChannel === 'undefined') return () => {};
  // One channel per worker: other tabs and earlier workers post elsewhere.
  const name = `ldw-pool-panic-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  const channel = new BroadcastChannel(name);
  channel.onmessage = ({ data }) => crashed(String(data));
  worker.postMessage({ type: 'panic-channel', name });
  return () => channel.close();
}

/** The model's worker, `create()`, replaced by a fresh one after a crash
 * (after a trap its module cannot be trusted): `onMessage(event)` gets its
 * messages, `crashed(message)` is called once the new worker is started. */
export class ModelWorker {
  constructor(create, onMessage, crashed) {
    Object.assign(this, { create, onMessage, crashed });
    this.restart();
  }

  /** Replaces the worker (also to stop a step that will not end). */
  restart() {
    this.unwatch?.();
    this.worker?.terminate();
    this.worker = this.create();
    this.worker.onmessage = (e) => this.onMessage(e);
    this.unwatch = onWorkerCrash(this.worker, (why) => {
      this.restart();
      this.crashed(why);
    });
  }

  post(message) {
    this.worker.postMessage(message);
  }
}
