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
//! - [`cpu_pool`]: the CPU path's threads ([`run_on_cpu_pool`]).
//! - [`error`]: the crate's one error type; [`config`]: reading `config.json` files.

pub mod config;
pub mod cpu_pool;
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

/// `initThreadPool(n)`: starts the threaded CPU module's pool of `n`
/// threads (the page's worker calls it once, where the page is cross-origin
/// isolated).
#[cfg(all(target_family = "wasm", feature = "threads"))]
pub use cpu_pool::init_thread_pool;

pub use cpu_pool::run_on_cpu_pool;
pub use error::{Error, Result};
pub use noise::NoiseGenerator;
pub use schedulers::{
    DDIMScheduler, DDIMSchedulerConfig, DDPMScheduler, DDPMSchedulerConfig, NoiseSchedule,
    PredictionType, SchedulerOutput, TimestepSpacing,
};
