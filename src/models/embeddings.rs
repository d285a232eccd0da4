//! Timestep embeddings (diffusers `embeddings.py`).

use super::linear::Linear;
use crate::models::activations::silu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::weights::{VarBuilder, linear};

/// Sinusoidal embedding of `timesteps` (`get_timestep_embedding`), computed on
/// the host in f32 with the same operation order as diffusers, then uploaded:
/// `exp(-ln(10000) · i / (half − shift))`, `t · freq`, `[sin, cos]`
/// (`[cos, sin]` when `flip_sin_to_cos`).
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let ln_max = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (ln_max * i as f32 / (half as f32 - downscale_freq_shift)).exp())
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        let start = out.len();
        if flip_sin_to_cos {
            out.extend(cos.chain(sin));
        } else {
            out.extend(sin.chain(cos));
        }
        out.resize(start + dim, 0.0); // odd dim: zero pad, as diffusers does
    }
    Tensor::from_data(TensorData::new(out, [timesteps.len(), dim]), device)
}

/// The guidance-scale embedding of guidance-distilled UNets (LCM, Meng et al.
/// 2023), diffusers' `get_guidance_scale_embedding`: `w · 1000` embedded like
/// a timestep, `[sin, cos]` with frequencies `exp(-ln(10000) · i / (half − 1))`.
/// `dim` must be at least 4 (the config check sees to it).
pub fn guidance_scale_embedding(w: &[f32], dim: usize, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut out = Vec::with_capacity(w.len() * dim);
    for &w in w {
        let w = w * 1000.0;
        let start = out.len();
        out.extend(freqs.iter().map(|f| (w * f).sin()));
        out.extend(freqs.iter().map(|f| (w * f).cos()));
        out.resize(start + dim, 0.0);
    }
    Tensor::from_data(TensorData::new(out, [w.len(), dim]), device)
}

/// `TimestepEmbedding`: linear_1 → SiLU → linear_2, with `cond_proj` (no bias)
/// adding a condition such as the guidance embedding to the input first.
#[derive(burn::module::Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
    pub cond_proj: Option<Linear>,
}

impl TimestepEmbedding {
    pub fn load(
        vb: &VarBuilder,
        in_channels: usize,
        time_embed_dim: usize,
        cond_proj_dim: Option<usize>,
    ) -> Self {
        Self {
            linear_1: linear(&vb.pp("linear_1"), in_channels, time_embed_dim, true),
            linear_2: linear(&vb.pp("linear_2"), time_embed_dim, time_embed_dim, true),
            cond_proj: cond_proj_dim.map(|d| linear(&vb.pp("cond_proj"), d, in_channels, false)),
        }
    }

    pub fn forward(&self, mut x: Tensor<2>, condition: Option<&Tensor<2>>) -> Tensor<2> {
        if let (Some(proj), Some(c)) = (&self.cond_proj, condition) {
            x = x + proj.forward(c.clone());
        }
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
