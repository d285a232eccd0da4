//! Seeded Gaussian noise, generated on the CPU so that the same seed gives the
//! same numbers on every platform and every tensor backend.
//!
//! # The stream (stable; changing it changes every image for a given seed)
//! 1. Key: the 32-byte ChaCha20 key is the seed as 8 little-endian bytes
//!    followed by 24 zero bytes; nonce/stream 0, block counter from 0
//!    (`rand_chacha::ChaCha20Rng::from_seed`).
//! 2. Each 64-bit draw is two consecutive 32-bit output words, the first one
//!    in the low half.
//! 3. Box–Muller on a pair of draws `a`, `b`:
//!    `u1 = ((a >> 11) + 1) / 2^53` in (0, 1], `u2 = (b >> 11) / 2^53` in [0, 1),
//!    `r = sqrt(-2 ln u1)`, giving `r cos(2π u2)` then `r sin(2π u2)`,
//!    computed in f64 with the pure-Rust `libm` (identical on native and wasm)
//!    and rounded to f32.
//!
//! `tools/noise.py` implements the same stream in Python so reference
//! pipelines can be fed bit-identical initial latents.

use burn::tensor::{Tensor, TensorData};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// A reproducible source of standard normal f32 samples.
pub struct NoiseGenerator {
    rng: ChaCha20Rng,
    spare: Option<f64>,
}

impl NoiseGenerator {
    /// Starts the stream for `seed` (see the module docs for its definition).
    pub fn new(seed: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            rng: ChaCha20Rng::from_seed(key),
            spare: None,
        }
    }

    /// The next standard normal sample.
    pub fn next_gaussian(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z as f32;
        }
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        let a = self.rng.next_u64();
        let b = self.rng.next_u64();
        let u1 = ((a >> 11) + 1) as f64 * SCALE;
        let u2 = (b >> 11) as f64 * SCALE;
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * libm::sin(theta));
        (r * libm::cos(theta)) as f32
    }

    /// The next `n` samples, in order.
    pub fn sample(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_gaussian()).collect()
    }

    /// The next `shape.iter().product()` samples as a row-major tensor.
    pub fn tensor<const D: usize>(
        &mut self,
        shape: [usize; D],
        device: &burn::tensor::Device,
    ) -> Tensor<D> {
        let values = self.sample(shape.iter().product());
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}
