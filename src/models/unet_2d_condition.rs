//! `UNet2DConditionModel` (diffusers `unets/unet_2d_condition.py`) for the
//! Stable Diffusion 1.x/2.x family and small distilled configs.

use super::{conv, normalization};
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, GroupNorm};
use burn::tensor::{DType, Int, Tensor, TensorData};
use serde::Deserialize;
use serde_json::Value;

use super::attention::TransformerSpec;
use super::embeddings::{TimestepEmbedding, timestep_embedding};
use super::unet_2d_blocks::{BlockSpec, DownBlock, UNetMidBlock2DCrossAttn, UpBlock};
use super::{OneOrMany, to_dtype};
use crate::config::parse_config;
use crate::error::{Error, Result};
use crate::weights::{VarBuilder, conv2d, embedding, group_norm};

/// `unet/config.json`. Keys that change the architecture in ways this crate
/// does not implement are checked by [`UNet2DConditionConfig::validate`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: OneOrMany<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: OneOrMany<usize>,
    pub transformer_layers_per_block: OneOrMany<usize>,
    pub attention_head_dim: OneOrMany<usize>,
    pub num_attention_heads: Option<OneOrMany<usize>>,
    pub use_linear_projection: bool,
    /// Attention is computed in f32 whatever this says (null in SD-Turbo).
    pub upcast_attention: Option<bool>,
    pub num_class_embeds: Option<usize>,
    /// Guidance-distilled UNets (LCM): the width of the guidance-scale
    /// embedding added to the timestep embedding through `cond_proj`.
    pub time_cond_proj_dim: Option<usize>,
    /// Every other key, checked against the values we support.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: OneOrMany::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: OneOrMany::One(1280),
            transformer_layers_per_block: OneOrMany::One(1),
            attention_head_dim: OneOrMany::One(8),
            num_attention_heads: None,
            use_linear_projection: false,
            upcast_attention: None,
            num_class_embeds: None,
            time_cond_proj_dim: None,
            other: Default::default(),
        }
    }
}

/// Keys whose only supported value is diffusers' default (or null).
const DEFAULT_ONLY: &[(&str, &str)] = &[
    ("dual_cross_attention", "false"),
    ("only_cross_attention", "false"),
    ("class_embed_type", "null"),
    ("addition_embed_type", "null"),
    ("resnet_time_scale_shift", "\"default\""),
    ("time_embedding_type", "\"positional\""),
    ("encoder_hid_dim", "null"),
    ("encoder_hid_dim_type", "null"),
    ("projection_class_embeddings_input_dim", "null"),
    ("timestep_post_act", "null"),
    ("time_embedding_dim", "null"),
    ("time_embedding_act_fn", "null"),
    ("conv_in_kernel", "3"),
    ("conv_out_kernel", "3"),
    ("attention_type", "\"default\""),
    ("class_embeddings_concat", "false"),
    ("cross_attention_norm", "null"),
    ("resnet_skip_time_act", "false"),
    ("resnet_out_scale_factor", "1.0"),
    ("mid_block_only_cross_attention", "null"),
    ("addition_time_embed_dim", "null"),
    ("reverse_transformer_layers_per_block", "null"),
];

