//! Attention in query slices (its own test binary: the limit is process-wide).
//!
//! WebGPU binds at most `maxStorageBufferBindingSize` bytes per buffer
//! (128 MiB by default, and lavapipe's own limit natively). A 512×512 image's
//! self-attention scores are far larger, so attention runs in slices of
//! queries whose scores fit. Slicing must change nothing but memory.

use burn::tensor::{Device, DeviceKind, Tensor};
use latent_diffusion_web::NoiseGenerator;
use latent_diffusion_web::models::attention::{scaled_dot_product, set_attention_max_bytes};

fn max_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
    let a = a.into_data().try_to_vec::<f32>().unwrap();
    let b = b.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn qkv(b: usize, n: usize, m: usize, inner: usize, d: &Device) -> [Tensor<3>; 3] {
    let mut noise = NoiseGenerator::new(7);
    [
        noise.tensor([b, n, inner], d),
        noise.tensor([b, m, inner], d),
        noise.tensor([b, m, inner], d),
    ]
}

/// Any slice size, down to one query at a time, with and without a mask
/// (the CLIP causal mask is sliced with the queries), gives the same result.
/// On wgpu: f32 attention on flex takes a kernel of its own, which bounds its
/// memory without these slices.
#[test]
fn slices_change_nothing() {
    let d = Device::wgpu(DeviceKind::DefaultDevice);
    let [q, k, v] = qkv(2, 37, 37, 32, &d);
    let mut mask = vec![0f32; 37 * 37];
    for i in 0..37 {
        for j in i + 1..37 {
            mask[i * 37 + j] = f32::MIN;
        }
    }
    let mask = || {
        Some(Tensor::<4>::from_data(
            burn::tensor::TensorData::new(mask.clone(), [1, 1, 37, 37]),
            &d,
        ))
    };
    let full = set_attention_max_bytes(u64::MAX);
    let whole = scaled_dot_product(q.clone(), k.clone(), v.clone(), 4, mask());
    let whole_nomask = scaled_dot_product(q.clone(), k.clone(), v.clone(), 4, None);
    for limit in [1, 2 * 4 * 37 * 4 * 5, 2 * 4 * 37 * 4 * 36] {
        set_attention_max_bytes(limit);
        let sliced = scaled_dot_product(q.clone(), k.clone(), v.clone(), 4, mask());
        let diff = max_diff(whole.clone(), sliced);
        assert!(diff <= 1e-6, "limit {limit}: masked diff {diff:e}");
        let sliced = scaled_dot_product(q.clone(), k.clone(), v.clone(), 4, None);
        let diff = max_diff(whole_nomask.clone(), sliced);
        assert!(diff <= 1e-6, "limit {limit}: diff {diff:e}");
    }
    set_attention_max_bytes(full);
}

/// Self-attention over 4096 tokens (a 512×512 image's 64×64 latents) with 8
/// heads: 512 MiB of scores, four times what lavapipe (like WebGPU's default)
/// lets one buffer bind. Sliced to 128 MiB it runs on Burn's wgpu backend
/// and agrees with the CPU.
#[test]
fn wgpu_attention_at_512px_within_128_mib_bindings() {
    set_attention_max_bytes(128 << 20);
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let cpu = Device::flex();
    let [q, k, v] = qkv(1, 4096, 4096, 64, &cpu);
    let on = |t: &Tensor<3>| Tensor::<3>::from_data(t.to_data(), &gpu);
    let want = scaled_dot_product(q.clone(), k.clone(), v.clone(), 8, None);
    let got = scaled_dot_product(on(&q), on(&k), on(&v), 8, None);
    let diff = max_diff(want, Tensor::from_data(got.into_data(), &cpu));
    println!("4096 tokens, 8 heads, wgpu vs flex: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "max abs diff {diff:e}");
}
