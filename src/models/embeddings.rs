//! Timestep embeddings (diffusers `embeddings.py`).

use burn::nn::Linear;
use burn::tensor::activation::silu;
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

/// `TimestepEmbedding`: linear_1 → SiLU → linear_2.
#[derive(burn::module::Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(vb: &VarBuilder, in_channels: usize, time_embed_dim: usize) -> Self {
        Self {
            linear_1: linear(&vb.pp("linear_1"), in_channels, time_embed_dim, true),
            linear_2: linear(&vb.pp("linear_2"), time_embed_dim, time_embed_dim, true),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
