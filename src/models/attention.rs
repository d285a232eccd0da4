//! `Attention`, `FeedForward` (GEGLU), `BasicTransformerBlock` and
//! `Transformer2DModel` (diffusers `attention_processor.py`, `attention.py`,
//! `transformers/transformer_2d.py`).

use super::linear::Linear;
use super::{conv, normalization};
use crate::models::activations::{gelu, softmax};
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm};
use burn::tensor::{DType, Device, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};

use super::to_dtype;
use crate::weights::{VarBuilder, conv2d, group_norm, layer_norm, linear};

/// Multi-head scaled dot-product attention with diffusers' key names.
/// Cross-attention when a context is given to `forward`.
#[derive(burn::module::Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `to_out.0` (`to_out.1` is a parameter-free dropout).
    pub to_out: Vec<Linear>,
    pub heads: usize,
}

impl Attention {
    /// `query_dim` channels in, `heads × dim_head` inner width; keys and values
    /// from `context_dim` channels. `qkv_bias` is false in UNets, true in the VAE.
    pub fn load(
        vb: &VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        dim_head: usize,
        qkv_bias: bool,
    ) -> Self {
        let inner = heads * dim_head;
        Self {
            to_q: linear(&vb.pp("to_q"), query_dim, inner, qkv_bias),
            to_k: linear(&vb.pp("to_k"), context_dim, inner, qkv_bias),
            to_v: linear(&vb.pp("to_v"), context_dim, inner, qkv_bias),
            to_out: vec![linear(&vb.pp("to_out").pp(0), inner, query_dim, true)],
            heads,
        }
    }

    /// `x`: `[B, N, C]`; `context`: `[B, M, C_ctx]` or `None` for self-attention.
    pub fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        let ctx = context.cloned().unwrap_or_else(|| x.clone());
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(ctx.clone());
        let v = self.to_v.forward(ctx);
        let out = scaled_dot_product(q, k, v, self.heads, None);
        self.to_out[0].forward(out)
    }
}

/// The most bytes one attention score matrix may take (all heads and batch
/// elements of a block of queries). WebGPU binds at most
/// `maxStorageBufferBindingSize` bytes per buffer (128 MiB by default), so
/// attention over many tokens (4096 at 512×512) runs in query slices, as
/// diffusers' attention slicing does. Set from the device's limits.
static ATTENTION_MAX_BYTES: AtomicU64 = AtomicU64::new(128 << 20);

/// Sets the largest score matrix attention may materialise at once (at
/// least 1 byte: one query at a time); returns the previous value.
pub fn set_attention_max_bytes(bytes: u64) -> u64 {
    ATTENTION_MAX_BYTES.swap(bytes.max(1), Ordering::Relaxed)
}

/// Queries per slice so that `[b, heads, slice, m]` f32 scores fit the limit.
fn query_slice(b: usize, heads: usize, n: usize, m: usize) -> usize {
    let per_query = (b * heads * m * 4).max(1) as u64;
    let fit = ATTENTION_MAX_BYTES.load(Ordering::Relaxed) / per_query;
    (fit as usize).clamp(1, n.max(1))
}

/// softmax(Q Kᵀ / √d + mask) V over `heads` heads; inputs `[B, N, H·d]`.
/// `mask` (f32, broadcast to `[B, H, N, M]`) is added to the scores. f32 on
/// flex takes a kernel of its own ([`host`]), whose memory is bounded per
/// block of queries. Elsewhere queries are taken in slices whose scores fit
/// [`set_attention_max_bytes`]; each slice's result is exact, so slicing
/// changes nothing but the memory used.
/// In f16 the queries are scaled before the product (as PyTorch's attention
/// does, so the scores stay small) and the softmax runs in f32 (diffusers'
/// `upcast_softmax`), its probabilities then multiplied with V in f16.
pub fn scaled_dot_product(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    mask: Option<Tensor<4>>,
) -> Tensor<3> {
    let on_flex_f32 = |t: &Tensor<3>| t.dtype() == DType::F32 && t.device() == Device::flex();
    if on_flex_f32(&q) && on_flex_f32(&k) && on_flex_f32(&v) {
        host::attention(q, k, v, heads, mask)
    } else {
        on_device(q, k, v, heads, mask)
    }
}

