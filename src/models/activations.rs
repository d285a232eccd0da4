//! SiLU, GELU, CLIP's quick GELU and softmax for the networks (diffusers
//! `activations.py`), with a vectorised path on Burn's CPU backend.
//!
//! Burn's flex computes `sigmoid` one element at a time through libm's
//! `expf`: 9–12% of a decode or UNet step of the shipped model in a browser
//! profile, more than any other op after the matrix products (softmax and
//! GELU's erf likewise). On flex, f32 tensors are mapped in place in host
//! memory with a branch-free `exp` that the compiler turns into SIMD (simd128
//! in wasm, AVX natively); every other device and dtype takes Burn's own op.

use burn::tensor::activation;
use burn::tensor::{DType, Device, Tensor};

/// `$f(v)` for the slice `$v`, with `$f` (an `#[inline(always)]` slice
/// function, named) compiled for the widest vectors this CPU has: natively
/// AVX-512, else AVX2 with FMA where the CPU has them (checked at run time),
/// else the target's baseline (simd128 in wasm, SSE2 on x86-64). Called by
/// name inside each wide form, `$f` is inlined there and vectorised; through
/// a closure or `FnOnce` it was not (the call shim has no target features).
/// The results are the same on every path: Rust never fuses a multiply and
/// an add unasked.
macro_rules! widest_vectors {
    ($f:ident, $v:expr) => {{
        let v: &mut [f32] = $v;
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn avx512(v: &mut [f32]) {
                $f(v)
            }
            #[target_feature(enable = "avx2,fma")]
            fn avx2(v: &mut [f32]) {
                $f(v)
            }
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the features.
                unsafe { avx512(v) }
            } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features.
                unsafe { avx2(v) }
            } else {
                $f(v)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        $f(v)
    }};
}

/// `x · sigmoid(x)`.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    on_host(x, |v| widest_vectors!(silu_slice, v), activation::silu)
}

/// GELU with the exact (erf) form, as `F.gelu` in diffusers' GEGLU.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    on_host(x, |v| widest_vectors!(gelu_slice, v), activation::gelu)
}

/// CLIP's `quick_gelu`: `x · sigmoid(1.702 x)`.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    on_host(
        x,
        |v| widest_vectors!(quick_gelu_slice, v),
        |x| x.clone() * activation::sigmoid(x.mul_scalar(1.702)),
    )
}

/// Softmax over the last dimension.
pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let row = x.dims()[D - 1];
    on_host(
        x,
        |v| softmax_rows(v, row),
        |x| activation::softmax(x, D - 1),
    )
}

/// Softmax of each `row` values of `v`, in place.
pub(super) fn softmax_rows(v: &mut [f32], row: usize) {
    v.chunks_exact_mut(row)
        .for_each(|r| widest_vectors!(softmax_row, r))
}

/// `f` over the values of an f32 tensor on flex, in place in host memory;
/// Burn's op `burn` for any other device or dtype.
fn on_host<const D: usize>(
    x: Tensor<D>,
    f: impl FnOnce(&mut [f32]),
    burn: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    if x.dtype() != DType::F32 || x.device() != Device::flex() {
        return burn(x);
    }
    let device = x.device();
    let mut data = x.into_data();
    match data.as_mut_slice::<f32>() {
        Ok(v) => f(v),
        // Not reachable for an f32 tensor; Burn's op stays correct if it were.
        Err(_) => return burn(Tensor::from_data(data, &device)),
    }
    Tensor::from_data(data, &device)
}

/// SiLU in place: `x · sigmoid(x)`.
#[inline(always)]
pub(super) fn silu_slice(v: &mut [f32]) {
    for x in v {
        *x *= sigmoid(*x);
    }
}

/// CLIP's `quick_gelu` in place: `x · sigmoid(1.702 x)`.
#[inline(always)]
fn quick_gelu_slice(v: &mut [f32]) {
    for x in v {
        *x *= sigmoid(1.702 * *x);
    }
}

/// The logistic function from `e = e^-|z|` (which never overflows):
/// `1 / (1 + e)` for z ≥ 0, `e / (1 + e)` below.
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    let e = exp(-z.abs());
    let num = if z >= 0.0 { 1.0 } else { e };
    num / (1.0 + e)
}

/// GELU in place, `x/2 · (1 + erf(x/√2))`, erf by Abramowitz & Stegun
/// 7.1.26 (absolute error ≤ 1.5e-7) with the vectorising [`exp`].
#[inline(always)]
fn gelu_slice(v: &mut [f32]) {
    for x in v {
        let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * z);
        let poly = t
            * (0.254_829_6
                + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
        let erf = 1.0 - poly * exp(-z * z);
        let erf = if *x >= 0.0 { erf } else { -erf };
        *x *= 0.5 * (1.0 + erf);
    }
}

