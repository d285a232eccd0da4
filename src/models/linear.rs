//! `nn.Linear`'s forward, `x Wᵀ + b`, with the weight as PyTorch stores it.
//!
//! Burn's `Linear` holds its weight `[in, out]`. Loaded as a transposed view
//! of PyTorch's `[out, in]`, that weight was reshaped on every call, and flex
//! copies a transposed view whole to reshape it: 7% of `tools/bench.sh`'s
//! UNet in `perf`. Laying it out `[in, out]` at load instead added 113 MiB to
//! the peak wasm memory of loading BK-SDM-Tiny on the CPU path. Here the
//! input's leading dimensions fold into rows and one matrix product reads
//! the stored weight transposed in place (gemm takes strides), so the weight
//! is never copied, at load or per call. On flex that product starts from the
//! bias and is split over the CPU pool's threads (`flex_host::matmul_add`).

use super::flex_host::{self, Operand, Values};
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
        dims[D - 1] = d_out;
        if let Some(y) = on_host(&x, &weight, self.bias.as_ref(), rows) {
            return flex_host::tensor(y, dims);
        }
        let y = x.reshape([rows, d_in]).matmul(weight.transpose());
        let y = match &self.bias {
            Some(b) => y + b.val().reshape([1, d_out]),
            None => y,
        };
        y.reshape(dims)
    }
}

/// `x Wᵀ + b` for f32 tensors on flex: the values `[rows, out]`, by one
/// [`flex_host::matmul_add`] that reads `x` and the stored weight in place
/// and splits the rows over the CPU pool's threads; `None` on any other
/// device or dtype.
fn on_host<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Param<Tensor<1>>>,
    rows: usize,
) -> Option<Vec<f32>> {
    let [d_out, d_in] = weight.dims();
    let w = Values::of(weight)?;
    let b = match bias {
        Some(b) => Some(Values::of(&b.val())?),
        None => None,
    };
    let x = Values::of(x)?;
    // Wᵀ `[in, out]` read from W `[out, in]`: row i, column o at `o·in + i`.
    Some(flex_host::matmul_add(
        [rows, d_out, d_in],
        Operand {
            values: x.values(),
            row_stride: d_in,
            col_stride: 1,
        },
        Operand {
            values: w.values(),
            row_stride: 1,
            col_stride: d_in,
        },
        b.as_ref().map(|b| b.values()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// The forward on flex (one `matmul_add`, split over the threads for
    /// the larger sizes) gives what Burn's ops give, with and without a
    /// bias, on rayon's pool and on the team of `run_on_cpu_pool`.
    #[test]
    fn forward_matches_burn_ops() {
        let device = Device::flex();
        let normal = Distribution::Normal(0.0, 1.0);
        for [batch, tokens, d_in, d_out] in [
            [2, 77, 80, 640],
            [1, 3, 5, 7],
            [1, 64, 64, 64],
            [2, 64, 320, 320],
        ] {
            let x = Tensor::<3>::random([batch, tokens, d_in], normal, &device);
            let weight = Tensor::<2>::random([d_out, d_in], normal, &device);
            let bias = Tensor::<1>::random([d_out], normal, &device);
            for with_bias in [true, false] {
                let linear = Linear {
                    weight: Param::from_tensor(weight.clone()),
                    bias: with_bias.then(|| Param::from_tensor(bias.clone())),
                };
                let mut want = x.clone().matmul(weight.clone().transpose().unsqueeze());
                if with_bias {
                    want = want + bias.clone().reshape([1, 1, d_out]);
                }
                let team = crate::run_on_cpu_pool(|| linear.forward(x.clone()));
                for got in [linear.forward(x.clone()), team] {
                    assert_eq!(got.dims(), [batch, tokens, d_out]);
                    let diff: f32 = (got - want.clone()).abs().max().into_scalar();
                    assert!(diff < 1e-4, "max diff {diff}");
                }
            }
        }
    }
}