/// `scaled_dot_product` by Burn's tensor ops.
fn on_device(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    mask: Option<Tensor<4>>,
) -> Tensor<3> {
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, d]).swap_dims(1, 2);
    let (q, k, v) = (split(q, n), split(k, m), split(v, m));
    let kt = k.swap_dims(2, 3);
    let scale = (d as f64).powf(-0.5) as f32;
    let dtype = v.dtype();
    let attend = |q: Tensor<4>, mask: Option<Tensor<4>>| {
        let mut scores = if dtype == DType::F32 {
            q.matmul(kt.clone()).mul_scalar(scale)
        } else {
            q.mul_scalar(scale).matmul(kt.clone()).cast(DType::F32)
        };
        if let Some(mask) = mask {
            scores = scores + mask;
        }
        to_dtype(softmax(scores), dtype).matmul(v.clone())
    };
    let slice = query_slice(b, heads, n, m);
    let out = if slice >= n {
        attend(q, mask)
    } else {
        let parts = (0..n)
            .step_by(slice)
            .map(|start| {
                let end = (start + slice).min(n);
                let mask = mask.as_ref().map(|mk| {
                    let [mb, mh, mn, mm] = mk.dims();
                    if mn == 1 {
                        mk.clone()
                    } else {
                        mk.clone().slice([0..mb, 0..mh, start..end, 0..mm])
                    }
                });
                attend(q.clone().slice([0..b, 0..heads, start..end, 0..d]), mask)
            })
            .collect();
        Tensor::cat(parts, 2)
    };
    out.swap_dims(1, 2).reshape([b, n, inner])
}

/// Attention on Burn's CPU backend, read from and written in the
/// projections' `[B, N, H·d]` layout. Burn's ops would split the heads into
/// `[B, H, N, d]` copies, scale the scores in a pass of their own, copy them
/// to and from host memory for the softmax and copy the output back; here
/// each job takes a block of one batch item's queries through every head:
/// scaled scores by one gemm, the mask added, a vectorised softmax, the
/// output by a second gemm written in place. A job's scores are at most
/// [`SCORES`](host::SCORES) values (1 MiB, a Zen 4 core's L2), so no `[N, M]`
/// matrix is built at 512×512 and memory is bounded at any token count.
/// Natively the jobs are spread over rayon's threads. Attention took 4.2 of
/// `tools/bench.sh`'s 21 ms UNet; the UNet went from 17.0 to 15.0 ms.
/// BK-SDM-Tiny at 512² (`benches/layout_unet.rs`, 4096 tokens) took 6.2 s
/// with 16,384 scores per job, 4.7 s with 65,536, 4.5 s with 262,144 and
/// 4.3 s with 1,048,576.
mod host {
    use super::super::activations::softmax_rows;
    use super::super::flex_host::{self, Values};
    use burn::tensor::Tensor;

    /// Scores per job at most (one block of queries against all keys).
    pub(super) const SCORES: usize = 262_144;

    /// `scaled_dot_product` for f32 tensors on flex, their values read in
    /// place.
    pub(super) fn attention(
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        heads: usize,
        mask: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let [b, n, inner] = q.dims();
        let m = k.dims()[1];
        let mask_values = match &mask {
            Some(mk) => Values::of(mk).map(|v| Some((mk.dims(), v))),
            None => Some(None),
        };
        let (Some(qv), Some(kv), Some(vv), Some(mask_values)) =
            (Values::of(&q), Values::of(&k), Values::of(&v), mask_values)
        else {
            // Not f32 after all (a mask in another dtype): Burn's ops.
            return super::on_device(q, k, v, heads, mask);
        };
        let mask = mask_values.as_ref().map(|(dims, v)| (*dims, v.values()));
        let out = attend(
            qv.values(),
            kv.values(),
            vv.values(),
            [b, n, m, heads, inner / heads],
            mask,
        );
        flex_host::tensor(out, [b, n, inner])
    }

