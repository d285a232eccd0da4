//! The denoising loop: text encoding, classifier-free guidance, DDIM steps,
//! decoding; text-to-image, image-to-image and inpainting. The models only
//! denoise and decode; this module owns the loop.
//!
//! The loop is driven one step at a time through [`Sampling`], so callers
//! can report progress, show previews and cancel between steps (the browser
//! worker awaits between steps; native code just loops). Nothing is read back
//! from the device inside the loop.

use std::rc::Rc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use crate::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use crate::models::clip::{CLIPTextConfig, CLIPTextModel, ClipTokenizer};
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::noise::NoiseGenerator;
use crate::schedulers::{DDIMScheduler, DDIMSchedulerConfig, TimestepSpacing};
use crate::weights::WeightFile;

/// The files of a diffusers pipeline folder, as bytes (the browser has no
/// filesystem; native code reads them from disk with [`PipelineFiles::read_dir`]).
pub struct PipelineFiles {
    pub unet_config: String,
    pub unet_weights: Vec<u8>,
    pub vae_config: String,
    pub vae_weights: Vec<u8>,
    pub text_encoder_config: String,
    pub text_encoder_weights: Vec<u8>,
    pub vocab: String,
    pub merges: String,
    pub tokenizer_config: Option<String>,
    pub scheduler_config: String,
}

/// The relative paths of a diffusers folder that [`PipelineFiles`] needs.
pub const FILES: [&str; 9] = [
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
];

/// Files of a diffusers folder that [`PipelineFiles`] reads when present.
pub const OPTIONAL_FILES: [&str; 1] = ["tokenizer/tokenizer_config.json"];

impl PipelineFiles {
    /// The largest weight tensor as `(name, bytes once loaded as f32)`, read
    /// from the safetensors headers: a GPU must be able to bind a buffer this
    /// big. A file whose header does not parse counts as 0 here; loading
    /// reports it properly.
    pub fn largest_tensor(&self) -> (String, u64) {
        let files = [
            ("unet", &self.unet_weights),
            ("vae", &self.vae_weights),
            ("text_encoder", &self.text_encoder_weights),
        ];
        let mut best = (String::new(), 0u64);
        for (folder, bytes) in files {
            let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(bytes) else {
                continue;
            };
            for (name, info) in meta.tensors() {
                let n = info.shape.iter().map(|&d| d as u64).product::<u64>() * 4;
                let name = format!("{folder}/{name}");
                if n > best.1 || (n == best.1 && name < best.0) {
                    best = (name, n);
                }
            }
        }
        best
    }

    /// Collects the files through `get(relative path)`, which returns `None`
    /// for a file that is not there; `location` prefixes paths in messages.
    pub fn from_lookup(
        location: &str,
        mut get: impl FnMut(&str) -> Result<Option<Vec<u8>>>,
    ) -> Result<Self> {
        let mut bytes = |p: &str| -> Result<Vec<u8>> {
            get(p)?.ok_or_else(|| {
                Error::Weights(format!("{location}{p} is missing from the model folder"))
            })
        };
        let text = |b: Vec<u8>, p: &str| {
            String::from_utf8(b)
                .map_err(|_| Error::Config(format!("{location}{p} is not UTF-8 text")))
        };
        let f = FILES;
        let files = Self {
            unet_config: text(bytes(f[0])?, f[0])?,
            unet_weights: bytes(f[1])?,
            vae_config: text(bytes(f[2])?, f[2])?,
            vae_weights: bytes(f[3])?,
            text_encoder_config: text(bytes(f[4])?, f[4])?,
            text_encoder_weights: bytes(f[5])?,
            vocab: text(bytes(f[6])?, f[6])?,
            merges: text(bytes(f[7])?, f[7])?,
            tokenizer_config: None,
            scheduler_config: text(bytes(f[8])?, f[8])?,
        };
        let tc = OPTIONAL_FILES[0];
        let tokenizer_config = get(tc)?.map(|b| text(b, tc)).transpose()?;
        Ok(Self {
            tokenizer_config,
            ..files
        })
    }

    /// Reads a diffusers folder from disk.
    #[cfg(not(target_family = "wasm"))]
    pub fn read_dir(dir: &std::path::Path) -> Result<Self> {
        Self::from_lookup(&format!("{}/", dir.display()), |p| {
            match std::fs::read(dir.join(p)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Weights(format!("{}: {e}", dir.join(p).display()))),
            }
        })
    }
}

/// The autoencoder of a pipeline: a KL VAE or TAESD.
#[derive(Debug)]
pub enum Vae {
    Kl(Box<AutoencoderKL>),
    Tiny(AutoencoderTiny),
}

