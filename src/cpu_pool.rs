//! The CPU path's threads: where the models run and how the kernels
//! (convolution, attention, linear layers) split their work.
//!
//! Natively and in the threaded browser module (feature `threads`) the
//! models run on rayon's global pool ([`run_on_cpu_pool`]). Inside that call
//! the pool's other threads form a *team*: they wait for the kernels' jobs
//! spinning, instead of going to sleep between operations as rayon's idle
//! workers do. A UNet step of the shipped model is a few hundred operations
//! of tens of microseconds each; waking a sleeping Web Worker for each one
//! cost what the second core brought, so two threads gained nothing on a
//! step (`tools/bench_ort.mjs`: 1.05× one thread's time), and splitting the
//! linear layers over rayon too made it slower still (12.0 against 11.2 ms
//! a step). With the team, a step on 2 threads takes 0.7× the time it took
//! before (README, Benchmarks). The team hands out jobs
//! through one atomic word, and the caller spins until the last is done, as
//! onnxruntime's and OpenMP's thread pools do. The spinning lasts only as
//! long as the call; between calls the threads sleep.
//!
//! [`for_each_chunk_mut`] is the kernels' one way to split work: over the
//! team inside [`run_on_cpu_pool`], over rayon's pool elsewhere (the native
//! tests call the models from their own threads), in order in the
//! single-threaded browser module.

/// Runs `f(i, chunk)` for each `chunk`-long piece of `out` (the last may be
/// shorter), `i` counting from 0, spread over the CPU pool's threads.
pub fn for_each_chunk_mut<T: Send>(
    out: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "chunk length 0");
    let len = out.len();
    let bounds: Vec<usize> = (0..=len.div_ceil(chunk))
        .map(|i| (i * chunk).min(len))
        .collect();
    for_each_part_mut(out, &bounds, f)
}

/// Runs `f(i, &mut out[bounds[i]..bounds[i + 1]])` for each part, spread
/// over the CPU pool's threads. `bounds` must rise and end within `out`.
pub fn for_each_part_mut<T: Send>(
    out: &mut [T],
    bounds: &[usize],
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(
        bounds.windows(2).all(|w| w[0] <= w[1]) && bounds.last().is_none_or(|&e| e <= out.len()),
        "part bounds must rise and end within the slice"
    );
    match bounds {
        [] | [_] => return,
        &[start, end] => return f(0, &mut out[start..end]),
        _ => {}
    }
    #[cfg(any(not(target_family = "wasm"), feature = "threads"))]
    if team::try_run(out, bounds, &f) {
        return;
    }
    let mut parts = Vec::with_capacity(bounds.len() - 1);
    let mut at = bounds[0];
    let mut rest = &mut out[at..];
    for &end in &bounds[1..] {
        let (part, tail) = rest.split_at_mut(end - at);
        parts.push(part);
        rest = tail;
        at = end;
    }
    #[cfg(any(not(target_family = "wasm"), feature = "threads"))]
    {
        use rayon::prelude::*;
        parts.into_par_iter().enumerate().for_each(|(i, p)| f(i, p));
    }
    #[cfg(all(target_family = "wasm", not(feature = "threads")))]
    for (i, p) in parts.into_iter().enumerate() {
        f(i, p)
    }
}

/// The number of threads [`for_each_chunk_mut`] spreads work over.
pub fn threads() -> usize {
    #[cfg(any(not(target_family = "wasm"), feature = "threads"))]
    return rayon::current_num_threads();
    #[cfg(all(target_family = "wasm", not(feature = "threads")))]
    1
}

/// Runs `f` on a thread of rayon's global pool, the pool that flex's ops
/// and gemm split their work over, with the pool's other threads waiting
/// for the kernels' jobs as a team (above) until `f` returns; call the
/// models from inside it. Called from any other thread, that thread sleeps
/// until `f` is done. (Leading the team from the calling thread instead was
/// tried in the browser: flex's own rayon ops then each wait for a sleeping
/// worker from outside the pool, and the text encoder took 9 ms, not 1.5.)
/// - Natively: as PyTorch's OpenMP main thread, the caller is one of the
///   workers (`tools/bench.sh` on 2 cores, before the team: UNet 30–35 → 25
///   ms, decoder 24 → 22 ms against calling from outside).
/// - The threaded browser module: the page's worker is the pool's thread 0
///   ([`init_thread_pool`]), so `f` runs on it directly, with no hand-off to
///   a sleeping Web Worker and back (that cost about 0.3 ms a call, 1.7
///   against 1.4 ms for the text encoder in `tools/bench_ort.mjs`). It may
///   block (a page's main thread may not).
/// - The single-threaded browser module: `f()`.
#[cfg(any(not(target_family = "wasm"), feature = "threads"))]
pub fn run_on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    team::run(f)
}

