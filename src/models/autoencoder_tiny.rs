//! `AutoencoderTiny` (TAESD; diffusers `autoencoders/autoencoder_tiny.py`).
//! Its checkpoints index an `nn.Sequential`, so keys skip the
//! parameter-free layers (`decoder.layers.1` is a ReLU, for instance).

use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Tensor};
use serde::Deserialize;

use super::conv;
use super::to_dtype;
use crate::config::parse_config;
use crate::error::{Error, Result};
use crate::weights::{VarBuilder, conv2d, conv2d_padded};

/// `vae/config.json` for an `AutoencoderTiny`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AutoencoderTinyConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub act_fn: String,
    pub upsample_fn: String,
    pub latent_channels: usize,
    pub upsampling_scaling_factor: usize,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub latent_magnitude: f64,
    pub latent_shift: f64,
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl Default for AutoencoderTinyConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            latent_magnitude: 3.0,
            latent_shift: 0.5,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl AutoencoderTinyConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let c: Self = parse_config(json, "vae/config.json")?;
        let bad = |k: &str, v: &dyn std::fmt::Debug, why: &str| {
            Err(Error::Config(format!(
                "vae/config.json: {k} = {v:?} is not supported: {why}"
            )))
        };
        let f = "vae/config.json";
        let chans = c
            .encoder_block_out_channels
            .iter()
            .chain(&c.decoder_block_out_channels);
        crate::config::at_most(f, chans.map(|&v| ("block_out_channels", v)), 4096)?;
        let blocks = c.num_encoder_blocks.iter().chain(&c.num_decoder_blocks);
        crate::config::at_most(f, blocks.map(|&v| ("num_*_blocks", v)), 64)?;
        crate::config::at_most(
            f,
            [
                ("encoder blocks", c.encoder_block_out_channels.len()),
                ("decoder blocks", c.decoder_block_out_channels.len()),
            ],
            8,
        )?;
        crate::config::at_most(
            f,
            [
                ("in_channels", c.in_channels),
                ("out_channels", c.out_channels),
                ("latent_channels", c.latent_channels),
                ("upsampling_scaling_factor", c.upsampling_scaling_factor),
            ],
            64,
        )?;
        if c.act_fn != "relu" {
            return bad("act_fn", &c.act_fn, "only relu is implemented");
        }
        if c.upsample_fn != "nearest" {
            return bad("upsample_fn", &c.upsample_fn, "only nearest is implemented");
        }
        if c.encoder_block_out_channels.len() != c.num_encoder_blocks.len()
            || c.encoder_block_out_channels.is_empty()
        {
            return bad(
                "num_encoder_blocks",
                &c.num_encoder_blocks,
                "needs one entry per encoder_block_out_channels",
            );
        }
        if c.decoder_block_out_channels.len() != c.num_decoder_blocks.len()
            || c.decoder_block_out_channels.is_empty()
        {
            return bad(
                "num_decoder_blocks",
                &c.num_decoder_blocks,
                "needs one entry per decoder_block_out_channels",
            );
        }
        Ok(c)
    }
}

/// `AutoencoderTinyBlock`: three 3×3 convs with ReLU (`conv.0/2/4`), a 1×1
/// `skip` when widths differ, summed and ReLU'd.
#[derive(burn::module::Module, Debug)]
pub struct TinyBlock {
    pub conv: Vec<Conv2d>,
    pub skip: Option<Conv2d>,
}

impl TinyBlock {
    fn load(vb: &VarBuilder, c_in: usize, c_out: usize) -> Self {
        let conv = vb.pp("conv");
        Self {
            conv: vec![
                conv2d(&conv.pp(0), c_in, c_out, 3, 1, 1),
                conv2d(&conv.pp(2), c_out, c_out, 3, 1, 1),
                conv2d(&conv.pp(4), c_out, c_out, 3, 1, 1),
            ],
            skip: (c_in != c_out)
                .then(|| conv2d_padded(&vb.pp("skip"), c_in, c_out, 1, 1, [0; 4], false)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(conv::forward(&self.conv[0], x.clone()));
        let h = relu(conv::forward(&self.conv[1], h));
        let h = conv::forward(&self.conv[2], h);
        let s = match &self.skip {
            Some(c) => conv::forward(c, x),
            None => x,
        };
        relu(h + s)
    }
}

/// One entry of the `layers` sequence.
#[derive(burn::module::Module, Debug)]
pub enum TinyLayer {
    Conv(Conv2d),
    Block(TinyBlock),
    Relu(burn::nn::Relu),
    Upsample(NearestUpsample),
}

/// `nn.Upsample(scale_factor, mode="nearest")`.
#[derive(burn::module::Module, Debug)]
pub struct NearestUpsample {
    pub factor: usize,
}

impl TinyLayer {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Conv(c) => conv::forward(c, x),
            Self::Block(b) => b.forward(x),
            Self::Relu(_) => relu(x),
            Self::Upsample(NearestUpsample { factor: f }) => {
                let [_, _, h, w] = x.dims();
                interpolate(
                    x,
                    InterpolateOptions::new(InterpolateMode::Nearest)
                        .with_output_size([h * f, w * f]),
                )
            }
        }
    }
}