impl Vae {
    fn encode_scaled(&self, image: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Kl(v) => v.scale_latents(v.encode(image)),
            Self::Tiny(v) => v.scale_latents(v.encode(image)),
        }
    }

    fn decode_scaled(&self, latents: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Kl(v) => v.decode(v.unscale_latents(latents)),
            Self::Tiny(v) => v.decode(v.unscale_latents(latents)),
        }
    }
}

#[derive(Deserialize)]
struct VaeKind {
    #[serde(rename = "_class_name", default)]
    class_name: Option<String>,
    #[serde(default)]
    block_out_channels: Vec<usize>,
    #[serde(default)]
    decoder_block_out_channels: Vec<usize>,
}

/// A loaded text-to-image pipeline (Stable Diffusion layout).
pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: CLIPTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: Vae,
    pub scheduler_config: DDIMSchedulerConfig,
    /// Pixels per latent: 2^(number of VAE blocks − 1).
    pub vae_scale_factor: usize,
    /// Latent channels the UNet denoises (4), and its input channels (4 or 9).
    pub latent_channels: usize,
    pub unet_in_channels: usize,
    /// The size the model was trained at (`unet/config.json` sample_size × vae_scale_factor).
    pub default_size: usize,
    pub device: Device,
}

impl StableDiffusion {
    /// Builds every model from the folder's bytes; each weight file is freed
    /// once its model is on the device.
    pub fn load(files: PipelineFiles, device: &Device) -> Result<Self> {
        let tokenizer = ClipTokenizer::new(
            &files.vocab,
            &files.merges,
            files.tokenizer_config.as_deref(),
        )?;

        let te_config = CLIPTextConfig::from_json(&files.text_encoder_config)?;
        let f = WeightFile::from_bytes(
            "text_encoder/model.safetensors",
            files.text_encoder_weights,
            device,
        )?;
        let text_encoder = CLIPTextModel::load(&f.root(), &te_config);
        f.finish(CLIPTextModel::ignorable_key)?;

        let unet_config = UNet2DConditionConfig::from_json(&files.unet_config)?;
        let f = WeightFile::from_bytes(
            "unet/diffusion_pytorch_model.safetensors",
            files.unet_weights,
            device,
        )?;
        let unet = UNet2DConditionModel::load(&f.root(), &unet_config)?;
        f.finish(|_| false)?;
        if unet_config.context_dim() != te_config.hidden_size {
            return Err(Error::Config(format!(
                "unet/config.json: cross_attention_dim = {} but the text encoder's hidden_size is {}",
                unet_config.context_dim(),
                te_config.hidden_size
            )));
        }

        let kind: VaeKind = crate::config::parse_config(&files.vae_config, "vae/config.json")?;
        let f = WeightFile::from_bytes(
            "vae/diffusion_pytorch_model.safetensors",
            files.vae_weights,
            device,
        )?;
        let (vae, blocks, latent_channels) =
            if kind.class_name.as_deref() == Some("AutoencoderTiny") {
                let c = AutoencoderTinyConfig::from_json(&files.vae_config)?;
                (
                    Vae::Tiny(AutoencoderTiny::load(&f.root(), &c)),
                    kind.decoder_block_out_channels.len(),
                    c.latent_channels,
                )
            } else {
                let c = AutoencoderKLConfig::from_json(&files.vae_config)?;
                (
                    Vae::Kl(Box::new(AutoencoderKL::load(&f.root(), &c))),
                    kind.block_out_channels.len().max(1),
                    c.latent_channels,
                )
            };
        f.finish(|_| false)?;

        let scheduler_config = DDIMSchedulerConfig::from_json(&files.scheduler_config)?;
        DDIMScheduler::new(scheduler_config.clone())?;
        let vae_scale_factor = 1 << (blocks.max(1) - 1);
        let unet_in_channels = unet_config.in_channels;
        let expected_in = if unet_in_channels == 9 {
            2 * latent_channels + 1
        } else {
            latent_channels
        };
        if unet_in_channels != expected_in || unet_config.out_channels != latent_channels {
            return Err(Error::Config(format!(
                "unet/config.json: in_channels = {unet_in_channels}, out_channels = {} do not fit a VAE with {latent_channels} latent channels",
                unet_config.out_channels
            )));
        }
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler_config,
            vae_scale_factor,
            latent_channels,
            unet_in_channels,
            default_size: unet_config.sample_size.unwrap_or(64) * vae_scale_factor,
            device: device.clone(),
        })
    }

    /// `[negative; prompt]` embeddings (`[2, L, D]`), or just the prompt's
    /// (`[1, L, D]`) when guidance is off.
    pub fn encode_prompt(&self, prompt: &str, negative_prompt: &str, guidance: bool) -> Tensor<3> {
        let mut ids: Vec<i64> = Vec::new();
        if guidance {
            ids.extend(
                self.tokenizer
                    .encode(negative_prompt)
                    .iter()
                    .map(|&i| i as i64),
            );
        }
        ids.extend(self.tokenizer.encode(prompt).iter().map(|&i| i as i64));
        let l = self.tokenizer.max_length;
        let b = ids.len() / l;
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, l]), &self.device);
        self.text_encoder.forward(ids)
    }

    /// Starts sampling. `init` (image in [-1, 1], `[1, 3, H, W]`) turns this
    /// into image-to-image; `mask` (`[1, 1, H, W]`, 1 = repaint) into inpainting.
    pub fn start(
        self: &Rc<Self>,
        o: &GenerateOptions,
        init: Option<Tensor<4>>,
        mask: Option<Tensor<4>>,
    ) -> Result<Sampling> {
        o.validate(self)?;
        let (h, w) = (
            o.height.unwrap_or(self.default_size),
            o.width.unwrap_or(self.default_size),
        );
        let (lh, lw) = (h / self.vae_scale_factor, w / self.vae_scale_factor);
        let mut config = self.scheduler_config.clone();
        if let Some(s) = o.timestep_spacing {
            config.timestep_spacing = s;
        }
        let mut scheduler = DDIMScheduler::new(config)?;
        scheduler.set_timesteps(o.steps)?;
        let guidance = o.guidance_scale > 1.0;
        let context = self.encode_prompt(&o.prompt, &o.negative_prompt, guidance);

        let mut noise = NoiseGenerator::new(o.seed);
        let shape = [1, self.latent_channels, lh, lw];
        let initial_noise = noise.tensor(shape, &self.device);
        if mask.is_some() && init.is_none() {
            return Err(Error::arg("inpainting needs an image as well as a mask"));
        }
        let image_latents = init.as_ref().map(|img| self.vae.encode_scaled(img.clone()));
        // img2img/inpaint start part-way: strength 1 starts from pure noise.
        let mut timesteps = scheduler.timesteps().to_vec();
        let strength = if init.is_some() { o.strength } else { 1.0 };
        let keep = ((o.steps as f64 * strength) as usize).min(o.steps);
        timesteps.drain(..o.steps - keep);
        if timesteps.is_empty() {
            return Err(Error::arg(format!(
                "strength = {strength} with {} steps leaves no step to run; raise strength or steps",
                o.steps
            )));
        }
        let latents = match (&image_latents, strength < 1.0) {
            (Some(z), true) => {
                scheduler
                    .schedule
                    .add_noise(z.clone(), initial_noise.clone(), &timesteps[..1])?
            }
            _ => initial_noise.clone(),
        };
        let composite = match (&init, &mask) {
            (Some(img), Some(m)) => Some((img.clone(), m.clone())),
            _ => None,
        };
        let (latent_mask, masked_image_latents) = match (&init, mask) {
            // A 9-channel inpainting UNet is conditioned on the binary mask and
            // on the latents of the image with the masked region blanked.
            (Some(img), Some(m)) if self.unet_in_channels == 9 => {
                let keep = m.clone().lower_elem(0.5).float();
                let z = self.vae.encode_scaled(img.clone() * keep);
                (Some(resize_nearest(m, lh, lw)), Some(z))
            }
            (_, Some(m)) => (Some(feather(resize_nearest(m, lh, lw))), None),
            _ => (None, None),
        };
        Ok(Sampling {
            sd: Rc::clone(self),
            scheduler,
            timesteps,
            index: 0,
            latents,
            context,
            guidance_scale: o.guidance_scale,
            eta: o.eta,
            noise,
            initial_noise,
            image_latents,
            latent_mask,
            masked_image_latents,
            composite,
        })
    }
}