impl UNet2DConditionConfig {
    /// Parses and validates `unet/config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        let c: Self = parse_config(json, "unet/config.json")?;
        c.validate()?;
        Ok(c)
    }

    /// Rejects anything this implementation would get wrong, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, v: &dyn std::fmt::Debug, why: &str| {
            Err(Error::Config(format!(
                "unet/config.json: {k} = {v:?} is not supported: {why}"
            )))
        };
        for (key, want) in DEFAULT_ONLY {
            if let Some(v) = self.other.get(*key) {
                let want: Value = serde_json::from_str(want).expect("valid literal");
                let same = v == &want || (v.is_number() && v.as_f64() == want.as_f64());
                let false_list = *key == "only_cross_attention"
                    && v.as_array()
                        .is_some_and(|a| a.iter().all(|x| x == &Value::Bool(false)));
                if !same && !false_list {
                    return bad(key, v, &format!("only {want} is implemented"));
                }
            }
        }
        let n = self.block_out_channels.len();
        let f = "unet/config.json";
        let chans = self.block_out_channels.iter();
        crate::config::at_most(f, chans.map(|&v| ("block_out_channels", v)), 8192)?;
        crate::config::at_most(f, [("blocks", n)], 8)?;
        crate::config::at_most(
            f,
            [
                ("in_channels", self.in_channels),
                ("out_channels", self.out_channels),
            ],
            64,
        )?;
        crate::config::at_most(f, [("sample_size", self.sample_size.unwrap_or(0))], 4096)?;
        crate::config::at_most(
            f,
            [("num_class_embeds", self.num_class_embeds.unwrap_or(0))],
            1 << 20,
        )?;
        if let Some(d) = self.time_cond_proj_dim {
            crate::config::at_most(f, [("time_cond_proj_dim", d)], 4096)?;
            if d < 4 {
                return bad(
                    "time_cond_proj_dim",
                    &d,
                    "the guidance embedding needs at least 4",
                );
            }
        }
        let lists = [
            ("layers_per_block", &self.layers_per_block, 16),
            ("cross_attention_dim", &self.cross_attention_dim, 8192),
            (
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
                64,
            ),
            ("attention_head_dim", &self.attention_head_dim, 8192),
        ];
        for (key, v, max) in lists {
            let vals = match v {
                OneOrMany::One(x) => vec![*x],
                OneOrMany::Many(xs) => xs.clone(),
            };
            crate::config::at_most(f, vals.into_iter().map(|x| (key, x)), max)?;
        }
        if n == 0 {
            return bad(
                "block_out_channels",
                &self.block_out_channels,
                "needs at least one block",
            );
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return bad(
                    "down_block_types",
                    t,
                    "use CrossAttnDownBlock2D or DownBlock2D",
                );
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return bad("up_block_types", t, "use CrossAttnUpBlock2D or UpBlock2D");
            }
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return bad(
                "down_block_types/up_block_types",
                &(self.down_block_types.len(), self.up_block_types.len()),
                &format!("need one entry per block_out_channels entry ({n})"),
            );
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") => {}
            Some(other) => {
                return bad(
                    "mid_block_type",
                    &other,
                    "use UNetMidBlock2DCrossAttn or null",
                );
            }
        }
        if self.act_fn != "silu" {
            return bad("act_fn", &self.act_fn, "only silu is implemented");
        }
        let Some(groups) = self.norm_num_groups else {
            return bad("norm_num_groups", &"null", "group norm is required");
        };
        if groups == 0 {
            return bad("norm_num_groups", &0, "must be at least 1");
        }
        for &c in &self.block_out_channels {
            if !c.is_multiple_of(groups) {
                return bad(
                    "block_out_channels",
                    &c,
                    &format!("not divisible by norm_num_groups = {groups}"),
                );
            }
        }
        if self.mid_block_scale_factor != 1.0 {
            return bad(
                "mid_block_scale_factor",
                &self.mid_block_scale_factor,
                "only 1.0 is implemented",
            );
        }
        if self.downsample_padding != 1 {
            return bad(
                "downsample_padding",
                &self.downsample_padding,
                "only 1 is implemented",
            );
        }
        for (i, (&c, &h)) in self
            .block_out_channels
            .iter()
            .zip(&self.heads()?)
            .enumerate()
        {
            if h == 0 || !c.is_multiple_of(h) {
                return bad(
                    "num_attention_heads",
                    &h,
                    &format!("block {i} has {c} channels, not divisible into {h} heads"),
                );
            }
        }
        self.layers_per_block.per_block("layers_per_block", n)?;
        self.cross_attention_dim
            .per_block("cross_attention_dim", n)?;
        self.transformer_layers_per_block
            .per_block("transformer_layers_per_block", n)?;
        Ok(())
    }

    /// Heads per block. diffusers' `attention_head_dim` historically holds the
    /// number of heads; `num_attention_heads` overrides it when present.
    pub fn heads(&self) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.per_block("num_attention_heads", n),
            None => self.attention_head_dim.per_block("attention_head_dim", n),
        }
    }

    /// The width of the text embeddings the cross-attention layers expect.
    pub fn context_dim(&self) -> usize {
        match &self.cross_attention_dim {
            OneOrMany::One(c) => *c,
            OneOrMany::Many(v) => v[0],
        }
    }
}

/// The conditional UNet: predicts noise (or v, or x₀) for latents at a timestep
/// given text embeddings. It only denoises; the sampling loop lives elsewhere.
#[derive(burn::module::Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub class_embedding: Option<Embedding>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<UNetMidBlock2DCrossAttn>,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    time_proj_dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
    center_input_sample: bool,
}