/// Runs `f` (this module has no threads).
#[cfg(all(target_family = "wasm", not(feature = "threads")))]
pub fn run_on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    f()
}

#[cfg(all(target_family = "wasm", feature = "threads"))]
pub use web_workers::init_thread_pool;

/// The threaded browser module's pool: rayon's global pool whose thread 0 is
/// the Web Worker that starts it (rayon's `use_current_thread`), the others
/// Web Workers started by `cpu_pool.js` on the module's shared memory.
#[cfg(all(target_family = "wasm", feature = "threads"))]
mod web_workers {
    use js_sys::JsString;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Condvar, Mutex};
    use wasm_bindgen::prelude::*;

    /// The most threads a pool has (the caller's included); more are capped.
    const MAX_THREADS: usize = 64;

    /// Threads rayon has handed out, each waiting for a Web Worker to run it.
    static HANDED: Mutex<Vec<rayon::ThreadBuilder>> = Mutex::new(Vec::new());
    static HANDED_READY: Condvar = Condvar::new();
    static STARTED: AtomicBool = AtomicBool::new(false);

    #[wasm_bindgen(module = "/src/cpu_pool.js")]
    extern "C" {
        #[wasm_bindgen(js_name = startWorkers, catch)]
        async fn start_workers(
            module: JsValue,
            memory: JsValue,
            main_js: JsString,
            count: usize,
        ) -> Result<(), JsValue>;
    }

    #[wasm_bindgen]
    extern "C" {
        /// The URL of the module's JS file (each Web Worker imports it).
        #[wasm_bindgen(thread_local_v2, js_namespace = ["import", "meta"], js_name = url)]
        static MODULE_URL: JsString;
    }

    /// `initThreadPool(n)`: starts the CPU pool once, with `n` threads (at
    /// most 64): the calling Web Worker (which must be the one that calls
    /// the models, and not a page's main thread: it blocks while it waits
    /// for the others) and `n - 1` new Web Workers. It rejects `n = 0`, a
    /// second call, and a worker that fails to start. (The module itself
    /// loads only where the page is cross-origin isolated: its memory is
    /// shared.)
    #[wasm_bindgen(js_name = initThreadPool)]
    pub async fn init_thread_pool(threads: usize) -> Result<(), JsError> {
        if threads == 0 {
            return Err(JsError::new(
                "initThreadPool: 0 threads; at least 1 is needed",
            ));
        }
        let threads = threads.min(MAX_THREADS);
        if STARTED.swap(true, Ordering::AcqRel) {
            return Err(JsError::new(
                "initThreadPool: the CPU pool has already been started",
            ));
        }
        let url = MODULE_URL.with(Clone::clone);
        start_workers(
            wasm_bindgen::module(),
            wasm_bindgen::memory(),
            url,
            threads - 1,
        )
        .await
        .map_err(|e| {
            STARTED.store(false, Ordering::Release); // may be tried again
            JsError::new(&format!(
                "initThreadPool: a Web Worker of the CPU pool did not start: {e:?}"
            ))
        })?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .use_current_thread()
            .spawn_handler(|thread| {
                HANDED
                    .lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?
                    .push(thread);
                HANDED_READY.notify_all();
                Ok(())
            })
            .build_global()
            .map_err(|e| JsError::new(&format!("initThreadPool: {e}")))
    }

    /// A Web Worker of the pool (`cpu_pool.js`): waits for a thread of the
    /// pool and runs it, for good.
    #[wasm_bindgen(js_name = cpuPoolWorker)]
    pub fn cpu_pool_worker() {
        let thread = {
            let mut handed = HANDED.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match handed.pop() {
                    Some(t) => break t,
                    None => handed = HANDED_READY.wait(handed).unwrap_or_else(|p| p.into_inner()),
                }
            }
        };
        thread.run()
    }
}

#[cfg(any(not(target_family = "wasm"), feature = "threads"))]
mod team {
    use std::any::Any;
    use std::cell::Cell;
    use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Jobs and job indices fit in this many bits of [`Team::word`].
    const BITS: u32 = 24;
    const MASK: u64 = (1 << BITS) - 1;

