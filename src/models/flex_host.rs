//! The values of f32 tensors on Burn's CPU backend (flex), read in place,
//! and the linear layers' matrix products over them, spread over the CPU
//! pool.
//!
//! `Tensor::into_data` copies a tensor whose buffer is shared, and a
//! parameter's always is: the direct convolution kernel (`conv.rs`) copied
//! every convolution's weights on every call. [`Values`] borrows them.
//!
//! Flex multiplies a product under 192³ multiply-adds on one thread. On the
//! threaded CPU path that left the pool's other threads idle through most of
//! the shipped model's linear layers: in a 2-thread browser profile of 20
//! images the page's worker ran 222 ms of gemm, the pool's other thread 50
//! ms. Splitting them through Burn's ops (`slice`, `matmul`, `cat`) cost as
//! much in copies as it gained, so only products from 2²⁰ multiply-adds
//! were split. [`matmul_add`] instead gives each thread a block of rows of
//! one output buffer, with the bias written first and the product added to
//! it by gemm, so a linear layer is one pass with no separate bias add, and
//! splits from 2¹⁷.

use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, Device, Tensor, TensorData};

/// An f32 tensor's values on flex, borrowed in place (a tensor that is not
/// laid out contiguously is copied once).
pub struct Values {
    tensor: FlexTensor,
    start: usize,
    end: usize,
}

impl Values {
    /// `x`'s values, if it is an f32 tensor on flex.
    pub fn of<const D: usize>(x: &Tensor<D>) -> Option<Self> {
        if x.dtype() != DType::F32 || x.device() != Device::flex() {
            return None;
        }
        let mut tensor = x.clone().try_into_primitive::<Flex>().ok()?;
        if tensor.layout().contiguous_offsets().is_none() {
            tensor = tensor.to_contiguous();
        }
        let (start, end) = tensor.layout().contiguous_offsets()?;
        (end <= tensor.storage::<f32>().len()).then_some(Self { tensor, start, end })
    }

    /// The values, in row-major order of the tensor's shape.
    pub fn values(&self) -> &[f32] {
        &self.tensor.storage::<f32>()[self.start..self.end]
    }
}

/// A tensor of `shape` on flex holding `values` (moved, not copied).
pub fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), &Device::flex())
}

/// A matrix operand of [`matmul_add`]: element `(r, c)` is
/// `values[r · row_stride + c · col_stride]`.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub values: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Operand<'_> {
    /// Whether every element of a `rows × cols` operand lies in `values`.
    fn holds(&self, [rows, cols]: [usize; 2]) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.row_stride)
            .zip((cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c));
        last.is_some_and(|last| last < self.values.len())
    }
}

