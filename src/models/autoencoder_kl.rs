//! `AutoencoderKL` (diffusers `autoencoders/autoencoder_kl.py`, `vae.py`):
//! images to latent means and latents back to images.

use super::{conv, normalization};
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Tensor, TensorData};
use serde::Deserialize;

use super::attention::Attention;
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::to_dtype;
use crate::config::parse_config;
use crate::error::{Error, Result};
use crate::weights::{VarBuilder, conv2d, group_norm};

/// `vae/config.json` for an `AutoencoderKL`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: Option<usize>,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: None,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKLConfig {
    /// Parses and validates `vae/config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        let c: Self = parse_config(json, "vae/config.json")?;
        let bad = |k: &str, v: &dyn std::fmt::Debug, why: &str| {
            Err(Error::Config(format!(
                "vae/config.json: {k} = {v:?} is not supported: {why}"
            )))
        };
        let f = "vae/config.json";
        let chans = c.block_out_channels.iter();
        crate::config::at_most(f, chans.map(|&v| ("block_out_channels", v)), 4096)?;
        crate::config::at_most(
            f,
            [
                ("blocks", c.block_out_channels.len()),
                ("layers_per_block", c.layers_per_block),
            ],
            8,
        )?;
        crate::config::at_most(
            f,
            [
                ("in_channels", c.in_channels),
                ("out_channels", c.out_channels),
                ("latent_channels", c.latent_channels),
            ],
            64,
        )?;
        if c.norm_num_groups == 0 {
            return bad("norm_num_groups", &0, "must be at least 1");
        }
        if c.act_fn != "silu" {
            return bad("act_fn", &c.act_fn, "only silu is implemented");
        }
        if c.block_out_channels.is_empty() {
            return bad(
                "block_out_channels",
                &c.block_out_channels,
                "needs at least one block",
            );
        }
        if let Some(t) = c
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return bad(
                "down_block_types",
                t,
                "only DownEncoderBlock2D is implemented",
            );
        }
        if let Some(t) = c.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return bad("up_block_types", t, "only UpDecoderBlock2D is implemented");
        }
        let n = c.block_out_channels.len();
        if c.down_block_types.len() != n || c.up_block_types.len() != n {
            return bad(
                "down_block_types/up_block_types",
                &(c.down_block_types.len(), c.up_block_types.len()),
                &format!("need one entry per block_out_channels entry ({n})"),
            );
        }
        if let Some(ch) = c
            .block_out_channels
            .iter()
            .find(|ch| !ch.is_multiple_of(c.norm_num_groups))
        {
            return bad(
                "block_out_channels",
                ch,
                &format!("not divisible by norm_num_groups = {}", c.norm_num_groups),
            );
        }
        Ok(c)
    }
}

/// The VAE's single-head spatial self-attention with its own group norm
/// (keys `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`, all with bias).
#[derive(burn::module::Module, Debug)]
pub struct SpatialAttention {
    pub group_norm: GroupNorm,
    pub attn: Attention,
}

