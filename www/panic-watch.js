// A panic on a thread of the threaded CPU module's pool (www/pkg-threads)
// traps that thread's Web Worker, and the model's worker, which called into
// the pool, sleeps on forever waiting for the answer: no error ever reaches
// its onmessage. The module's panic hook posts such a panic on a
// BroadcastChannel whose name the worker passes to it (`setPanicChannel`);
// the page listens there, reports the panic and replaces the worker.

/** Listens for panics on the pool of `worker`'s threaded module and calls
 * `onPanic(message)`; returns a function that stops listening. */
export function watchPoolPanics(worker, onPanic) {
  if (typeof BroadcastChannel === 'undefined') return () => {};
  // One channel per worker: other tabs and earlier workers post elsewhere.
  const name = `ldw-pool-panic-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  const channel = new BroadcastChannel(name);
  channel.onmessage = ({ data }) => onPanic(String(data));
  worker.postMessage({ type: 'panic-channel', name });
  return () => channel.close();
}