/// `bias + lhs · rhs` for `lhs` `[m, k]`, `rhs` `[k, n]` and `bias` `[n]`
/// (added to every row; none is zeros), `[m, n]` row-major. Blocks
/// of rows are spread over the CPU pool's threads from [`SPLIT_FROM`]
/// multiply-adds; from [`RAYON_FROM`] the product is left to gemm's own
/// split where the pool is rayon's (as flex does).
///
/// # Panics
/// If an operand or the bias does not hold the shapes given.
pub fn matmul_add(
    [m, n, k]: [usize; 3],
    lhs: Operand,
    rhs: Operand,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(lhs.holds([m, k]), "lhs shape");
    assert!(rhs.holds([k, n]), "rhs shape");
    assert!(bias.is_none_or(|b| b.len() == n), "bias shape");
    let mut out = vec![0.0f32; m.checked_mul(n).expect("output size")];
    if out.is_empty() {
        return out;
    }
    // Rows `first..` of the output into `part` (zeros until then).
    let job = |first: usize, part: &mut [f32], parallelism: gemm::Parallelism| {
        if let Some(b) = bias {
            part.chunks_exact_mut(n).for_each(|r| r.copy_from_slice(b));
        }
        if k == 0 {
            return;
        }
        // SAFETY: `holds` checked that every element of both operands is in
        // bounds; these are rows `first..first + rows` of `lhs`, and `part`
        // is `rows × n` values.
        unsafe {
            gemm::gemm(
                part.len() / n,
                n,
                k,
                part.as_mut_ptr(),
                1,
                n as isize,
                true,
                lhs.values.as_ptr().add(first * lhs.row_stride),
                lhs.col_stride as isize,
                lhs.row_stride as isize,
                rhs.values.as_ptr(),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    let work = m * n * k;
    let threads = crate::cpu_pool::threads();
    #[cfg(any(not(target_family = "wasm"), feature = "threads"))]
    if threads > 1 && work >= RAYON_FROM {
        job(0, &mut out, gemm::Parallelism::Rayon(threads));
        return out;
    }
    // One block per thread, of at least `SPLIT_ROWS` rows.
    let parts = if threads > 1 && work >= SPLIT_FROM {
        threads.min(m / SPLIT_ROWS).max(1)
    } else {
        1
    };
    let rows = m.div_ceil(parts);
    crate::cpu_pool::for_each_chunk_mut(&mut out, rows * n, |i, part| {
        job(i * rows, part, gemm::Parallelism::None)
    });
    out
}

/// Multiply-adds from which [`matmul_add`] splits a product's rows over the
/// pool's threads.
const SPLIT_FROM: usize = 1 << 17;
/// Rows per block at least.
const SPLIT_ROWS: usize = 8;
/// Multiply-adds from which gemm splits a product itself, as flex does from
/// 192³.
#[cfg(any(not(target_family = "wasm"), feature = "threads"))]
const RAYON_FROM: usize = 192 * 192 * 192;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// `matmul_add` against a plain triple loop, for split, unsplit and
    /// rayon-split sizes, a transposed operand, with and without a bias, on
    /// rayon's pool and on the team of `run_on_cpu_pool`.
    #[test]
    fn matmul_add_matches_a_triple_loop() {
        let value = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 250.0;
        for [m, n, k] in [
            [154, 640, 80],
            [64, 48, 96],
            [5, 3, 0],
            [9, 1, 17],
            [200, 200, 200],
        ] {
            let a: Vec<f32> = (0..m * k).map(value).collect();
            // rhs stored transposed ([n][k]), as a linear layer's weight.
            let w: Vec<f32> = (0..n * k).map(|i| value(i + 13)).collect();
            let b: Vec<f32> = (0..n).map(|i| value(i + 5)).collect();
            for bias in [Some(&b[..]), None] {
                let want: Vec<f32> = (0..m * n)
                    .map(|i| {
                        let (r, c) = (i / n, i % n);
                        let start = bias.map_or(0.0, |b| b[c]);
                        (0..k).fold(start as f64, |s, j| {
                            s + a[r * k + j] as f64 * w[c * k + j] as f64
                        }) as f32
                    })
                    .collect();
                let run = || {
                    let lhs = Operand {
                        values: &a,
                        row_stride: k,
                        col_stride: 1,
                    };
                    let rhs = Operand {
                        values: &w,
                        row_stride: 1,
                        col_stride: k,
                    };
                    matmul_add([m, n, k], lhs, rhs, bias)
                };
                for got in [run(), crate::run_on_cpu_pool(run)] {
                    let diff = got
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (g - w).abs())
                        .fold(0.0f32, f32::max);
                    assert!(diff < 1e-3, "{m}×{n}×{k}: max diff {diff}");
                }
            }
        }
    }

    /// Operands that do not hold their shapes are refused before any read.
    #[test]
    #[should_panic(expected = "rhs shape")]
    fn short_operands_are_refused() {
        let a = vec![1.0f32; 12];
        let lhs = Operand {
            values: &a,
            row_stride: 4,
            col_stride: 1,
        };
        let rhs = Operand {
            values: &a[..11],
            row_stride: 3,
            col_stride: 1,
        };
        matmul_add([3, 3, 4], lhs, rhs, None);
    }

    /// Values of a shared parameter, a transposed view and a slice read as
    /// `into_data` reads them.
    #[test]
    fn values_match_into_data() {
        let device = Device::flex();
        let x = Tensor::<3>::random([3, 4, 5], Distribution::Normal(0.0, 1.0), &device);
        let shared = x.clone();
        let views = [
            shared,
            x.clone().swap_dims(1, 2),
            x.clone().slice([1..3, 0..4, 0..5]),
        ];
        for view in views {
            let got = Values::of(&view).expect("f32 on flex");
            let want = view.into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(got.values(), &want[..]);
        }
    }
}