/// Softmax of one row in place: `e^(x - max) / Σ`. The max and the sum are
/// taken over 8 lanes (a float reduction in one accumulator would keep the
/// loop, and the `exp` in it, from vectorising).
#[inline(always)]
fn softmax_row(v: &mut [f32]) {
    const LANES: usize = 8;
    let lanes = |v: &[f32], init: f32, f: fn(f32, f32) -> f32| {
        let mut acc = [init; LANES];
        let mut chunks = v.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a = f(*a, x);
            }
        }
        chunks
            .remainder()
            .iter()
            .fold(acc.into_iter().fold(init, f), |a, &x| f(a, x))
    };
    let max = lanes(v, f32::NEG_INFINITY, f32::max);
    for x in v.iter_mut() {
        *x = exp(*x - max);
    }
    let inv = 1.0 / lanes(v, 0.0, |a, b| a + b);
    for x in v {
        *x *= inv;
    }
}

/// `e^x` within 2e-7 relative of the exact value over [-87, 88], 0 below,
/// infinity above, written without branches or calls so that loops over it
/// vectorise: `x = n ln2 + r`, |r| ≤ ln2/2, `e^r` by its degree-7 Taylor
/// polynomial, `2^n` built in the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·ln2 is exact for |n| ≤ 128 (Cody–Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds |t| < 2^22 to the nearest
    // integer in two adds. `floor` would be one instruction in wasm but a
    // call to libm's `floorf` on x86-64 without SSE4.1 (9% of a native
    // decode, and the loop stayed scalar).
    const ROUND: f32 = 12_582_912.0;
    let c = x.clamp(-87.0, 88.0);
    let n = (c * LOG2E + ROUND) - ROUND;
    let r = (c - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n ∈ [-126, 127] here, so 2^n is a normal f32.
    let y = p * f32::from_bits((((n as i32) + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.000_37;
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(1000.0), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_matches_the_definition() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.0031).collect();
        let mut got = xs.clone();
        gelu_slice(&mut got);
        // No erf in std: Burn's own CPU op is the reference.
        let device = Device::flex();
        let t = Tensor::<1>::from_floats(xs.as_slice(), &device);
        let want: Vec<f32> = activation::gelu(t.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let ours: Vec<f32> = gelu(t).into_data().try_to_vec::<f32>().unwrap();
        for ((&x, &w), (&g, &o)) in xs.iter().zip(&want).zip(got.iter().zip(&ours)) {
            assert!(
                (g - w).abs() <= 3e-7 * w.abs().max(1.0),
                "gelu({x}) = {g}, Burn {w}"
            );
            assert_eq!(g.to_bits(), o.to_bits(), "tensor path = slice path at {x}");
        }
        let mut edge = [f32::MIN, f32::MAX, 0.0];
        gelu_slice(&mut edge);
        assert_eq!(edge, [-0.0, f32::MAX, 0.0]);
    }

    #[test]
    fn softmax_matches_burn_on_rows() {
        let device = Device::flex();
        let xs: Vec<f32> = (0..6 * 77)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.7)
            .collect();
        let mut masked = xs.clone();
        masked[3] = f32::MIN; // a causal mask's entry
        let t = Tensor::<2>::from_data(TensorData::new(masked, [6, 77]), &device);
        let want: Vec<f32> = activation::softmax(t.clone(), 1)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let got: Vec<f32> = softmax(t).into_data().try_to_vec::<f32>().unwrap();
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() <= 1e-6, "{g} vs Burn {w}");
        }
        assert_eq!(got[3], 0.0);
        for row in got.chunks(77) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn quick_gelu_matches_burn() {
        let device = Device::flex();
        let xs: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.011).collect();
        let t = Tensor::<1>::from_floats(xs.as_slice(), &device);
        let want: Vec<f32> = (t.clone() * activation::sigmoid(t.clone().mul_scalar(1.702)))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let got: Vec<f32> = quick_gelu(t).into_data().try_to_vec::<f32>().unwrap();
        for ((x, w), g) in xs.iter().zip(&want).zip(&got) {
            assert!(
                (w - g).abs() <= 3e-7 * w.abs().max(1.0),
                "quick_gelu({x}) = {g}, Burn {w}"
            );
        }
    }

    #[test]
    fn silu_matches_the_definition() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.0237).collect();
        let mut got = xs.clone();
        silu_slice(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            assert!(
                (g as f64 - want).abs() <= 2e-7 * want.abs().max(1e-3),
                "silu({x}) = {g}, want {want}"
            );
        }
        let mut edge = [f32::MIN, -1e4, 1e4, f32::MAX, 0.0, f32::NAN];
        silu_slice(&mut edge);
        assert_eq!(edge[..5], [-0.0, -0.0, 1e4, f32::MAX, 0.0]);
        assert!(edge[5].is_nan());
    }
}
