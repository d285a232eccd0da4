//! Latent diffusion in Rust for the browser: Burn runs the networks on
//! WebGPU (or the CPU in native tests) and a DDIM sampler drives them.
//!
//! Modules, each named after its diffusers twin:
//! - [`schedulers`]: noise schedules, the forward process, `DDIMScheduler`
//!   and `DDPMScheduler`, checked against diffusers in `tests/`.
//! - [`models`]: `UNet2DConditionModel`, `AutoencoderKL`, `AutoencoderTiny`,
//!   built by [`weights`] from safetensors bytes by their checkpoint key names.
//! - [`noise`]: seeded Gaussian noise, identical on native and wasm.
//! - [`prompts`]: a folder's `prompts.json` (emoji read as names, known words).
//! - [`error`]: the crate's one error type; [`config`]: reading `config.json` files.

pub mod config;
pub mod error;
pub mod image;
pub mod models;
pub mod noise;
pub mod pipeline;
pub mod prompts;
pub mod schedulers;
pub mod weights;

#[cfg(target_family = "wasm")]
mod web;

/// `initThreadPool(n)`: starts the threaded CPU module's pool of `n` Web
/// Workers (the page calls it once, where it is cross-origin isolated).
#[cfg(all(target_family = "wasm", feature = "threads"))]
pub use wasm_bindgen_rayon::init_thread_pool;

pub use error::{Error, Result};
pub use noise::NoiseGenerator;
pub use schedulers::{
    DDIMScheduler, DDIMSchedulerConfig, DDPMScheduler, DDPMSchedulerConfig, NoiseSchedule,
    PredictionType, SchedulerOutput, TimestepSpacing,
};

/// Runs `f` on a thread of rayon's global pool, the pool that flex's ops,
/// gemm and the convolution and attention kernels split their work over;
/// call the models from inside it. Called from any other thread, that thread
/// sleeps while the pool works on an op, and between ops the pool's workers
/// keep spinning for more work while it runs the serial parts: three busy
/// threads on two cores. Inside the pool, the caller is one of the workers
/// (as PyTorch's OpenMP main thread is).
/// - Natively: `tools/bench.sh` on 2 cores, UNet 30–35 → 25 ms, decoder
///   24 → 22 ms.
/// - The threaded browser module (feature `threads`): the page's worker
///   sleeps (it may block; a page's main thread may not) while the pool's
///   Web Workers run the call. Called from outside, 2 threads made an image
///   1.21× slower than one (tools/bench_ort.mjs).
/// - The single-threaded browser module: `f()`.
#[cfg(any(not(target_family = "wasm"), feature = "threads"))]
pub fn run_on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // `scope` (unlike `in_place_scope`) runs its closure in the pool.
    rayon::scope(|_| f())
}

/// Runs `f` (this module has no threads).
#[cfg(all(target_family = "wasm", not(feature = "threads")))]
pub fn run_on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    f()
}