    /// An additive mask: its dims `[mb, mh, mn, M]` (each of the first three
    /// 1 or full) and values.
    type Mask<'a> = Option<([usize; 4], &'a [f32])>;

    /// softmax(Q Kᵀ / √d + mask) V for `q` `[b][n][heads·d]` and `k`, `v`
    /// `[b][m][heads·d]`; the output `[b][n][heads·d]`.
    fn attend(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        [b, n, m, heads, d]: [usize; 5],
        mask: Mask,
    ) -> Vec<f32> {
        let inner = heads * d;
        assert!(q.len() == b * n * inner && k.len() == b * m * inner && v.len() == k.len());
        if let Some(([mb, mh, mn, mm], values)) = mask {
            let fits = |dim, full| dim == 1 || dim == full;
            assert!(fits(mb, b) && fits(mh, heads) && fits(mn, n) && mm == m);
            assert_eq!(values.len(), mb * mh * mn * mm);
        }
        let mut out = vec![0.0f32; b * n * inner];
        if out.is_empty() || m == 0 {
            return out;
        }
        // Blocks of equal size, each at most `SCORES / m` queries.
        let blocks = n.div_ceil((SCORES / m).max(1));
        let rows = n.div_ceil(blocks);
        let scale = (d as f64).powf(-0.5) as f32;
        let job = |bi: usize, first: usize, out: &mut [f32]| {
            let r = out.len() / inner;
            let mut scores = vec![0.0f32; r * m];
            for h in 0..heads {
                let (qh, kh, vh) = (
                    &q[(bi * n + first) * inner + h * d..],
                    &k[bi * m * inner + h * d..],
                    &v[bi * m * inner + h * d..],
                );
                // SAFETY: every read stays in its slice: a head's last row
                // (the r-th query, the m-th key or value) starts (r - 1)·inner
                // or (m - 1)·inner past the slice's start and is d values
                // long, within q, k and v by the length asserts.
                unsafe {
                    // scores = scale · Q Kᵀ (Kᵀ: column j is key j's row).
                    gemm::gemm(
                        r,
                        m,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        m as isize,
                        false,
                        qh.as_ptr(),
                        1,
                        inner as isize,
                        kh.as_ptr(),
                        inner as isize,
                        1,
                        0.0f32,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                if let Some(([mb, mh, mn, _], values)) = mask {
                    let plane = ((bi % mb) * mh + h % mh) * mn;
                    for (i, row) in scores.chunks_exact_mut(m).enumerate() {
                        let at = (plane + (first + i) % mn) * m;
                        for (s, &x) in row.iter_mut().zip(&values[at..at + m]) {
                            *s += x;
                        }
                    }
                }
                softmax_rows(&mut scores, m);
                // SAFETY: as above; the output block is r rows of `inner`.
                unsafe {
                    // out[:, h·d..(h + 1)·d] = P V.
                    gemm::gemm(
                        r,
                        d,
                        m,
                        out.as_mut_ptr().add(h * d),
                        1,
                        inner as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        m as isize,
                        vh.as_ptr(),
                        1,
                        inner as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        };
        // One job per block of one batch item's queries.
        let per_item = n.div_ceil(rows);
        let bounds: Vec<usize> = (0..b)
            .flat_map(|bi| (0..per_item).map(move |i| (bi * n + i * rows) * inner))
            .chain([b * n * inner])
            .collect();
        crate::cpu_pool::for_each_part_mut(&mut out, &bounds, |j, block| {
            job(j / per_item, (j % per_item) * rows, block)
        });
        out
    }
}

/// `GEGLU`: one projection to twice the width, halves multiplied as `a · gelu(b)`.
#[derive(burn::module::Module, Debug)]
pub struct Geglu {
    pub proj: Linear,
}

/// `FeedForward` with GEGLU: `net.0` (GEGLU), `net.1` (dropout), `net.2` (linear).
#[derive(burn::module::Module, Debug)]
pub struct FeedForward {
    pub net_0: Geglu,
    pub net_2: Linear,
}

impl FeedForward {
    pub fn load(vb: &VarBuilder, dim: usize) -> Self {
        let inner = 4 * dim;
        let net = vb.pp("net");
        Self {
            net_0: Geglu {
                proj: linear(&net.pp(0).pp("proj"), dim, 2 * inner, true),
            },
            net_2: linear(&net.pp(2), inner, dim, true),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.net_0.proj.forward(x);
        let mut halves = h.chunk(2, 2);
        let gate = halves.pop().expect("two halves");
        let hidden = halves.pop().expect("two halves");
        self.net_2.forward(hidden * gelu(gate))
    }
}

/// Self-attention, cross-attention and feed-forward, each pre-normed and residual.
#[derive(burn::module::Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(
        vb: &VarBuilder,
        dim: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
    ) -> Self {
        Self {
            norm1: layer_norm(&vb.pp("norm1"), dim, 1e-5),
            attn1: Attention::load(&vb.pp("attn1"), dim, dim, heads, dim_head, false),
            norm2: layer_norm(&vb.pp("norm2"), dim, 1e-5),
            attn2: Attention::load(&vb.pp("attn2"), dim, context_dim, heads, dim_head, false),
            norm3: layer_norm(&vb.pp("norm3"), dim, 1e-5),
            ff: FeedForward::load(&vb.pp("ff"), dim),
        }
    }

    pub fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context))
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// `proj_in` / `proj_out`: a 1×1 convolution, or a linear layer when
/// `use_linear_projection` (SD 2.x).
#[derive(burn::module::Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn load(vb: &VarBuilder, c_in: usize, c_out: usize, use_linear: bool) -> Self {
        if use_linear {
            Self::Linear(linear(vb, c_in, c_out, true))
        } else {
            Self::Conv(conv2d(vb, c_in, c_out, 1, 1, 0))
        }
    }
}