impl SpatialAttention {
    fn load(vb: &VarBuilder, channels: usize, groups: usize) -> Self {
        Self {
            group_norm: group_norm(&vb.pp("group_norm"), groups, channels, 1e-6),
            attn: Attention::load(vb, channels, channels, 1, channels, true),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = normalization::group_norm(&self.group_norm, x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let out = self.attn.forward(tokens, None);
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}

/// `UNetMidBlock2D` without time embedding: resnet, attention, resnet.
#[derive(burn::module::Module, Debug)]
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<SpatialAttention>,
}

impl UNetMidBlock2D {
    fn load(vb: &VarBuilder, channels: usize, groups: usize, attention: bool) -> Self {
        let resnet = |i: usize| {
            ResnetBlock2D::load(
                &vb.pp("resnets").pp(i),
                channels,
                channels,
                None,
                groups,
                1e-6,
            )
        };
        Self {
            resnets: vec![resnet(0), resnet(1)],
            attentions: attention
                .then(|| SpatialAttention::load(&vb.pp("attentions").pp(0), channels, groups))
                .into_iter()
                .collect(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        if let Some(attn) = self.attentions.first() {
            x = attn.forward(x);
        }
        self.resnets[1].forward(x, None)
    }
}

/// `DownEncoderBlock2D` / `UpDecoderBlock2D`: resnets plus an optional resampler.
#[derive(burn::module::Module, Debug)]
pub struct EncoderBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsamplers: Vec<Downsample2D>,
}

#[derive(burn::module::Module, Debug)]
pub struct DecoderBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsamplers: Vec<Upsample2D>,
}

fn resnets(
    vb: &VarBuilder,
    c_in: usize,
    c_out: usize,
    n: usize,
    groups: usize,
) -> Vec<ResnetBlock2D> {
    (0..n)
        .map(|j| {
            ResnetBlock2D::load(
                &vb.pp("resnets").pp(j),
                if j == 0 { c_in } else { c_out },
                c_out,
                None,
                groups,
                1e-6,
            )
        })
        .collect()
}

/// The image encoder: to `2 × latent_channels` moments (mean, log-variance).
#[derive(burn::module::Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<EncoderBlock>,
    pub mid_block: UNetMidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    fn load(vb: &VarBuilder, c: &AutoencoderKLConfig) -> Self {
        let boc = &c.block_out_channels;
        let n = boc.len();
        let g = c.norm_num_groups;
        Self {
            conv_in: conv2d(&vb.pp("conv_in"), c.in_channels, boc[0], 3, 1, 1),
            down_blocks: (0..n)
                .map(|i| {
                    let vb = vb.pp("down_blocks").pp(i);
                    let c_in = if i == 0 { boc[0] } else { boc[i - 1] };
                    EncoderBlock {
                        resnets: resnets(&vb, c_in, boc[i], c.layers_per_block, g),
                        downsamplers: (i + 1 < n)
                            .then(|| Downsample2D::load(&vb.pp("downsamplers").pp(0), boc[i], 0))
                            .into_iter()
                            .collect(),
                    }
                })
                .collect(),
            mid_block: UNetMidBlock2D::load(
                &vb.pp("mid_block"),
                boc[n - 1],
                g,
                c.mid_block_add_attention,
            ),
            conv_norm_out: group_norm(&vb.pp("conv_norm_out"), g, boc[n - 1], 1e-6),
            conv_out: conv2d(
                &vb.pp("conv_out"),
                boc[n - 1],
                2 * c.latent_channels,
                3,
                1,
                1,
            ),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = conv::forward(&self.conv_in, x);
        for block in &self.down_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for d in &block.downsamplers {
                x = d.forward(x);
            }
        }
        let x = self.mid_block.forward(x);
        conv::forward(
            &self.conv_out,
            normalization::group_norm_silu(&self.conv_norm_out, x),
        )
    }
}

/// The image decoder: latents to RGB in about [-1, 1].
#[derive(burn::module::Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2D,
    pub up_blocks: Vec<DecoderBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    fn load(vb: &VarBuilder, c: &AutoencoderKLConfig) -> Self {
        let boc = &c.block_out_channels;
        let n = boc.len();
        let g = c.norm_num_groups;
        Self {
            conv_in: conv2d(&vb.pp("conv_in"), c.latent_channels, boc[n - 1], 3, 1, 1),
            mid_block: UNetMidBlock2D::load(
                &vb.pp("mid_block"),
                boc[n - 1],
                g,
                c.mid_block_add_attention,
            ),
            up_blocks: (0..n)
                .map(|i| {
                    let vb = vb.pp("up_blocks").pp(i);
                    let c_prev = boc[n - 1 - i.saturating_sub(1)];
                    let c_out = boc[n - 1 - i];
                    DecoderBlock {
                        resnets: resnets(&vb, c_prev, c_out, c.layers_per_block + 1, g),
                        upsamplers: (i + 1 < n)
                            .then(|| Upsample2D::load(&vb.pp("upsamplers").pp(0), c_out))
                            .into_iter()
                            .collect(),
                    }
                })
                .collect(),
            conv_norm_out: group_norm(&vb.pp("conv_norm_out"), g, boc[0], 1e-6),
            conv_out: conv2d(&vb.pp("conv_out"), boc[0], c.out_channels, 3, 1, 1),
        }
    }

    fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = self.mid_block.forward(conv::forward(&self.conv_in, z));
        for block in &self.up_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for u in &block.upsamplers {
                x = u.forward(x, None);
            }
        }
        conv::forward(
            &self.conv_out,
            normalization::group_norm_silu(&self.conv_norm_out, x),
        )
    }
}

/// The KL autoencoder. `encode` gives the posterior mean; the pipeline
/// scales latents with [`AutoencoderKL::scale_latents`].
#[derive(burn::module::Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    latent_channels: usize,
    scaling_factor: f64,
    shift_factor: f64,
}

impl AutoencoderKL {
    pub fn load(vb: &VarBuilder, c: &AutoencoderKLConfig) -> Self {
        let l = c.latent_channels;
        Self {
            encoder: Encoder::load(&vb.pp("encoder"), c),
            decoder: Decoder::load(&vb.pp("decoder"), c),
            quant_conv: c
                .use_quant_conv
                .then(|| conv2d(&vb.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)),
            post_quant_conv: c
                .use_post_quant_conv
                .then(|| conv2d(&vb.pp("post_quant_conv"), l, l, 1, 1, 0)),
            latent_channels: l,
            scaling_factor: c.scaling_factor,
            shift_factor: c.shift_factor.unwrap_or(0.0),
        }
    }

    /// Images in [-1, 1] → the mean of q(z | x), unscaled.
    pub fn encode(&self, x: Tensor<4>) -> Tensor<4> {
        let x = to_dtype(x, self.dtype());
        let mut moments = self.encoder.forward(x);
        if let Some(q) = &self.quant_conv {
            moments = conv::forward(q, moments);
        }
        to_dtype(moments.narrow(1, 0, self.latent_channels), DType::F32)
    }

    /// Unscaled latents → images in about [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let z = to_dtype(z, self.dtype());
        let z = match &self.post_quant_conv {
            Some(p) => conv::forward(p, z),
            None => z,
        };
        to_dtype(self.decoder.forward(z), DType::F32)
    }

    /// The dtype the weights are stored and run in (f32 or f16).
    fn dtype(&self) -> DType {
        self.decoder.conv_in.weight.val().dtype()
    }

    /// diffusers' `tiled_decode`: the latents decoded in overlapping tiles of
    /// `tile` × `tile` latents, each blended into its upper and left
    /// neighbours over a quarter of a tile, so that no activation is larger
    /// than one tile's. The seams are not invisible (group norms see one tile)
    /// but they are diffusers' seams, to the pixel.
    pub fn tiled_decode(&self, z: Tensor<4>, tile: usize) -> Tensor<4> {
        let tile = tile.max(1);
        let sample_tile = tile * self.decoder_scale();
        // diffusers' int() truncations, in the same order.
        let step = ((tile as f64 * 0.75) as usize).max(1);
        let blend = (sample_tile as f64 * 0.25) as usize;
        tiled(z, tile, step, blend, sample_tile - blend, |t| {
            self.decode(t)
        })
    }

    /// diffusers' `_tiled_encode` (its mean): the image encoded in overlapping
    /// tiles of `tile` × `tile` latents (`tile` × 8 pixels for SD), blended as
    /// [`Self::tiled_decode`] blends, in latent space.
    pub fn tiled_encode(&self, x: Tensor<4>, tile: usize) -> Tensor<4> {
        let tile = tile.max(1);
        let sample_tile = tile * self.decoder_scale();
        let step = ((sample_tile as f64 * 0.75) as usize).max(1);
        let blend = (tile as f64 * 0.25) as usize;
        tiled(x, sample_tile, step, blend, tile - blend, |t| {
            self.encode(t)
        })
    }

    /// Pixels per latent of the decoder (2^(up blocks − 1)).
    pub fn decoder_scale(&self) -> usize {
        1 << self.decoder.up_blocks.len().saturating_sub(1)
    }

    /// `(z − shift_factor) · scaling_factor`: what the UNet was trained on.
    pub fn scale_latents(&self, z: Tensor<4>) -> Tensor<4> {
        z.sub_scalar(self.shift_factor as f32)
            .mul_scalar(self.scaling_factor as f32)
    }

    /// The inverse of [`Self::scale_latents`], before `decode`.
    pub fn unscale_latents(&self, z: Tensor<4>) -> Tensor<4> {
        z.div_scalar(self.scaling_factor as f32)
            .add_scalar(self.shift_factor as f32)
    }
}

