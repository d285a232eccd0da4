//! `nn.Linear`'s forward, `x Wᵀ + b`, with the weight as PyTorch stores it.
//!
//! Burn's `Linear` holds its weight `[in, out]`. Loaded as a transposed view
//! of PyTorch's `[out, in]`, that weight was reshaped on every call, and flex
//! copies a transposed view whole to reshape it: 7% of `tools/bench.sh`'s
//! UNet in `perf`. Laying it out `[in, out]` at load instead added 113 MiB to
//! the peak wasm memory of loading BK-SDM-Tiny on the CPU path. Here the
//! input's leading dimensions fold into rows and one matrix product reads
//! the stored weight transposed in place (flex's gemm takes strides), so the
//! weight is never copied, at load or per call.

use burn::module::Param;
use burn::tensor::Tensor;

/// `nn.Linear`: `weight` `[out, in]` and `bias` `[out]`, PyTorch's keys and
/// layout.
#[derive(burn::module::Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// PyTorch's `in_features`.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// PyTorch's `out_features`.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x` `[..., in]` → `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let weight = self.weight.val();
        let [d_out, d_in] = weight.dims();
        let y = matmul(x.reshape([rows, d_in]), weight.transpose());
        let y = match &self.bias {
            Some(b) => y + b.val().reshape([1, d_out]),
            None => y,
        };
        dims[D - 1] = d_out;
        y.reshape(dims)
    }
}

/// `x · wt` for `x` `[rows, in]` and `wt` `[in, out]`. On the CPU pool's
/// threads (natively, or the threaded browser module) a product too small
/// for flex to split (under 192³ multiply-adds) but large enough to pay for
/// a second thread ([`SPLIT_FROM`]) is split by rows of `x`, one product per
/// thread.
fn matmul(x: Tensor<2>, wt: Tensor<2>) -> Tensor<2> {
    use burn::tensor::{DType, Device};
    let [rows, d_in] = x.dims();
    let work = rows * d_in * wt.dims()[1];
    let threads = crate::cpu_pool::threads().min(rows / SPLIT_ROWS);
    if threads < 2
        || !(SPLIT_FROM..FLEX_SPLITS_FROM).contains(&work)
        || x.dtype() != DType::F32
        || x.device() != Device::flex()
    {
        return x.matmul(wt);
    }
    let per = rows.div_ceil(threads);
    let mut parts: Vec<Option<Tensor<2>>> = (0..rows.div_ceil(per)).map(|_| None).collect();
    crate::cpu_pool::for_each_chunk_mut(&mut parts, 1, |i, part| {
        let x = x.clone().slice(i * per..((i + 1) * per).min(rows));
        part[0] = Some(x.matmul(wt.clone()));
    });
    Tensor::cat(parts.into_iter().flatten().collect(), 0)
}

/// Multiply-adds from which [`matmul`] splits a product over threads.
const SPLIT_FROM: usize = 1 << 20;
/// Rows per thread at least.
const SPLIT_ROWS: usize = 8;
/// Flex splits a product over threads itself from 192³ multiply-adds.
const FLEX_SPLITS_FROM: usize = 192 * 192 * 192;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// A product large enough to be split by rows gives what one product
    /// gives, on the team of `run_on_cpu_pool` and on rayon's pool; the
    /// product's size is in the split range.
    #[test]
    fn split_products_match_one_product() {
        let device = Device::flex();
        let [rows, d_in, d_out] = [77, 80, 640];
        assert!((SPLIT_FROM..FLEX_SPLITS_FROM).contains(&(rows * d_in * d_out)));
        let x = Tensor::<2>::random([rows, d_in], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([d_out, d_in], Distribution::Normal(0.0, 1.0), &device);
        let want = x.clone().matmul(w.clone().transpose());
        let team = crate::run_on_cpu_pool(|| matmul(x.clone(), w.clone().transpose()));
        for got in [matmul(x.clone(), w.clone().transpose()), team] {
            assert_eq!(got.dims(), [rows, d_out]);
            let diff: f32 = (got - want.clone()).abs().max().into_scalar();
            assert!(diff < 1e-4, "max diff {diff}");
        }
    }
}
