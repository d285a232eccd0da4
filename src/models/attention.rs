//! `Attention`, `FeedForward` (GEGLU), `BasicTransformerBlock` and
//! `Transformer2DModel` (diffusers `attention_processor.py`, `attention.py`,
//! `transformers/transformer_2d.py`).

use super::conv;
use crate::models::activations::{gelu, softmax};
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, Linear};
use burn::tensor::{DType, Tensor};
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
/// `mask` (f32, broadcast to `[B, H, N, M]`) is added to the scores. Queries
/// are taken in slices whose scores fit [`set_attention_max_bytes`]; each
/// slice's result is exact, so slicing changes nothing but the memory used.
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
        let normed = self.norm.forward(x.clone());
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