    /// The threads of one [`run`] call.
    struct Team {
        /// The current task: generation (16 bits), job count and next job
        /// index (24 bits each). Claiming job `i` is one compare-and-swap
        /// of this word, so a thread that read an older task's word can
        /// never claim a newer task's job.
        word: AtomicU64,
        /// The current task's `&dyn Fn(usize)`, on its caller's stack. Read
        /// only after claiming a job: the caller waits for every job, so
        /// the task outlives each claim.
        task: AtomicPtr<()>,
        /// Jobs of the current task finished.
        finished: AtomicUsize,
        /// The current task's first panic (natively; in wasm a panic aborts
        /// its Web Worker, and the page reports it).
        panic: Mutex<Option<Box<dyn Any + Send>>>,
        /// The rayon thread that runs `f`.
        owner: Option<usize>,
        /// `f` has returned: the helpers leave.
        closed: AtomicBool,
    }

    type Task<'a> = &'a (dyn Fn(usize) + Sync);

    thread_local! {
        /// The team this thread leads, while it runs `f` and no task.
        static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
    }

    pub(super) fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        if !LEADING.get().is_null() {
            return f(); // Already inside a team's call.
        }
        // `scope` (unlike `in_place_scope`) runs its closure in the pool.
        rayon::scope(|_| {
            let team = Arc::new(Team {
                word: AtomicU64::new(0),
                task: AtomicPtr::new(std::ptr::null_mut()),
                finished: AtomicUsize::new(0),
                panic: Mutex::new(None),
                owner: rayon::current_thread_index(),
                closed: AtomicBool::new(false),
            });
            // The helpers hold the team, so the call ends without waiting
            // for them (in a browser, for a sleeping Web Worker to wake
            // up only to see that it is over).
            for _ in 1..rayon::current_num_threads() {
                let team = team.clone();
                rayon::spawn(move || team.help());
            }
            struct Lead<'a>(&'a AtomicBool);
            impl Drop for Lead<'_> {
                fn drop(&mut self) {
                    LEADING.set(std::ptr::null());
                    self.0.store(true, Ordering::Release);
                }
            }
            let _lead = Lead(&team.closed);
            LEADING.set(Arc::as_ptr(&team));
            f()
        })
    }

    /// Runs `f` over `out`'s parts on the team this thread leads, if any.
    pub(super) fn try_run<T: Send>(
        out: &mut [T],
        bounds: &[usize],
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) -> bool {
        let team = LEADING.get();
        let jobs = bounds.len() - 1;
        if team.is_null() || jobs as u64 > MASK {
            return false;
        }
        // SAFETY: `LEADING` points at the `Team` of the `run` call this
        // thread is inside (it is cleared before that call returns).
        let team = unsafe { &*team };
        struct Out<T>(*mut T);
        // SAFETY: each job index is claimed once, and job `i` only touches
        // part `i`; the caller checked that the parts do not overlap.
        unsafe impl<T: Send> Sync for Out<T> {}
        let base = Out(out.as_mut_ptr());
        let base = &base;
        let job = move |i: usize| {
            let (start, end) = (bounds[i], bounds[i + 1]);
            // SAFETY: part `i` lies within `out` and is this job's alone.
            let part = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
            f(i, part)
        };
        LEADING.set(std::ptr::null()); // A job that splits again runs on rayon.
        let panic = team.lead(&job, jobs);
        LEADING.set(team);
        if let Some(p) = panic {
            resume_unwind(p);
        }
        true
    }

    impl Team {
        /// Publishes `task`'s `jobs`, runs jobs until none is left, waits
        /// for the helpers' last ones; the task's first panic, if any.
        fn lead(&self, task: Task, jobs: usize) -> Option<Box<dyn Any + Send>> {
            let task_ref: *const Task = &task;
            self.task.store(task_ref as *mut (), Ordering::Relaxed);
            self.finished.store(0, Ordering::Relaxed);
            let generation = ((self.word.load(Ordering::Relaxed) >> (2 * BITS)) + 1) & 0xffff;
            self.word.store(
                generation << (2 * BITS) | (jobs as u64) << BITS,
                Ordering::Release,
            );
            while let Some(i) = self.claim() {
                self.work(task, i);
            }
            while self.finished.load(Ordering::Acquire) < jobs {
                std::hint::spin_loop();
            }
            self.panic.lock().unwrap_or_else(|e| e.into_inner()).take()
        }

        /// Runs claimed job `i` of `task`, keeping the first panic.
        fn work(&self, task: Task, i: usize) {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| task(i))) {
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
            self.finished.fetch_add(1, Ordering::Release);
        }

        /// The next job of the current task, claimed.
        fn claim(&self) -> Option<usize> {
            let mut word = self.word.load(Ordering::Acquire);
            loop {
                let (jobs, next) = ((word >> BITS) & MASK, word & MASK);
                if next >= jobs {
                    return None;
                }
                match self.word.compare_exchange_weak(
                    word,
                    word + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Some(next as usize),
                    Err(now) => word = now,
                }
            }
        }

        /// A helper thread's loop: jobs as they come, rayon's work (flex's
        /// and gemm's own splits) in between, until `f` returns.
        fn help(&self) {
            if rayon::current_thread_index() == self.owner {
                return; // The owner popped its own helper job.
            }
            let mut idle = 0u32;
            while !self.closed.load(Ordering::Acquire) {
                if let Some(i) = self.claim() {
                    // SAFETY: the claim keeps the task alive (see `task`).
                    let task = unsafe { *(self.task.load(Ordering::Acquire) as *const Task) };
                    self.work(task, i);
                    idle = 0;
                    continue;
                }
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(64) {
                    rayon::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every part, once, with its own index, inside the team and outside.
    fn fill(len: usize, chunk: usize) -> Vec<usize> {
        let mut out = vec![usize::MAX; len];
        for_each_chunk_mut(&mut out, chunk, |i, part| {
            for (k, v) in part.iter_mut().enumerate() {
                assert_eq!(*v, usize::MAX, "an element written twice");
                *v = i * chunk + k;
            }
        });
        out
    }

    #[test]
    fn every_chunk_once_in_and_out_of_the_team() {
        for (len, chunk) in [(0, 3), (1, 1), (10, 3), (1000, 7), (64, 64), (65, 64)] {
            let want: Vec<usize> = (0..len).collect();
            assert_eq!(fill(len, chunk), want, "outside, {len}/{chunk}");
            assert_eq!(
                run_on_cpu_pool(|| fill(len, chunk)),
                want,
                "team, {len}/{chunk}"
            );
        }
    }

    #[test]
    fn many_tasks_in_one_call_wrap_the_generation() {
        // More tasks than the word's 16-bit generation counts.
        let tasks = 70_000;
        let sum = run_on_cpu_pool(|| {
            let total = AtomicUsize::new(0);
            for t in 0..tasks {
                let mut parts = [0usize; 4];
                for_each_chunk_mut(&mut parts, 1, |i, p| p[0] = t + i);
                total.fetch_add(parts.iter().sum::<usize>(), Ordering::Relaxed);
            }
            total.into_inner()
        });
        assert_eq!(sum, (0..tasks).map(|t| 4 * t + 6).sum::<usize>());
    }

    #[test]
    fn uneven_parts_and_nested_splits() {
        let bounds = [2, 2, 5, 9, 20];
        let mut out = vec![0u32; 24];
        run_on_cpu_pool(|| {
            for_each_part_mut(&mut out, &bounds, |i, part| {
                // A job that splits again (rayon's pool, not the team).
                for_each_chunk_mut(part, 2, |_, p| p.fill(i as u32 + 1));
            })
        });
        let mut want = vec![0u32; 24];
        for (i, w) in bounds.windows(2).enumerate() {
            want[w[0]..w[1]].fill(i as u32 + 1);
        }
        assert_eq!(out, want);
    }

    #[test]
    #[should_panic(expected = "part bounds")]
    fn overlapping_parts_are_refused() {
        for_each_part_mut(&mut [0u8; 8], &[0, 5, 3, 8], |_, _| ());
    }

    #[test]
    fn a_job_that_panics_fails_the_call_and_the_pool_works_after() {
        let caught = std::panic::catch_unwind(|| {
            run_on_cpu_pool(|| {
                let mut out = vec![0u8; 64];
                for_each_chunk_mut(&mut out, 1, |i, _| assert!(i != 37, "job 37 fails"));
            })
        });
        let message = caught.expect_err("the panic reaches the caller");
        let text = (message.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| message.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        assert!(text.contains("job 37 fails"), "{text}");
        let want: Vec<usize> = (0..100).collect();
        assert_eq!(run_on_cpu_pool(|| fill(100, 3)), want);
    }
}
