//! The UNet's down, mid and up blocks (diffusers `unet_2d_blocks.py`).

use burn::tensor::Tensor;

use super::attention::{Transformer2DModel, TransformerSpec};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::weights::VarBuilder;

/// What every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
}

/// `attentions.0..layers`, one per resnet, or none for a block without cross-attention.
fn transformers(
    vb: &VarBuilder,
    channels: usize,
    layers: usize,
    spec: Option<TransformerSpec>,
) -> Vec<Transformer2DModel> {
    spec.map(|spec| {
        (0..layers)
            .map(|i| Transformer2DModel::load(&vb.pp("attentions").pp(i), channels, spec))
            .collect()
    })
    .unwrap_or_default()
}

/// `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (without).
#[derive(burn::module::Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        layers: usize,
        attention: Option<TransformerSpec>,
        add_downsample: bool,
        s: BlockSpec,
    ) -> Self {
        Self {
            resnets: (0..layers)
                .map(|i| {
                    let c = if i == 0 { c_in } else { c_out };
                    ResnetBlock2D::load(
                        &vb.pp("resnets").pp(i),
                        c,
                        c_out,
                        Some(s.temb_channels),
                        s.groups,
                        s.eps,
                    )
                })
                .collect(),
            attentions: transformers(vb, c_out, layers, attention),
            downsamplers: add_downsample
                .then(|| Downsample2D::load(&vb.pp("downsamplers").pp(0), c_out, 1))
                .into_iter()
                .collect(),
        }
    }

    /// Returns the output and every intermediate state the up path will consume.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
    ) -> (Tensor<4>, Vec<Tensor<4>>) {
        let mut states = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context);
            }
            states.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x);
            states.push(x.clone());
        }
        (x, states)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (attention, resnet) pairs.
#[derive(burn::module::Module, Debug)]
pub struct UNetMidBlock2DCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    pub fn load(vb: &VarBuilder, channels: usize, spec: TransformerSpec, s: BlockSpec) -> Self {
        let resnet = |i: usize| {
            ResnetBlock2D::load(
                &vb.pp("resnets").pp(i),
                channels,
                channels,
                Some(s.temb_channels),
                s.groups,
                s.eps,
            )
        };
        Self {
            resnets: vec![resnet(0), resnet(1)],
            attentions: vec![Transformer2DModel::load(
                &vb.pp("attentions").pp(0),
                channels,
                spec,
            )],
        }
    }

    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x, context), Some(temb));
        }
        x
    }
}

/// `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (without).
#[derive(burn::module::Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Vec<Upsample2D>,
}

impl UpBlock {
    /// `c_prev`: channels coming from below; `c_skip_in`: channels of the
    /// down block's input (its last skip state); `layers` = layers_per_block + 1.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &VarBuilder,
        c_skip_in: usize,
        c_out: usize,
        c_prev: usize,
        layers: usize,
        attention: Option<TransformerSpec>,
        add_upsample: bool,
        s: BlockSpec,
    ) -> Self {
        Self {
            resnets: (0..layers)
                .map(|i| {
                    let skip = if i == layers - 1 { c_skip_in } else { c_out };
                    let c = if i == 0 { c_prev } else { c_out };
                    ResnetBlock2D::load(
                        &vb.pp("resnets").pp(i),
                        c + skip,
                        c_out,
                        Some(s.temb_channels),
                        s.groups,
                        s.eps,
                    )
                })
                .collect(),
            attentions: transformers(vb, c_out, layers, attention),
            upsamplers: add_upsample
                .then(|| Upsample2D::load(&vb.pp("upsamplers").pp(0), c_out))
                .into_iter()
                .collect(),
        }
    }

    /// Consumes skip states from the end of `skips`; `upsample_size` is the
    /// spatial size of the next block's skips (odd latent sizes).
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        skips: &mut Vec<Tensor<4>>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("one skip state per up-block resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context);
            }
        }
        for up in &self.upsamplers {
            x = up.forward(x, upsample_size);
        }
        x
    }
}