fn resize_nearest(mask: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    interpolate(
        mask,
        InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h, w]),
    )
}

/// A 3×3 box blur: feathers the latent mask's edge by about one latent pixel
/// so the repainted region blends into the kept one.
fn feather(mask: Tensor<4>) -> Tensor<4> {
    use burn::tensor::module::avg_pool2d;
    use burn::tensor::ops::AvgPoolOptions;
    let mut o = AvgPoolOptions::new([3, 3]).with_stride([1, 1]);
    o.padding = [(1, 1), (1, 1)];
    o.count_include_pad = false;
    avg_pool2d(mask, o)
}

/// What a run is asked to do (the page's and the CLI's options).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GenerateOptions {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub steps: usize,
    pub eta: f64,
    pub guidance_scale: f64,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// img2img/inpainting: how much of the schedule to run (1 = from pure noise).
    pub strength: f64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            seed: 0,
            steps: 4,
            eta: 0.0,
            guidance_scale: 3.0,
            timestep_spacing: None,
            width: None,
            height: None,
            strength: 0.75,
        }
    }
}

impl GenerateOptions {
    fn validate(&self, sd: &StableDiffusion) -> Result<()> {
        let f = sd.vae_scale_factor;
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = v
                && (v == 0 || !v.is_multiple_of(f) || v > 2048)
            {
                return Err(Error::arg(format!(
                    "{name} = {v} must be a multiple of {f} between {f} and 2048"
                )));
            }
        }
        if !(1..=1000).contains(&self.steps) {
            return Err(Error::arg(format!(
                "steps = {} must be between 1 and 1000",
                self.steps
            )));
        }
        if !(self.guidance_scale.is_finite() && (0.0..=50.0).contains(&self.guidance_scale)) {
            return Err(Error::arg(format!(
                "guidance scale = {} must be between 0 and 50",
                self.guidance_scale
            )));
        }
        if !(self.eta.is_finite() && (0.0..=1.0).contains(&self.eta)) {
            return Err(Error::arg(format!(
                "eta = {} must be between 0 and 1",
                self.eta
            )));
        }
        if !(self.strength.is_finite() && self.strength > 0.0 && self.strength <= 1.0) {
            return Err(Error::arg(format!(
                "strength = {} must be in (0, 1]",
                self.strength
            )));
        }
        Ok(())
    }
}