/// `f` over `tile` × `tile` tiles of `x` taken every `step` elements, each
/// output tile blended into its upper and left neighbours over `blend`
/// elements and cropped to `keep` (diffusers' tiling, encode or decode).
fn tiled(
    x: Tensor<4>,
    tile: usize,
    step: usize,
    blend: usize,
    keep: usize,
    f: impl Fn(Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let mut rows: Vec<Vec<Tensor<4>>> = Vec::new();
    for i in (0..h).step_by(step) {
        let mut row: Vec<Tensor<4>> = Vec::new();
        for j in (0..w).step_by(step) {
            let part = (x.clone()).slice([0..b, 0..c, i..(i + tile).min(h), j..(j + tile).min(w)]);
            let mut t = f(part);
            if let Some(above) = rows.last() {
                t = blend_v(&above[row.len()], t, blend);
            }
            if let Some(left) = row.last() {
                t = blend_h(left, t, blend);
            }
            row.push(t);
        }
        rows.push(row);
    }
    let crop = |t: &Tensor<4>| {
        let [b, c, th, tw] = t.dims();
        (t.clone()).slice([0..b, 0..c, 0..th.min(keep), 0..tw.min(keep)])
    };
    let rows: Vec<Tensor<4>> = rows
        .iter()
        .map(|row| Tensor::cat(row.iter().map(crop).collect(), 3))
        .collect();
    Tensor::cat(rows, 2)
}

/// `b`'s first `extent` rows faded in from `a`'s last ones (diffusers' `blend_v`).
fn blend_v(a: &Tensor<4>, b: Tensor<4>, extent: usize) -> Tensor<4> {
    blend(a, b, extent, 2)
}

/// `b`'s first `extent` columns faded in from `a`'s last ones (`blend_h`).
fn blend_h(a: &Tensor<4>, b: Tensor<4>, extent: usize) -> Tensor<4> {
    blend(a, b, extent, 3)
}

fn blend(a: &Tensor<4>, b: Tensor<4>, extent: usize, dim: usize) -> Tensor<4> {
    let e = extent.min(a.dims()[dim]).min(b.dims()[dim]);
    if e == 0 {
        return b;
    }
    let (la, lb) = (a.dims()[dim], b.dims()[dim]);
    let weights: Vec<f32> = (0..e).map(|y| y as f32 / e as f32).collect();
    let mut shape = [1usize; 4];
    shape[dim] = e;
    let ramp = Tensor::<4>::from_data(TensorData::new(weights, shape), &b.device());
    let tail = a.clone().narrow(dim, la - e, e);
    let head = b.clone().narrow(dim, 0, e);
    let mixed = tail * ramp.clone().neg().add_scalar(1.0) + head * ramp;
    if e == lb {
        mixed
    } else {
        Tensor::cat(vec![mixed, b.narrow(dim, e, lb - e)], dim)
    }
}