/// Spatial transformer: group norm, `proj_in`, transformer blocks over the
/// `H·W` tokens, `proj_out`, plus the input.
#[derive(burn::module::Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

/// The shape of one `Transformer2DModel`.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSpec {
    pub heads: usize,
    pub dim_head: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
}

impl Transformer2DModel {
    pub fn load(vb: &VarBuilder, channels: usize, s: TransformerSpec) -> Self {
        let inner = s.heads * s.dim_head;
        Self {
            norm: group_norm(&vb.pp("norm"), s.groups, channels, 1e-6),
            proj_in: Projection::load(&vb.pp("proj_in"), channels, inner, s.use_linear_projection),
            transformer_blocks: (0..s.layers)
                .map(|i| {
                    BasicTransformerBlock::load(
                        &vb.pp("transformer_blocks").pp(i),
                        inner,
                        s.heads,
                        s.dim_head,
                        s.context_dim,
                    )
                })
                .collect(),
            proj_out: Projection::load(
                &vb.pp("proj_out"),
                inner,
                channels,
                s.use_linear_projection,
            ),
        }
    }

    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let normed = normalization::group_norm(&self.norm, x.clone());
        let to_tokens = |t: Tensor<4>| {
            let ch = t.dims()[1];
            t.reshape([b, ch, h * w]).swap_dims(1, 2)
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(c) => to_tokens(conv::forward(c, normed)),
            Projection::Linear(lin) => lin.forward(to_tokens(normed)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context);
        }
        let from_tokens = |t: Tensor<3>| {
            let ch = t.dims()[2];
            t.swap_dims(1, 2).reshape([b, ch, h, w])
        };
        let out = match &self.proj_out {
            Projection::Conv(c) => conv::forward(c, from_tokens(tokens)),
            Projection::Linear(lin) => from_tokens(lin.forward(tokens)),
        };
        debug_assert_eq!(out.dims()[1], c);
        out + x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// The host kernel against Burn's ops on flex: several heads and batch
    /// items, keys fewer and more than queries, query blocks of uneven size
    /// and of one query (more keys than a job's scores), and additive masks
    /// of every broadcast form (the CLIP causal mask, per key, per head).
    #[test]
    fn host_kernel_matches_burns_ops() {
        let device = Device::flex();
        let causal = |n: usize| -> Vec<f32> {
            (0..n * n)
                .map(|i| if i % n > i / n { f32::MIN } else { 0.0 })
                .collect()
        };
        // [b, n, m, heads, d], mask dims
        let cases: [([usize; 5], Option<[usize; 4]>); 8] = [
            ([2, 37, 37, 4, 8], Some([1, 1, 37, 37])),
            ([1, 600, 600, 2, 4], Some([1, 1, 600, 600])),
            ([1, 5001, 77, 2, 8], None),
            ([1, 70, 300, 1, 5], Some([1, 1, 1, 300])),
            ([2, 9, 11, 3, 4], Some([2, 3, 9, 11])),
            ([2, 9, 11, 3, 4], Some([1, 3, 1, 11])),
            ([1, 3, 270_000, 1, 2], None),
            ([1, 0, 5, 2, 2], None),
        ];
        for (i, ([b, n, m, heads, d], mask_dims)) in cases.into_iter().enumerate() {
            let inner = heads * d;
            let seed = 10 * i as u64;
            let t = |len, dims: [usize; 3], s| {
                Tensor::<3>::from_data(TensorData::new(values(len, s), dims), &device)
            };
            let q = t(b * n * inner, [b, n, inner], seed);
            let k = t(b * m * inner, [b, m, inner], seed + 1);
            let v = t(b * m * inner, [b, m, inner], seed + 2);
            let mask = mask_dims.map(|dims| {
                let len = dims.iter().product();
                let vals = if dims == [1, 1, n, n] {
                    causal(n)
                } else {
                    values(len, seed + 3)
                };
                Tensor::<4>::from_data(TensorData::new(vals, dims), &device)
            });
            let want = on_device(q.clone(), k.clone(), v.clone(), heads, mask.clone());
            let got = host::attention(q, k, v, heads, mask);
            assert_eq!(got.dims(), [b, n, inner], "case {i}");
            let want = want.into_data().try_to_vec::<f32>().unwrap();
            let got = got.into_data().try_to_vec::<f32>().unwrap();
            let diff = got
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-5, "case {i}: max diff {diff:e}");
        }
    }
}
