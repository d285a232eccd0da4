//! `ResnetBlock2D`, `Downsample2D`, `Upsample2D` (diffusers `resnet.py`,
//! `downsampling.py`, `upsampling.py`).

use super::conv;
use super::linear::Linear;
use crate::models::activations::silu;
use crate::models::normalization::group_norm_silu;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::weights::{VarBuilder, conv2d, conv2d_padded, group_norm, linear};

/// Two 3×3 convolutions with group norm and SiLU, an optional time embedding
/// added in between, and a 1×1 shortcut when the channel count changes.
#[derive(burn::module::Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `temb_channels = None` for the VAE's blocks, which take no time embedding.
    pub fn load(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Self {
        Self {
            norm1: group_norm(&vb.pp("norm1"), groups, c_in, eps),
            conv1: conv2d(&vb.pp("conv1"), c_in, c_out, 3, 1, 1),
            time_emb_proj: temb_channels.map(|t| linear(&vb.pp("time_emb_proj"), t, c_out, true)),
            norm2: group_norm(&vb.pp("norm2"), groups, c_out, eps),
            conv2: conv2d(&vb.pp("conv2"), c_out, c_out, 3, 1, 1),
            conv_shortcut: (c_in != c_out)
                .then(|| conv2d(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)),
        }
    }

    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = conv::forward(&self.conv1, group_norm_silu(&self.norm1, x.clone()));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let [b, c] = [h.dims()[0], h.dims()[1]];
            h = h + proj.forward(silu(temb.clone())).reshape([b, c, 1, 1]);
        }
        let h = conv::forward(&self.conv2, group_norm_silu(&self.norm2, h));
        let shortcut = match &self.conv_shortcut {
            Some(c) => conv::forward(c, x),
            None => x,
        };
        shortcut + h
    }
}

/// A stride-2 3×3 convolution (`downsamplers.0.conv`). The UNet pads 1 on
/// every side; the VAE encoder pads only bottom/right (`padding=0` + F.pad).
#[derive(burn::module::Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    pub fn load(vb: &VarBuilder, channels: usize, padding: usize) -> Self {
        let pad = if padding == 0 {
            [0, 0, 1, 1]
        } else {
            [padding; 4]
        };
        Self {
            conv: conv2d_padded(&vb.pp("conv"), channels, channels, 3, 2, pad, true),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv::forward(&self.conv, x)
    }
}

/// Nearest-neighbour 2× upsampling (or to `size`) then a 3×3 convolution.
#[derive(burn::module::Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn load(vb: &VarBuilder, channels: usize) -> Self {
        Self {
            conv: conv2d(&vb.pp("conv"), channels, channels, 3, 1, 1),
        }
    }

    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        match size {
            Some(size) if size != [2 * h, 2 * w] => {
                let options =
                    InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size);
                conv::forward(&self.conv, interpolate(x, options))
            }
            _ => conv::forward_upsampled(&self.conv, x),
        }
    }
}
