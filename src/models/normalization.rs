//! `nn.GroupNorm`'s forward, and group norm followed by SiLU (diffusers'
//! resnets, and the UNet's and VAE's `conv_norm_out`), in one pass on Burn's
//! CPU backend.
//!
//! Burn's `GroupNorm` is a chain of tensor ops (reshape, mean, subtract,
//! square, mean, divide, scale, shift), each a pass over the activations
//! with a new buffer, and SiLU after it one more; on one thread, and, where
//! the CPU path has threads, with the other threads idle through all of it.
//! Here f32 tensors on flex are normalised in place in host memory, one job
//! per (batch item, group) spread over the CPU pool (`cpu_pool`): the mean
//! and the variance in two passes over the group, then one pass that scales,
//! shifts and applies SiLU. Every other device and dtype takes Burn's ops.

use super::activations::{silu, silu_slice};
use burn::nn::GroupNorm;
use burn::tensor::{DType, Device, Tensor};

/// `norm(x)` for `x` `[N, C, ...]`.
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    forward(norm, x, false)
}

/// `silu(norm(x))` for `x` `[N, C, ...]`.
pub fn group_norm_silu<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    forward(norm, x, true)
}

fn forward<const D: usize>(norm: &GroupNorm, x: Tensor<D>, then_silu: bool) -> Tensor<D> {
    let burn = |x: Tensor<D>| {
        let y = norm.forward(x);
        if then_silu { silu(y) } else { y }
    };
    let dims = x.dims();
    let groups = norm.num_groups;
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return burn(x);
    };
    if x.dtype() != DType::F32
        || x.device() != Device::flex()
        || D < 2
        || dims[1] != norm.num_channels
        || groups == 0
        || !dims[1].is_multiple_of(groups)
    {
        return burn(x);
    }
    let (Ok(gamma), Ok(beta)) = (
        gamma.val().into_data().try_to_vec::<f32>(),
        beta.val().into_data().try_to_vec::<f32>(),
    ) else {
        return burn(x);
    };
    let device = x.device();
    let spatial: usize = dims[2..].iter().product();
    let per_group = dims[1] / groups;
    let eps = norm.epsilon;
    let mut data = x.into_data();
    let Ok(values) = data.as_mut_slice::<f32>() else {
        return burn(Tensor::from_data(data, &device));
    };
    if spatial > 0 {
        crate::cpu_pool::for_each_chunk_mut(values, per_group * spatial, |j, group| {
            let first = (j % groups) * per_group;
            let channels = first..first + per_group;
            normalize(
                group,
                &gamma[channels.clone()],
                &beta[channels],
                eps,
                then_silu,
            );
        });
    }
    Tensor::from_data(data, &device)
}

/// One group, `gamma.len()` channels of equal length, in place.
fn normalize(group: &mut [f32], gamma: &[f32], beta: &[f32], eps: f64, then_silu: bool) {
    let count = group.len() as f64;
    let mean = sum(group, |x| x) / count;
    let m = mean as f32;
    let var = sum(group, |x| (x - m) * (x - m)) / count;
    let inv = 1.0 / (var + eps).sqrt();
    for ((channel, &g), &b) in group
        .chunks_exact_mut(group.len() / gamma.len())
        .zip(gamma)
        .zip(beta)
    {
        // (x - mean) · inv · gamma + beta as one multiply-add per value.
        let scale = (inv * g as f64) as f32;
        let shift = (b as f64 - mean * inv * g as f64) as f32;
        for x in channel.iter_mut() {
            *x = *x * scale + shift;
        }
        if then_silu {
            silu_slice(channel);
        }
    }
}

/// `Σ f(x)` over `v`: 8 f32 lanes within blocks of 1024 values (so the
/// loop vectorises), the blocks' sums added in f64 (so a group of a million
/// values loses no more than a block's rounding).
#[inline(always)]
fn sum(v: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    const LANES: usize = 8;
    v.chunks(1024)
        .map(|block| {
            let mut acc = [0.0f32; LANES];
            let mut chunks = block.chunks_exact(LANES);
            for c in &mut chunks {
                for (a, &x) in acc.iter_mut().zip(c) {
                    *a += f(x);
                }
            }
            let rest: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
            acc.iter().map(|&a| a as f64).sum::<f64>() + rest as f64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::GroupNormConfig;
    use burn::tensor::{Distribution, TensorData};

    /// Against Burn's ops, with and without SiLU, on shapes with one and
    /// several channels per group, several batch items, a 3-D input, and
    /// values far from zero (which one-pass formulas lose precision on).
    #[test]
    fn matches_burn() {
        let device = Device::flex();
        for (shape, groups, offset) in [
            (vec![1, 8, 5, 7], 4, 0.0),
            (vec![2, 6, 3, 3], 6, 3.0),
            (vec![2, 32, 16, 16], 8, 100.0),
            (vec![3, 4, 11, 1], 1, -2.0),
        ] {
            let c = shape[1];
            let mut norm = GroupNormConfig::new(groups, c).init(&device);
            norm.gamma = Some(burn::module::Param::from_tensor(Tensor::random(
                [c],
                Distribution::Normal(1.0, 0.5),
                &device,
            )));
            norm.beta = Some(burn::module::Param::from_tensor(Tensor::random(
                [c],
                Distribution::Normal(0.0, 0.5),
                &device,
            )));
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| offset + ((i * 7919 % 1000) as f32 / 100.0 - 5.0))
                .collect();
            let x = Tensor::<4>::from_data(TensorData::new(values, shape.clone()), &device);
            for then_silu in [false, true] {
                let want = norm.forward(x.clone());
                let want = if then_silu { silu(want) } else { want };
                // On rayon's pool and on the team of `run_on_cpu_pool`.
                let team = crate::run_on_cpu_pool(|| forward(&norm, x.clone(), then_silu));
                for got in [forward(&norm, x.clone(), then_silu), team] {
                    let diff: f32 = (got - want.clone()).abs().max().into_scalar();
                    assert!(
                        diff < 2e-5,
                        "{shape:?} / {groups}, silu {then_silu}: {diff}"
                    );
                }
            }
            // A 3-D input ([N, C, L]), as the VAE's attention normalises it.
            let x3 = x.clone().reshape([shape[0], c, shape[2] * shape[3]]);
            let got = group_norm(&norm, x3.clone());
            let diff: f32 = (got - norm.forward(x3)).abs().max().into_scalar();
            assert!(diff < 2e-5, "3-D {shape:?}: {diff}");
        }
    }
}