fn run(layers: &[TinyLayer], mut x: Tensor<4>) -> Tensor<4> {
    for l in layers {
        x = l.forward(x);
    }
    x
}

/// TAESD: a small encoder/decoder pair distilled from a KL VAE.
#[derive(burn::module::Module, Debug)]
pub struct AutoencoderTiny {
    pub encoder: Vec<TinyLayer>,
    pub decoder: Vec<TinyLayer>,
    scaling_factor: f64,
    shift_factor: f64,
}

impl AutoencoderTiny {
    pub fn load(vb: &VarBuilder, c: &AutoencoderTinyConfig) -> Self {
        // Encoder: conv, blocks; then per level a stride-2 conv (no bias) and blocks; a final conv.
        let enc = vb.pp("encoder").pp("layers");
        let mut encoder = Vec::new();
        for (i, (&ch, &nb)) in c
            .encoder_block_out_channels
            .iter()
            .zip(&c.num_encoder_blocks)
            .enumerate()
        {
            let at = enc.pp(encoder.len());
            encoder.push(TinyLayer::Conv(if i == 0 {
                conv2d(&at, c.in_channels, ch, 3, 1, 1)
            } else {
                conv2d_padded(&at, ch, ch, 3, 2, [1; 4], false)
            }));
            for _ in 0..nb {
                encoder.push(TinyLayer::Block(TinyBlock::load(
                    &enc.pp(encoder.len()),
                    ch,
                    ch,
                )));
            }
        }
        let last = *c.encoder_block_out_channels.last().expect("validated");
        encoder.push(TinyLayer::Conv(conv2d(
            &enc.pp(encoder.len()),
            last,
            c.latent_channels,
            3,
            1,
            1,
        )));

        // Decoder: conv, ReLU; per level blocks, upsample (not last), conv (bias only on the last).
        let dec = vb.pp("decoder").pp("layers");
        let boc = &c.decoder_block_out_channels;
        let mut decoder = vec![
            TinyLayer::Conv(conv2d(&dec.pp(0), c.latent_channels, boc[0], 3, 1, 1)),
            TinyLayer::Relu(burn::nn::Relu),
        ];
        for (i, (&ch, &nb)) in boc.iter().zip(&c.num_decoder_blocks).enumerate() {
            let last = i + 1 == boc.len();
            for _ in 0..nb {
                decoder.push(TinyLayer::Block(TinyBlock::load(
                    &dec.pp(decoder.len()),
                    ch,
                    ch,
                )));
            }
            if !last {
                decoder.push(TinyLayer::Upsample(NearestUpsample {
                    factor: c.upsampling_scaling_factor,
                }));
            }
            let c_out = if last { c.out_channels } else { ch };
            decoder.push(TinyLayer::Conv(conv2d_padded(
                &dec.pp(decoder.len()),
                ch,
                c_out,
                3,
                1,
                [1; 4],
                last,
            )));
        }
        Self {
            encoder,
            decoder,
            scaling_factor: c.scaling_factor,
            shift_factor: c.shift_factor,
        }
    }

    /// Images in [-1, 1] → latents.
    pub fn encode(&self, x: Tensor<4>) -> Tensor<4> {
        let x = x.add_scalar(1.0).div_scalar(2.0);
        to_dtype(run(&self.encoder, to_dtype(x, self.dtype())), DType::F32)
    }

    /// Latents → images in about [-1, 1]; inputs are soft-clamped to ±3 first.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let z = z.div_scalar(3.0).tanh().mul_scalar(3.0);
        let image = to_dtype(run(&self.decoder, to_dtype(z, self.dtype())), DType::F32);
        image.mul_scalar(2.0).sub_scalar(1.0)
    }

    /// The dtype the weights are stored and run in (f32 or f16).
    fn dtype(&self) -> DType {
        match self.decoder.first() {
            Some(TinyLayer::Conv(c)) => c.weight.val().dtype(),
            _ => DType::F32,
        }
    }

    /// `(z − shift_factor) · scaling_factor` (1 and 0 for TAESD).
    pub fn scale_latents(&self, z: Tensor<4>) -> Tensor<4> {
        z.sub_scalar(self.shift_factor as f32)
            .mul_scalar(self.scaling_factor as f32)
    }

    pub fn unscale_latents(&self, z: Tensor<4>) -> Tensor<4> {
        z.div_scalar(self.scaling_factor as f32)
            .add_scalar(self.shift_factor as f32)
    }
}