/// A run in progress: call [`Sampling::step`] until it returns `false`,
/// then [`Sampling::decode`].
pub struct Sampling {
    sd: Rc<StableDiffusion>,
    scheduler: DDIMScheduler,
    timesteps: Vec<usize>,
    index: usize,
    latents: Tensor<4>,
    context: Tensor<3>,
    guidance_scale: f64,
    eta: f64,
    noise: NoiseGenerator,
    initial_noise: Tensor<4>,
    image_latents: Option<Tensor<4>>,
    latent_mask: Option<Tensor<4>>,
    masked_image_latents: Option<Tensor<4>>,
    /// Inpainting: the original image and the pixel mask, for the final blend.
    composite: Option<(Tensor<4>, Tensor<4>)>,
}

impl Sampling {
    /// Steps to run in total, and already run.
    pub fn total_steps(&self) -> usize {
        self.timesteps.len()
    }
    pub fn steps_done(&self) -> usize {
        self.index
    }

    /// Runs one denoising step; returns whether steps remain.
    pub fn step(&mut self) -> Result<bool> {
        let Some(&t) = self.timesteps.get(self.index) else {
            return Ok(false);
        };
        let sd = Rc::clone(&self.sd);
        let guidance = self.guidance_scale > 1.0;
        let mut input = self.latents.clone();
        if let (Some(m), Some(z)) = (&self.latent_mask, &self.masked_image_latents) {
            input = Tensor::cat(vec![input, m.clone(), z.clone()], 1);
        }
        if guidance {
            input = Tensor::cat(vec![input.clone(), input], 0);
        }
        let out = sd.unet.forward(input, &[t as f32], &self.context, None);
        let noise_pred = if guidance {
            let mut halves = out.chunk(2, 0);
            let cond = halves.pop().expect("two halves");
            let uncond = halves.pop().expect("two halves");
            uncond.clone() + (cond - uncond).mul_scalar(self.guidance_scale as f32)
        } else {
            out
        };
        let variance_noise =
            (self.eta > 0.0).then(|| self.noise.tensor(self.latents.dims(), &sd.device));
        let step = self.scheduler.step(
            noise_pred,
            t,
            self.latents.clone(),
            self.eta,
            variance_noise,
        )?;
        self.latents = step.prev_sample;
        self.index += 1;
        // 4-channel inpainting: keep the known region on the original's noisy trajectory.
        if let (Some(m), Some(z), None) = (
            &self.latent_mask,
            &self.image_latents,
            &self.masked_image_latents,
        ) {
            let known = match self.timesteps.get(self.index) {
                Some(&next) => self.scheduler.schedule.add_noise(
                    z.clone(),
                    self.initial_noise.clone(),
                    &[next],
                )?,
                None => z.clone(),
            };
            let keep = m.clone().neg().add_scalar(1.0);
            self.latents = known * keep + self.latents.clone() * m.clone();
        }
        Ok(self.index < self.timesteps.len())
    }

    /// The current latents decoded to an image in [-1, 1] (a preview mid-run).
    pub fn decode(&self) -> Tensor<4> {
        self.sd.vae.decode_scaled(self.latents.clone())
    }

    /// The result: the decoded image, and for inpainting the original's
    /// pixels wherever the mask is 0 (blended where it is fractional).
    pub fn finish(&self) -> Tensor<4> {
        let image = self.decode();
        match &self.composite {
            Some((original, mask)) => {
                let keep = mask.clone().neg().add_scalar(1.0);
                image * mask.clone() + original.clone() * keep
            }
            None => image,
        }
    }
}