impl UNet2DConditionModel {
    /// Builds the UNet from weights under `vb` (the file's root).
    pub fn load(vb: &VarBuilder, c: &UNet2DConditionConfig) -> Result<Self> {
        c.validate()?;
        let n = c.block_out_channels.len();
        let boc = &c.block_out_channels;
        let groups = c.norm_num_groups.expect("validated");
        let temb = boc[0] * 4;
        let s = BlockSpec {
            temb_channels: temb,
            groups,
            eps: c.norm_eps,
        };
        let heads = c.heads()?;
        let layers = c.layers_per_block.per_block("layers_per_block", n)?;
        let ctx = c.cross_attention_dim.per_block("cross_attention_dim", n)?;
        let tlayers = c
            .transformer_layers_per_block
            .per_block("transformer_layers_per_block", n)?;
        let spec = |i: usize| TransformerSpec {
            heads: heads[i],
            dim_head: boc[i] / heads[i],
            layers: tlayers[i],
            context_dim: ctx[i],
            groups,
            use_linear_projection: c.use_linear_projection,
        };

        let down_blocks = (0..n)
            .map(|i| {
                let c_in = if i == 0 { boc[0] } else { boc[i - 1] };
                let attn = (c.down_block_types[i] == "CrossAttnDownBlock2D").then(|| spec(i));
                DownBlock::load(
                    &vb.pp("down_blocks").pp(i),
                    c_in,
                    boc[i],
                    layers[i],
                    attn,
                    i + 1 < n,
                    s,
                )
            })
            .collect();
        let mid_block = c.mid_block_type.as_ref().map(|_| {
            UNetMidBlock2DCrossAttn::load(&vb.pp("mid_block"), boc[n - 1], spec(n - 1), s)
        });
        let up_blocks = (0..n)
            .map(|i| {
                let b = n - 1 - i; // the down block this up block mirrors
                let c_out = boc[b];
                let c_prev = if i == 0 { boc[n - 1] } else { boc[b + 1] };
                let c_skip_in = boc[b.saturating_sub(1)];
                let attn = (c.up_block_types[i] == "CrossAttnUpBlock2D").then(|| spec(b));
                UpBlock::load(
                    &vb.pp("up_blocks").pp(i),
                    c_skip_in,
                    c_out,
                    c_prev,
                    layers[b] + 1,
                    attn,
                    i + 1 < n,
                    s,
                )
            })
            .collect();
        Ok(Self {
            conv_in: conv2d(&vb.pp("conv_in"), c.in_channels, boc[0], 3, 1, 1),
            time_embedding: TimestepEmbedding::load(
                &vb.pp("time_embedding"),
                boc[0],
                temb,
                c.time_cond_proj_dim,
            ),
            class_embedding: c
                .num_class_embeds
                .map(|k| embedding(&vb.pp("class_embedding"), k, temb)),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(&vb.pp("conv_norm_out"), groups, boc[0], c.norm_eps),
            conv_out: conv2d(&vb.pp("conv_out"), boc[0], c.out_channels, 3, 1, 1),
            time_proj_dim: boc[0],
            flip_sin_to_cos: c.flip_sin_to_cos,
            freq_shift: c.freq_shift,
            center_input_sample: c.center_input_sample,
        })
    }

    /// The width of the guidance-scale embedding this UNet takes
    /// (`time_cond_proj_dim`), when guidance was distilled into it (LCM):
    /// such a model is run without classifier-free guidance.
    pub fn guidance_embedding_dim(&self) -> Option<usize> {
        self.time_embedding
            .cond_proj
            .as_ref()
            .map(|p| p.in_features())
    }

    /// `sample`: `[B, C_in, H, W]` latents; `timesteps`: one per batch element
    /// (or one for all); `context`: `[B, L, cross_attention_dim]`;
    /// `class_labels`: required when the model has `num_class_embeds`;
    /// `timestep_cond`: `[B, time_cond_proj_dim]`, the guidance embedding of
    /// a guidance-distilled model (see [`Self::guidance_embedding_dim`]).
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        context: &Tensor<3>,
        class_labels: Option<&[i64]>,
        timestep_cond: Option<&Tensor<2>>,
    ) -> Tensor<4> {
        let device = sample.device();
        // The dtype the weights are stored in is the one this forward runs in.
        let dtype = self.conv_in.weight.val().dtype();
        let b = sample.dims()[0];
        let ts: Vec<f32> = if timesteps.len() == 1 {
            vec![timesteps[0]; b]
        } else {
            timesteps.to_vec()
        };
        let t_emb = timestep_embedding(
            &ts,
            self.time_proj_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
            &device,
        );
        let timestep_cond = timestep_cond.map(|c| to_dtype(c.clone(), dtype));
        let t_emb = to_dtype(t_emb, dtype);
        let context = &to_dtype(context.clone(), dtype);
        let mut temb = self.time_embedding.forward(t_emb, timestep_cond.as_ref());
        if let (Some(emb), Some(labels)) = (&self.class_embedding, class_labels) {
            let ids =
                Tensor::<2, Int>::from_data(TensorData::new(labels.to_vec(), [b, 1]), &device);
            temb = temb
                + emb
                    .forward(ids)
                    .reshape([b, self.time_embedding.linear_2.out_features()]);
        }

        let mut x = if self.center_input_sample {
            sample.mul_scalar(2.0).sub_scalar(1.0)
        } else {
            sample
        };
        x = to_dtype(x, dtype);
        x = conv::forward(&self.conv_in, x);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(x, &temb, context);
            x = out;
            skips.extend(states);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, &temb, context);
        }
        for block in &self.up_blocks {
            // The up-sampled size must match the skips this block leaves for the next one.
            let remaining = skips.len() - block.resnets.len();
            let size = (remaining > 0).then(|| {
                let d = skips[remaining - 1].dims();
                [d[2], d[3]]
            });
            x = block.forward(x, &mut skips, &temb, context, size);
        }
        let x = normalization::group_norm_silu(&self.conv_norm_out, x);
        to_dtype(conv::forward(&self.conv_out, x), DType::F32)
    }
}
