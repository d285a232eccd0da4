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
        let y = x.reshape([rows, d_in]).matmul(weight.transpose());
        let y = match &self.bias {
            Some(b) => y + b.val().reshape([1, d_out]),
            None => y,
        };
        dims[D - 1] = d_out;
        y.reshape(dims)
    }
}
