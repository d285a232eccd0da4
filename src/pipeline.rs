//! The denoising loop: text encoding, classifier-free guidance, DDIM steps,
//! decoding; text-to-image, image-to-image and inpainting. The models only
//! denoise and decode; this module owns the loop.
//!
//! The loop is driven one step at a time through [`Sampling`], so callers
//! can report progress, show previews and cancel between steps (the browser
//! worker awaits between steps; native code just loops). Nothing is read back
//! from the device inside the loop.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::{mask_to_tensor, rgba_to_tensor};
use crate::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use crate::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use crate::models::clip::{CLIPTextConfig, CLIPTextModel, ClipTokenizer};
use crate::models::embeddings::guidance_scale_embedding;
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::noise::NoiseGenerator;
use crate::prompts::{PROMPTS_FILE, PromptCheck, PromptVocabulary};
use crate::schedulers::DdimCoefficients;
use crate::schedulers::{
    DDPMScheduler, NoiseSchedule, Scheduler, SchedulerConfig, TimestepSpacing,
};
use crate::weights::{Header, VarBuilder, WeightFile, parameter_bytes};

/// The text files of a diffusers folder the pipeline reads: configs and the tokenizer.
pub const TEXT_FILES: [&str; 6] = [
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
];

/// Text files read when present; `model_index.json` first, so a folder of a
/// kind this app cannot run is named before anything else is read.
pub const OPTIONAL_FILES: [&str; 4] = [
    "model_index.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    PROMPTS_FILE,
];

/// The low-resolution image's noise schedule of an upscaler folder (read when
/// `model_index.json` names a `StableDiffusionUpscalePipeline`).
pub const LOW_RES_SCHEDULER_FILE: &str = "low_res_scheduler/scheduler_config.json";

/// The upscale pipeline's `max_noise_level` when `model_index.json` leaves it
/// out (diffusers' default), and its `noise_level` default.
pub const DEFAULT_MAX_NOISE_LEVEL: usize = 350;
pub const DEFAULT_NOISE_LEVEL: usize = 20;

/// What `model_index.json` says a folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PipelineKind {
    /// Text to image (also image to image and inpainting): StableDiffusionPipeline
    /// and its kin, or a folder without `model_index.json`.
    #[default]
    TextToImage,
    /// diffusers' StableDiffusionUpscalePipeline: a low-resolution image
    /// (noised at a `noise_level` of at most `max_noise_level`) in, an image
    /// `vae_scale_factor` times larger out.
    Upscale { max_noise_level: usize },
}

/// The component classes this app runs, per `model_index.json` entry.
const COMPONENTS: [(&str, &[&str]); 5] = [
    ("unet", &["UNet2DConditionModel"]),
    ("vae", &["AutoencoderKL", "AutoencoderTiny"]),
    (
        "text_encoder",
        &["CLIPTextModel", "CLIPTextModelWithProjection"],
    ),
    ("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"]),
    ("low_res_scheduler", &["DDPMScheduler"]),
];

/// Checks a folder's `model_index.json` (when it has one) before anything else
/// is read: a pipeline of another kind (SDXL, SD3, Flux, ...) or a component
/// this app cannot run is named here, before any weight is downloaded. An
/// HTML page in its place (a host answering every missing path with one) is
/// a folder without the file, as for every optional file. Returns what the
/// folder is (an upscaler needs its `low_res_scheduler` too).
pub fn check_model_index(text: &str) -> Result<PipelineKind> {
    let file = "model_index.json";
    if text.trim_start().starts_with('<') {
        return Ok(PipelineKind::TextToImage);
    }
    let index: serde_json::Map<String, serde_json::Value> =
        crate::config::parse_config(text, file)?;
    let class = index
        .get("_class_name")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let present = |k: &str| {
        index
            .get(k)
            .is_some_and(|v| v.as_array().is_some_and(|a| a.iter().any(|x| !x.is_null())))
    };
    let unsupported = |what: &str| {
        Err(Error::Config(format!(
            "{file}: this is {what} (_class_name = {class:?}), which this app does not run; it runs \
             Stable Diffusion 1.x/2.x-family models (SD-Turbo, SDXS, BK-SDM, LCM)"
        )))
    };
    if present("text_encoder_2") || class.contains("XL") {
        return unsupported("an SDXL pipeline (two text encoders)");
    }
    if present("transformer") {
        return unsupported("a transformer-based pipeline (SD3, Flux, PixArt, ...)");
    }
    let upscale = class == "StableDiffusionUpscalePipeline" || present("low_res_scheduler");
    if class.contains("Upscale") && class != "StableDiffusionUpscalePipeline" {
        return unsupported(
            "a latent upscaler (the upscalers it runs have StableDiffusionUpscalePipeline's layout)",
        );
    }
    for (key, classes) in COMPONENTS {
        let Some(entry) = index.get(key) else {
            continue;
        };
        let named = entry
            .as_array()
            .and_then(|a| a.get(1))
            .and_then(|v| v.as_str());
        match named {
            Some(c) if classes.contains(&c) => {}
            Some(c) => {
                return Err(Error::Config(format!(
                    "{file}: {key} is a {c}, which this app cannot run (it runs {})",
                    classes.join(" or ")
                )));
            }
            None => {
                return Err(Error::Config(format!(
                    "{file}: the pipeline has no {key} ({key} = {entry}); this app needs one"
                )));
            }
        }
    }
    if !upscale {
        return Ok(PipelineKind::TextToImage);
    }
    let max_noise_level = match index.get("max_noise_level") {
        None => DEFAULT_MAX_NOISE_LEVEL,
        Some(v) => v
            .as_u64()
            .filter(|&v| v <= MAX_STEPS)
            .map(|v| v as usize)
            .ok_or_else(|| {
                Error::Config(format!(
                    "{file}: max_noise_level = {v} must be a whole number from 0 to {MAX_STEPS}"
                ))
            })?,
    };
    Ok(PipelineKind::Upscale { max_noise_level })
}

/// The weight files, in the order they are loaded (text encoder, UNet, VAE).
pub const WEIGHT_FILES: [&str; 3] = [
    "text_encoder/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
];

/// The index of a sharded weight file (`unet/diffusion_pytorch_model.safetensors`
/// → `unet/diffusion_pytorch_model.safetensors.index.json`), or of its fp16
/// variant (`….safetensors.index.fp16.json`), as diffusers names them.
pub fn shard_index_path(path: &str, fp16: bool) -> String {
    if fp16 {
        format!("{path}.index.fp16.json")
    } else {
        format!("{path}.index.json")
    }
}

/// The most shards an index may name (real SD-family checkpoints have 1–3).
pub const MAX_SHARDS: usize = 256;

/// A sharded checkpoint's `*.safetensors.index.json`: which shard holds each key.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    /// The index's path, for messages.
    pub path: String,
    /// The shards' paths in the model folder, in the order first named.
    pub shards: Vec<String>,
    weight_map: std::collections::BTreeMap<String, String>,
}

impl ShardIndex {
    /// Parses the index at `path` (shard names are relative to its folder).
    pub fn parse(path: &str, text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Raw {
            weight_map: std::collections::BTreeMap<String, String>,
        }
        let raw: Raw = crate::config::parse_config(text, path)?;
        let folder = path.rsplit_once('/').map(|(f, _)| f).unwrap_or("");
        let mut shards: Vec<String> = Vec::new();
        let mut weight_map = std::collections::BTreeMap::new();
        for (key, file) in raw.weight_map {
            let plain = !file.is_empty()
                && !file.contains(['/', '\\'])
                && file != ".."
                && file.ends_with(".safetensors");
            if !plain {
                return Err(Error::Weights(format!(
                    "{path}: shard {file:?} (for {key}) is not a .safetensors file name in the \
                     index's folder"
                )));
            }
            let shard = if folder.is_empty() {
                file
            } else {
                format!("{folder}/{file}")
            };
            if !shards.contains(&shard) {
                if shards.len() == MAX_SHARDS {
                    return Err(Error::Weights(format!(
                        "{path} names more than {MAX_SHARDS} shards"
                    )));
                }
                shards.push(shard.clone());
            }
            weight_map.insert(key, shard);
        }
        if shards.is_empty() {
            return Err(Error::Weights(format!("{path}: weight_map names no shard")));
        }
        Ok(Self {
            path: path.to_string(),
            shards,
            weight_map,
        })
    }

    /// Checks the shards' headers (in [`Self::shards`] order) against the
    /// index: each key in the shard the index names, none missing or extra.
    pub fn check(&self, headers: &[Header]) -> Result<()> {
        let mut seen = 0usize;
        for (shard, h) in self.shards.iter().zip(headers) {
            for key in h.tensors.keys() {
                match self.weight_map.get(key) {
                    Some(s) if s == shard => seen += 1,
                    Some(s) => {
                        return Err(Error::Weights(format!(
                            "{shard} holds {key}, which {} puts in {s}",
                            self.path
                        )));
                    }
                    None => {
                        return Err(Error::Weights(format!(
                            "{shard} holds {key}, which {} does not name",
                            self.path
                        )));
                    }
                }
            }
        }
        if seen != self.weight_map.len() {
            let missing = (self.weight_map.iter())
                .find(|(k, s)| {
                    let i = self.shards.iter().position(|x| x == *s);
                    !i.and_then(|i| headers.get(i))
                        .is_some_and(|h| h.tensors.contains_key(*k))
                })
                .map(|(k, s)| format!("{k} (in {s})"))
                .unwrap_or_default();
            return Err(Error::Weights(format!(
                "{}: {} keys are named but the shards hold {seen}; missing: {missing}",
                self.path,
                self.weight_map.len()
            )));
        }
        Ok(())
    }
}

/// Where a pipeline file is found in a separate VAE folder, for a VAE swapped
/// in from elsewhere (TAESD, `madebyollin/taesd`, as a fast decoder for any
/// model with SD's 4-channel latents): `vae/config.json` → `config.json`,
/// `vae/diffusion_pytorch_model.safetensors` → `diffusion_pytorch_model.safetensors`.
/// `None` for the files that stay in the model folder.
pub fn swapped_vae_path(path: &str) -> Option<&str> {
    path.strip_prefix("vae/")
}

/// The folder and path a pipeline file is read from on disk: `vae` (a
/// swapped-in VAE's folder, see [`swapped_vae_path`]) for the VAE's files
/// when given, else the model folder.
#[cfg(not(target_family = "wasm"))]
fn locate<'a>(
    dir: &'a std::path::Path,
    vae: Option<&'a std::path::Path>,
    path: &'a str,
) -> (&'a std::path::Path, &'a str) {
    match (vae, swapped_vae_path(path)) {
        (Some(v), Some(rest)) => (v, rest),
        _ => (dir, path),
    }
}

/// A weight file's half-precision variant (`unet/diffusion_pytorch_model.fp16.safetensors`),
/// which Hub repos offer beside the f32 file or instead of it. It is read first
/// when present: half the download, and the same values once on the device.
pub fn fp16_variant(path: &str) -> String {
    path.replace(".safetensors", ".fp16.safetensors")
}

/// The largest text file accepted (CLIP's vocab.json is 1.6 MB).
pub const MAX_TEXT_FILE_BYTES: u64 = 16 << 20;

/// The autoencoder's config: a KL VAE or TAESD.
#[derive(Debug, Clone)]
pub enum VaeConfig {
    Kl(AutoencoderKLConfig),
    Tiny(AutoencoderTinyConfig),
}

/// Every config of a pipeline folder, parsed and checked against each other,
/// and its tokenizer: what is known before any weight arrives.
#[derive(Debug)]
pub struct PipelineConfig {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: CLIPTextConfig,
    pub unet: UNet2DConditionConfig,
    pub vae: VaeConfig,
    pub scheduler: SchedulerConfig,
    /// The folder's `prompts.json`, when it has one.
    pub prompts: Option<PromptVocabulary>,
    /// Set for an upscaler folder (see [`PipelineKind::Upscale`]).
    pub upscale: Option<UpscaleConfig>,
}

/// What an upscaler folder adds to a pipeline: the schedule its low-resolution
/// image is noised on (`low_res_scheduler`, DDPM's `add_noise`) and the
/// highest noise level it takes.
#[derive(Debug, Clone)]
pub struct UpscaleConfig {
    pub low_res_schedule: NoiseSchedule,
    pub max_noise_level: usize,
}

impl PipelineConfig {
    /// Reads the text files through `get(relative path)`, which returns `None`
    /// for a file that is not there; `location` prefixes paths in messages.
    pub fn from_lookup(
        location: &str,
        mut get: impl FnMut(&str) -> Result<Option<Vec<u8>>>,
    ) -> Result<Self> {
        let mut text = |p: &str, required: bool| -> Result<Option<String>> {
            let Some(b) = get(p)? else {
                return if required {
                    Err(Error::Weights(format!(
                        "{location}{p} is missing from the model folder"
                    )))
                } else {
                    Ok(None)
                };
            };
            if b.len() as u64 > MAX_TEXT_FILE_BYTES {
                return Err(Error::Config(format!(
                    "{location}{p} is {} bytes, more than a config or tokenizer file can be",
                    b.len()
                )));
            }
            let t = String::from_utf8(b)
                .map_err(|_| Error::Config(format!("{location}{p} is not UTF-8 text")))?;
            if t.trim_start().starts_with('<') {
                // A host that answers every missing path with its HTML page:
                // an optional file is then simply absent.
                if !required {
                    return Ok(None);
                }
                return Err(Error::Config(format!(
                    "{location}{p} is an HTML page, not the file: is the model folder URL right?"
                )));
            }
            Ok(Some(t))
        };
        let pipeline_kind = match text(OPTIONAL_FILES[0], false)? {
            Some(index) => check_model_index(&index)?,
            None => PipelineKind::TextToImage,
        };
        // The first missing file, in TEXT_FILES order, is the one reported.
        let [unet, vae, te, vocab, merges, scheduler] =
            TEXT_FILES.map(|p| text(p, true).map(|t| t.unwrap_or_default()));
        let (unet, vae, te, vocab, merges, scheduler) =
            (unet?, vae?, te?, vocab?, merges?, scheduler?);
        let tokenizer_config = text(OPTIONAL_FILES[1], false)?;
        let special_tokens = text(OPTIONAL_FILES[2], false)?;
        let tokenizer_config = merge_special_tokens(tokenizer_config, special_tokens)?;
        let tokenizer = ClipTokenizer::new(&vocab, &merges, tokenizer_config.as_deref())?;
        let prompts = text(OPTIONAL_FILES[3], false)?
            .map(|t| PromptVocabulary::from_json(&t))
            .transpose()?;
        let text_encoder = CLIPTextConfig::from_json(&te)?;
        let unet = UNet2DConditionConfig::from_json(&unet)?;
        let vae_json = vae;
        let kind: VaeKind = crate::config::parse_config(&vae_json, "vae/config.json")?;
        // A config saved without its class name is TAESD's when it has TAESD's keys.
        let tiny_keys = kind.decoder_block_out_channels.is_some();
        let class = (kind.class_name.as_deref()).or(tiny_keys.then_some("AutoencoderTiny"));
        let vae = match class {
            Some("AutoencoderTiny") => {
                VaeConfig::Tiny(AutoencoderTinyConfig::from_json(&vae_json)?)
            }
            Some("AutoencoderKL") | None => {
                VaeConfig::Kl(AutoencoderKLConfig::from_json(&vae_json)?)
            }
            Some(other) => {
                return Err(Error::Config(format!(
                    "vae/config.json: _class_name = {other:?} is not supported: use AutoencoderKL \
                     or AutoencoderTiny (TAESD)"
                )));
            }
        };
        let scheduler = SchedulerConfig::from_json(&scheduler)?;
        scheduler.build(None)?;
        let upscale = match pipeline_kind {
            PipelineKind::TextToImage => None,
            PipelineKind::Upscale { max_noise_level } => {
                let json = text(LOW_RES_SCHEDULER_FILE, true)?.unwrap_or_default();
                let low_res = DDPMScheduler::from_json(&json).map_err(|e| match e {
                    Error::Config(m) => Error::Config(format!("{LOW_RES_SCHEDULER_FILE}: {m}")),
                    e => e,
                })?;
                Some(UpscaleConfig {
                    low_res_schedule: low_res.schedule,
                    max_noise_level,
                })
            }
        };
        let c = Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler,
            prompts,
            upscale,
        };
        c.check_consistency()?;
        Ok(c)
    }

    /// Reads the text files of a diffusers folder on disk.
    #[cfg(not(target_family = "wasm"))]
    pub fn read_dir(dir: &std::path::Path) -> Result<Self> {
        Self::read_dir_with_vae(dir, None)
    }

    /// [`Self::read_dir`], with the VAE's config read from another folder
    /// when given (see [`swapped_vae_path`]).
    #[cfg(not(target_family = "wasm"))]
    pub fn read_dir_with_vae(dir: &std::path::Path, vae: Option<&std::path::Path>) -> Result<Self> {
        Self::from_lookup(&format!("{}/", dir.display()), |p| {
            let (folder, at) = locate(dir, vae, p);
            let path = folder.join(at);
            let swapped = vae.is_some() && swapped_vae_path(p).is_some();
            if swapped && !path.is_file() {
                return Err(Error::Weights(format!(
                    "{} is missing from the VAE folder",
                    path.display()
                )));
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.len() > MAX_TEXT_FILE_BYTES => Err(Error::Config(format!(
                    "{} is {} bytes, more than a config or tokenizer file can be",
                    path.display(),
                    m.len()
                ))),
                Ok(_) => std::fs::read(&path)
                    .map(Some)
                    .map_err(|e| Error::Weights(format!("{}: {e}", path.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Weights(format!("{}: {e}", path.display()))),
            }
        })
    }

    fn latent_channels(&self) -> usize {
        match &self.vae {
            VaeConfig::Kl(c) => c.latent_channels,
            VaeConfig::Tiny(c) => c.latent_channels,
        }
    }

    /// Pixels per latent: 2^(number of VAE blocks − 1).
    pub fn vae_scale_factor(&self) -> usize {
        let blocks = match &self.vae {
            VaeConfig::Kl(c) => c.block_out_channels.len(),
            VaeConfig::Tiny(c) => c.decoder_block_out_channels.len(),
        };
        1 << (blocks.clamp(1, 8) - 1)
    }

    /// How many times larger than a run's input size (the options' width
    /// and height) its image is: an upscaler's VAE factor, else 1.
    pub fn upscale_factor(&self) -> usize {
        match self.upscale {
            Some(_) => self.vae_scale_factor(),
            None => 1,
        }
    }

    /// Sizes are multiples of this: pixels per latent, or 1 for an
    /// upscaler's input (its latents are the input's size).
    pub fn size_step(&self) -> usize {
        match self.upscale {
            Some(_) => 1,
            None => self.vae_scale_factor(),
        }
    }

    /// The size the model was trained at, in pixels (`sample_size` latents);
    /// an upscaler's is its input's (its latents are the input's size).
    pub fn default_size(&self) -> usize {
        let latents = self.unet.sample_size.unwrap_or(64).min(1 << 12);
        if self.upscale.is_some() {
            latents
        } else {
            latents * self.vae_scale_factor()
        }
    }

    fn footprint(&self) -> Footprint {
        let (vae_encoder, vae_decoder) = match &self.vae {
            VaeConfig::Kl(c) => {
                let b = &c.block_out_channels;
                let pair = |i: usize, j: usize| b[i].max(b[j.min(b.len() - 1)]);
                (
                    // Level i holds block i's channels and what the block
                    // before it hands down (encoder), or what the block below
                    // hands up (decoder).
                    (0..b.len()).map(|i| pair(i.saturating_sub(1), i)).collect(),
                    (0..b.len()).map(|i| pair(i, i + 1)).collect(),
                )
            }
            VaeConfig::Tiny(c) => {
                let all = c.encoder_block_out_channels.iter();
                let most = all
                    .chain(&c.decoder_block_out_channels)
                    .copied()
                    .max()
                    .unwrap_or(0);
                (vec![most], vec![most])
            }
        };
        let tiled_vae = matches!(self.vae, VaeConfig::Kl(_));
        let b = &self.unet.block_out_channels;
        let unet = (0..b.len())
            .map(|i| {
                let skip = b[i] + b[(i + 1).min(b.len() - 1)];
                let attends = self.unet.down_block_types[i].contains("CrossAttn");
                if attends { skip.max(8 * b[i]) } else { skip }
            })
            .collect();
        Footprint {
            vae_encoder,
            vae_decoder,
            tiled_vae,
            unet,
        }
    }

    fn check_consistency(&self) -> Result<()> {
        if self.unet.context_dim() != self.text_encoder.hidden_size {
            return Err(Error::Config(format!(
                "unet/config.json: cross_attention_dim = {} but the text encoder's hidden_size is {}",
                self.unet.context_dim(),
                self.text_encoder.hidden_size
            )));
        }
        let latent = self.latent_channels();
        let unet_in = self.unet.in_channels;
        let expected_in = match &self.upscale {
            // The noisy latents and the low-resolution RGB image.
            Some(_) => latent + 3,
            None if unet_in == 9 => 2 * latent + 1,
            None => latent,
        };
        if unet_in != expected_in || self.unet.out_channels != latent {
            let upscaler = match self.upscale {
                Some(_) => " (an upscaler's UNet takes the latents and the RGB image)",
                None => "",
            };
            return Err(Error::Config(format!(
                "unet/config.json: in_channels = {unet_in}, out_channels = {} do not fit a VAE with \
                 {latent} latent channels{upscaler}",
                self.unet.out_channels
            )));
        }
        if let Some(up) = &self.upscale {
            let levels = up.low_res_schedule.len();
            let classes = self.unet.num_class_embeds.unwrap_or(0);
            if up.max_noise_level >= levels.min(classes) {
                return Err(Error::Config(format!(
                    "model_index.json: max_noise_level = {} but the UNet has {classes} noise-level \
                     classes (num_class_embeds) and the low-res scheduler {levels} timesteps",
                    up.max_noise_level
                )));
            }
        }
        if self.tokenizer.max_length > self.text_encoder.max_position_embeddings {
            return Err(Error::Config(format!(
                "tokenizer/tokenizer_config.json: model_max_length = {} but the text encoder has \
                 only {} positions (max_position_embeddings)",
                self.tokenizer.max_length, self.text_encoder.max_position_embeddings
            )));
        }
        if let Some(id) = self.tokenizer.max_id()
            && id as usize >= self.text_encoder.vocab_size
        {
            return Err(Error::Config(format!(
                "tokenizer/vocab.json has token id {id} but the text encoder knows only {} tokens \
                 (vocab_size)",
                self.text_encoder.vocab_size
            )));
        }
        Ok(())
    }

    /// Which keys of weight file `i` (see [`WEIGHT_FILES`]) may stay unused.
    fn ignorable(i: usize) -> fn(&str) -> bool {
        if i == 0 {
            CLIPTextModel::ignorable_key
        } else {
            |_| false
        }
    }

    /// Which keys of weight file `i` are kept in host memory.
    pub fn on_host(i: usize) -> fn(&str) -> bool {
        if i == 0 {
            CLIPTextModel::host_key
        } else {
            |_| false
        }
    }

    fn text_encoder_model(&self, vb: &VarBuilder) -> Result<CLIPTextModel> {
        Ok(CLIPTextModel::load(vb, &self.text_encoder))
    }

    fn unet_model(&self, vb: &VarBuilder) -> Result<UNet2DConditionModel> {
        UNet2DConditionModel::load(vb, &self.unet)
    }

    fn vae_model(&self, vb: &VarBuilder) -> Result<Vae> {
        Ok(match &self.vae {
            VaeConfig::Kl(c) => Vae::Kl(Box::new(AutoencoderKL::load(vb, c))),
            VaeConfig::Tiny(c) => Vae::Tiny(AutoencoderTiny::load(vb, c)),
        })
    }

    /// The keys and shapes each weight file (in [`WEIGHT_FILES`] order) must hold.
    pub fn plan(&self) -> [Vec<(String, Vec<usize>)>; 3] {
        [
            crate::weights::plan(|vb| self.text_encoder_model(vb)),
            crate::weights::plan(|vb| self.unet_model(vb)),
            crate::weights::plan(|vb| self.vae_model(vb)),
        ]
    }

    /// Compares the configs with the weight files' headers (in [`WEIGHT_FILES`]
    /// order) key by key, before any tensor data is read.
    pub fn check(&self, headers: [&Header; 3]) -> Result<()> {
        let [te, unet, vae] = headers;
        te.check(Self::ignorable(0), |vb| self.text_encoder_model(vb))?;
        unet.check(Self::ignorable(1), |vb| self.unet_model(vb))?;
        vae.check(Self::ignorable(2), |vb| self.vae_model(vb))
    }
}

/// transformers lets `special_tokens_map.json` override the tokens of
/// `tokenizer_config.json`: SD 2.x and SD-Turbo pad with "!" that way.
fn merge_special_tokens(config: Option<String>, special: Option<String>) -> Result<Option<String>> {
    let Some(special) = special else {
        return Ok(config);
    };
    let file = "tokenizer/special_tokens_map.json";
    let special: serde_json::Value = crate::config::parse_config(&special, file)?;
    let mut merged: serde_json::Map<String, serde_json::Value> = match &config {
        Some(c) => crate::config::parse_config(c, "tokenizer/tokenizer_config.json")?,
        None => serde_json::Map::new(),
    };
    if let Some(pad) = special.get("pad_token") {
        merged.insert("pad_token".into(), pad.clone());
    }
    Ok(Some(serde_json::Value::Object(merged).to_string()))
}

/// The largest weight tensor of a pipeline as `(folder/key, bytes once
/// loaded as f32)`: a GPU must be able to bind a buffer this big.
/// Tensors kept in host memory ([`PipelineConfig::on_host`]) do not count.
pub fn largest_tensor(headers: &[&Header]) -> (String, u64) {
    let mut best = (String::new(), 0u64);
    for (i, h) in headers.iter().enumerate() {
        let folder = h.name.split('/').next().unwrap_or_default();
        if let Some((key, n)) = h.largest(PipelineConfig::on_host(i)) {
            let name = format!("{folder}/{key}");
            if n * 4 > best.1 || (n * 4 == best.1 && name < best.0) {
                best = (name, n * 4);
            }
        }
    }
    best
}

/// Bytes every weight of a pipeline takes once loaded as f32.
pub fn weight_bytes(headers: &[&Header]) -> u64 {
    weight_bytes_as(headers, 4)
}

/// Bytes the weights of a pipeline take once loaded with `size` bytes per
/// value, tensors kept on the host ([`PipelineConfig::on_host`]) as stored.
pub fn weight_bytes_as(headers: &[&Header], size: u64) -> u64 {
    let file = |(i, h): (usize, &&Header)| -> u64 {
        let on_host = PipelineConfig::on_host(i);
        (h.tensors.iter())
            .map(|(k, t)| {
                if on_host(k) {
                    t.end - t.start
                } else {
                    t.elements() * size
                }
            })
            .sum()
    };
    headers.iter().enumerate().map(file).sum()
}

/// The float type the networks keep their weights in and compute with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 on a GPU that computes in f16 when the weights would take more
    /// than [`AUTO_F16_WEIGHT_BYTES`] as f32 (the 512×512 Stable Diffusion
    /// models); f32 otherwise, where images then equal diffusers' f32 ones
    /// within one 8-bit level and the CPU path's.
    #[default]
    Auto,
    F32,
    /// Weights stored as f16 on the device (half the memory of f32) and every
    /// network run in f16, except the softmax of attention and the statistics
    /// of group and layer norms, which run in f32 as in diffusers and PyTorch.
    F16,
}

/// Above this many bytes of f32 weights `Precision::Auto` picks f16 where
/// the device has it: SD-Turbo's 5.2 GB halve to 2.6 GB.
pub const AUTO_F16_WEIGHT_BYTES: u64 = 1 << 30;

impl Precision {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => Err(Error::arg(format!(
                "precision {s:?} is not one of \"auto\", \"f32\" or \"f16\""
            ))),
        }
    }

    /// The dtype weights get on `device` for a model whose weights take
    /// `f32_weight_bytes` as f32. Asking for f16 on a device without it is an
    /// error.
    pub fn dtype(self, device: &Device, f32_weight_bytes: u64) -> Result<DType> {
        let has_f16 = device.supports_dtype(DType::F16);
        let gpu = *device != Device::flex();
        match self {
            Self::F32 => Ok(DType::F32),
            Self::F16 if has_f16 => Ok(DType::F16),
            Self::F16 => Err(Error::arg(
                "this device cannot compute in f16 (a WebGPU adapter needs the shader-f16 \
                 feature); use precision \"f32\" or \"auto\"",
            )),
            Self::Auto if gpu && has_f16 && f32_weight_bytes > AUTO_F16_WEIGHT_BYTES => {
                Ok(DType::F16)
            }
            Self::Auto => Ok(DType::F32),
        }
    }
}

/// The autoencoder of a pipeline: a KL VAE or TAESD.
#[derive(Debug)]
pub enum Vae {
    Kl(Box<AutoencoderKL>),
    Tiny(AutoencoderTiny),
}

impl Vae {
    /// An image in [-1, 1] → latents scaled as the UNet sees them, in `tile`
    /// × `tile`-latent tiles when given (the KL encoder; see
    /// [`AutoencoderKL::tiled_encode`]).
    fn encode_scaled_tiled(&self, image: Tensor<4>, tile: Option<usize>) -> Tensor<4> {
        match (self, tile) {
            (Self::Kl(v), Some(t)) => v.scale_latents(v.tiled_encode(image, t)),
            (Self::Kl(v), None) => v.scale_latents(v.encode(image)),
            (Self::Tiny(v), _) => v.scale_latents(v.encode(image)),
        }
    }

    /// Latents scaled as the UNet sees them → an image in [-1, 1].
    pub fn decode_scaled(&self, latents: Tensor<4>) -> Tensor<4> {
        self.decode_scaled_tiled(latents, None)
    }

    /// [`Self::decode_scaled`], in `tile` × `tile`-latent tiles when given
    /// (the KL decoder; see [`AutoencoderKL::tiled_decode`]).
    pub fn decode_scaled_tiled(&self, latents: Tensor<4>, tile: Option<usize>) -> Tensor<4> {
        match (self, tile) {
            (Self::Kl(v), Some(t)) => v.tiled_decode(v.unscale_latents(latents), t),
            (Self::Kl(v), None) => v.decode(v.unscale_latents(latents)),
            (Self::Tiny(v), _) => v.decode(v.unscale_latents(latents)),
        }
    }
}

#[derive(Deserialize)]
struct VaeKind {
    #[serde(rename = "_class_name", default)]
    class_name: Option<String>,
    #[serde(default)]
    decoder_block_out_channels: Option<serde_json::Value>,
}

/// A loaded text-to-image pipeline (Stable Diffusion layout).
pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    /// The folder's `prompts.json`: emoji read as names, the words it knows.
    pub prompts: Option<PromptVocabulary>,
    pub text_encoder: CLIPTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: Vae,
    pub scheduler_config: SchedulerConfig,
    /// Pixels per latent: 2^(number of VAE blocks − 1).
    pub vae_scale_factor: usize,
    /// Latent channels the UNet denoises (4), and its input channels (4 or 9).
    pub latent_channels: usize,
    pub unet_in_channels: usize,
    /// The size the model was trained at (`unet/config.json` sample_size ×
    /// vae_scale_factor); an upscaler's input size.
    pub default_size: usize,
    /// Set for an upscaler: a low-resolution image in, one `vae_scale_factor`
    /// times larger out (see [`StableDiffusion::start`]).
    pub upscale: Option<UpscaleConfig>,
    pub device: Device,
    footprint: Footprint,
    /// The largest single buffer the device takes (see [`StableDiffusion::set_max_buffer_bytes`]).
    max_buffer_bytes: std::sync::atomic::AtomicU64,
    /// The last [`StableDiffusion::encode_prompt`]'s token ids and result:
    /// a page run again with the same prompt (another seed, more steps)
    /// skips the text encoder.
    last_prompt: std::sync::Mutex<Option<(Vec<i64>, Tensor<3>)>>,
}

/// The default per-buffer limit natively (RAM); the page sets the adapter's.
pub const NATIVE_MAX_BUFFER_BYTES: u64 = 4 << 30;

/// Channels per resolution level (full size first) that bound the largest
/// activation of each model: what a size costs, known from the configs.
#[derive(Debug, Clone)]
struct Footprint {
    /// VAE encoder and decoder: most channels alive at each pixel level.
    vae_encoder: Vec<usize>,
    vae_decoder: Vec<usize>,
    /// Whether the VAE can encode and decode in tiles (the KL VAE can).
    tiled_vae: bool,
    /// UNet: most channels alive at each latent level (skip concatenation,
    /// or the GEGLU feed-forward's 8× projection where the block attends).
    unet: Vec<usize>,
}

/// Decoder tiles (in latents) tried when a whole decode would not fit one
/// buffer, largest first; 64 is diffusers' for Stable Diffusion's VAE.
const DECODE_TILES: [usize; 6] = [64, 48, 32, 24, 16, 8];

impl Footprint {
    fn levels(c: &[usize], w: usize, h: usize) -> u64 {
        let level = |size: usize, i: usize| (size >> i).max(1) as u64;
        (c.iter().enumerate())
            .map(|(i, &c)| c as u64 * level(h, i) * level(w, i) * 4)
            .max()
            .unwrap_or(0)
    }

    /// The decoder's tile side in latents for a `w × h` image, when the whole
    /// decode would not fit `limit` bytes and a tile does.
    fn decode_tile(&self, w: usize, h: usize, scale: usize, limit: u64) -> Option<usize> {
        self.vae_tile(&self.vae_decoder, w, h, scale, limit)
    }

    /// The same for the encoder (img2img and inpainting).
    fn encode_tile(&self, w: usize, h: usize, scale: usize, limit: u64) -> Option<usize> {
        self.vae_tile(&self.vae_encoder, w, h, scale, limit)
    }

    fn vae_tile(&self, c: &[usize], w: usize, h: usize, scale: usize, limit: u64) -> Option<usize> {
        if !self.tiled_vae || Self::levels(c, w, h) <= limit {
            return None;
        }
        DECODE_TILES.into_iter().find(|&t| {
            let px = t * scale;
            px < w.max(h) && Self::levels(c, px.min(w), px.min(h)) <= limit
        })
    }

    /// The largest activation of the encoder or decoder (`c`) for a `w × h`
    /// image, in tiles of `tile` latents when given.
    fn vae_levels(c: &[usize], w: usize, h: usize, scale: usize, tile: Option<usize>) -> u64 {
        match tile {
            Some(t) => Self::levels(c, (t * scale).min(w), (t * scale).min(h)),
            None => Self::levels(c, w, h),
        }
    }

    /// `(bytes, where)` of the largest f32 activation for an image of
    /// `w × h` pixels with `batch` UNet rows (2 with guidance), the encoder
    /// and decoder tiled when that is what fits `limit`.
    fn largest(
        &self,
        w: usize,
        h: usize,
        scale: usize,
        batch: usize,
        limit: u64,
    ) -> (u64, &'static str) {
        let decode = self.decode_tile(w, h, scale, limit);
        let encode = self.encode_tile(w, h, scale, limit);
        let vae = Self::vae_levels(&self.vae_decoder, w, h, scale, decode).max(Self::vae_levels(
            &self.vae_encoder,
            w,
            h,
            scale,
            encode,
        ));
        let (lh, lw) = (h / scale.max(1), w / scale.max(1));
        let unet = batch as u64 * Self::levels(&self.unet, lw, lh);
        if vae >= unet {
            (vae, "the VAE")
        } else {
            (unet, "the UNet")
        }
    }
}

/// A weight file of a folder on disk: its shards' paths and headers, and the
/// component's name when they are a sharded checkpoint's (to merge).
#[cfg(not(target_family = "wasm"))]
type WeightShards = (Option<String>, Vec<(std::path::PathBuf, Header)>);

/// Finds weight file `i` of [`WEIGHT_FILES`] under `dir` (or the swapped VAE
/// folder): the fp16 variant, the file, then a sharded checkpoint's index,
/// whose shards are checked against it. Only headers are read.
#[cfg(not(target_family = "wasm"))]
fn weight_file_shards(
    dir: &std::path::Path,
    vae: Option<&std::path::Path>,
    i: usize,
) -> Result<WeightShards> {
    let (dir, p) = locate(dir, vae, WEIGHT_FILES[i]);
    let half = fp16_variant(p);
    for f in [half.as_str(), p] {
        let path = dir.join(f);
        if path.is_file() {
            let header = Header::read(&path, f)?;
            return Ok((None, vec![(path, header)]));
        }
    }
    for index in [shard_index_path(p, true), shard_index_path(p, false)] {
        let path = dir.join(&index);
        let io = |e: std::io::Error| Error::Weights(format!("{}: {e}", path.display()));
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() > MAX_TEXT_FILE_BYTES => {
                return Err(Error::Weights(format!("{} is too large", path.display())));
            }
            Ok(m) if m.is_file() => {}
            _ => continue,
        }
        let text = std::fs::read(&path).map_err(io)?;
        let index = ShardIndex::parse(&index, &String::from_utf8_lossy(&text))?;
        let mut shards = Vec::new();
        for s in &index.shards {
            if !dir.join(s).is_file() {
                return Err(Error::Weights(format!(
                    "{} is missing from the model folder ({} names it)",
                    dir.join(s).display(),
                    index.path
                )));
            }
            shards.push((dir.join(s), Header::read(&dir.join(s), s)?));
        }
        let headers: Vec<Header> = shards.iter().map(|(_, h)| h.clone()).collect();
        index.check(&headers)?;
        return Ok((Some(p.to_string()), shards));
    }
    Err(Error::Weights(format!(
        "{} is missing from the model folder (nor is there an fp16 variant or a sharded index)",
        dir.join(p).display()
    )))
}

impl StableDiffusion {
    /// Builds every model from its weight file (in [`WEIGHT_FILES`] order),
    /// each already streamed onto `device`.
    pub fn load(config: PipelineConfig, files: [WeightFile; 3], device: &Device) -> Result<Self> {
        let [te, unet, vae] = files;
        let c = &config;
        let text_encoder = te.build(PipelineConfig::ignorable(0), |vb| c.text_encoder_model(vb))?;
        let unet = unet.build(PipelineConfig::ignorable(1), |vb| c.unet_model(vb))?;
        let vae = vae.build(PipelineConfig::ignorable(2), |vb| c.vae_model(vb))?;
        let vae_scale_factor = config.vae_scale_factor();
        let footprint = config.footprint();
        Ok(Self {
            footprint,
            max_buffer_bytes: NATIVE_MAX_BUFFER_BYTES.into(),
            last_prompt: Default::default(),
            text_encoder,
            unet,
            vae,
            vae_scale_factor,
            latent_channels: config.latent_channels(),
            unet_in_channels: config.unet.in_channels,
            default_size: config.default_size(),
            upscale: config.upscale,
            scheduler_config: config.scheduler,
            tokenizer: config.tokenizer,
            prompts: config.prompts,
            device: device.clone(),
        })
    }

    /// Whether `guidance_scale` runs classifier-free guidance (a second,
    /// unconditional UNet row): above 1, unless the UNet has guidance
    /// distilled into it (LCM), which takes the scale as an input instead.
    pub fn classifier_free(&self, guidance_scale: f64) -> bool {
        guidance_scale > 1.0 && self.unet.guidance_embedding_dim().is_none()
    }

    /// What the user should know about the sampler: set when the folder's
    /// scheduler class is run as DDIM (see [`SchedulerConfig::note`]).
    pub fn scheduler_note(&self) -> Option<String> {
        self.scheduler_config.note()
    }

    /// Sets the largest buffer the device takes (WebGPU's
    /// `maxStorageBufferBindingSize`, or what memory is left on the CPU);
    /// sizes whose activations would not fit are then refused by `start`.
    pub fn set_max_buffer_bytes(&self, bytes: u64) {
        self.max_buffer_bytes.store(bytes.max(1), Relaxed);
    }

    pub fn max_buffer_bytes(&self) -> u64 {
        self.max_buffer_bytes.load(Relaxed)
    }

    /// The largest f32 activation (bytes) and the model holding it, for an
    /// image of `w × h` pixels.
    pub fn largest_activation(&self, w: usize, h: usize, guidance: bool) -> (u64, &'static str) {
        let batch = if guidance { 2 } else { 1 };
        let limit = self.max_buffer_bytes();
        self.footprint
            .largest(w, h, self.vae_scale_factor, batch, limit)
    }

    /// The decoder tile (in latents) an image of `w × h` pixels is decoded in
    /// on this device: `None` when the whole decode fits one buffer.
    pub fn decode_tile(&self, w: usize, h: usize) -> Option<usize> {
        let f = self.vae_scale_factor;
        self.footprint.decode_tile(w, h, f, self.max_buffer_bytes())
    }

    /// The encoder tile (in latents) an image of `w × h` pixels is encoded
    /// in on this device: `None` when the whole encode fits one buffer.
    pub fn encode_tile(&self, w: usize, h: usize) -> Option<usize> {
        let f = self.vae_scale_factor;
        self.footprint.encode_tile(w, h, f, self.max_buffer_bytes())
    }

    /// An image in [-1, 1] → its scaled latents (the VAE's mean), in tiles
    /// when a whole encode would not fit one of this device's buffers.
    pub fn encode_image(&self, image: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = image.dims();
        let tile = self.encode_tile(w, h);
        self.vae.encode_scaled_tiled(image, tile)
    }

    /// An RGBA image → its scaled latents `[1, C, h, w]` (the VAE's mean, as
    /// img2img starts from), for views that show the latent space. The size
    /// is checked as a run's would be.
    pub fn encode_rgba(&self, rgba: &[u8], width: usize, height: usize) -> Result<Tensor<4>> {
        self.check_image_size(width, height)?;
        let image = rgba_to_tensor(rgba, width, height, &self.device)?;
        Ok(self.encode_image(image))
    }

    /// Latent values (`[C, h, w]` flattened, scaled as the UNet sees them) →
    /// an image in [-1, 1]; `C` must be the model's latent channels and the
    /// size one it can decode.
    pub fn decode_values(&self, values: &[f32], shape: [usize; 3]) -> Result<Tensor<4>> {
        let [c, h, w] = shape;
        let f = self.vae_scale_factor;
        if c != self.latent_channels {
            return Err(Error::arg(format!(
                "latents have {c} channels; this model's have {}",
                self.latent_channels
            )));
        }
        self.check_image_size(w.saturating_mul(f), h.saturating_mul(f))?;
        if values.len() != c * h * w {
            return Err(Error::Shape(format!(
                "{} latent values given for a {c}×{h}×{w} latent",
                values.len()
            )));
        }
        let z = Tensor::from_data(TensorData::new(values.to_vec(), [1, c, h, w]), &self.device);
        Ok(self.decode_latents(z))
    }

    /// Latents → an image in [-1, 1], in tiles when a whole decode would not
    /// fit one of this device's buffers.
    pub fn decode_latents(&self, latents: Tensor<4>) -> Tensor<4> {
        let [_, _, lh, lw] = latents.dims();
        let f = self.vae_scale_factor;
        let tile = self.decode_tile(lw * f, lh * f);
        self.vae.decode_scaled_tiled(latents, tile)
    }

    /// The largest square side (a multiple of the VAE's scale factor, at most
    /// [`MAX_IMAGE_SIDE`]) whose activations fit the device's buffer limit.
    pub fn max_side(&self, guidance: bool) -> usize {
        let f = self.vae_scale_factor;
        let fits = |s: usize| self.largest_activation(s, s, guidance).0 <= self.max_buffer_bytes();
        (1..=MAX_IMAGE_SIDE / f)
            .rev()
            .map(|k| k * f)
            .find(|&s| fits(s))
            .unwrap_or(0)
    }

    /// The side of a size option: a multiple of the pixels per latent, at
    /// most [`MAX_IMAGE_SIDE`]; for an upscaler (whose options give its
    /// input's size) any side whose output is at most [`MAX_IMAGE_SIDE`].
    fn check_side(&self, name: &str, v: usize) -> Result<()> {
        let f = self.vae_scale_factor;
        if self.upscale.is_some() {
            let most = MAX_IMAGE_SIDE / f;
            if v == 0 || v > most {
                return Err(Error::arg(format!(
                    "{name} = {v}: the image to upscale must be between 1 and {most} pixels \
                     wide and high (this model makes images {f}× larger)"
                )));
            }
            return Ok(());
        }
        self.check_pixel_side(name, v)
    }

    /// A side in pixels of an image the VAE encodes or decodes.
    fn check_pixel_side(&self, name: &str, v: usize) -> Result<()> {
        let f = self.vae_scale_factor;
        if v == 0 || !v.is_multiple_of(f) || v > MAX_IMAGE_SIDE {
            return Err(Error::arg(format!(
                "{name} = {v} must be a multiple of {f} between {f} and {MAX_IMAGE_SIDE}"
            )));
        }
        Ok(())
    }

    /// How many times larger than its input size a run's image is (see
    /// [`PipelineConfig::upscale_factor`]).
    pub fn upscale_factor(&self) -> usize {
        match self.upscale {
            Some(_) => self.vae_scale_factor,
            None => 1,
        }
    }

    /// Sizes of a run are multiples of this (see [`PipelineConfig::size_step`]).
    pub fn size_step(&self) -> usize {
        match self.upscale {
            Some(_) => 1,
            None => self.vae_scale_factor,
        }
    }

    /// The size of the image a run of `w × h` makes.
    pub fn output_size(&self, w: usize, h: usize) -> (usize, usize) {
        (w * self.upscale_factor(), h * self.upscale_factor())
    }

    /// A `w × h` image without guidance: sides as [`Self::check_pixel_side`] and
    /// within this device's buffers (see [`Self::check_size`]).
    fn check_image_size(&self, w: usize, h: usize) -> Result<()> {
        self.check_pixel_side("width", w)?;
        self.check_pixel_side("height", h)?;
        self.check_size(w, h, false)
    }

    /// Refuses a size (of the image made, in pixels) whose largest
    /// activation would not fit one device buffer, naming what the device
    /// can make instead.
    pub fn check_size(&self, w: usize, h: usize, guidance: bool) -> Result<()> {
        let (need, model) = self.largest_activation(w, h, guidance);
        let limit = self.max_buffer_bytes();
        if need <= limit {
            return Ok(());
        }
        let mib = |b: u64| b.div_ceil(1 << 20);
        let side = self.max_side(guidance);
        Err(Error::arg(format!(
            "a {w}×{h} image needs a {} MiB buffer in {model}, and this device holds at most {} MiB \
             in one buffer; {}",
            mib(need),
            mib(limit),
            if side > 0 {
                format!("the largest square image it can make with this model is {side}×{side}")
            } else {
                "it cannot run this model at any size".to_string()
            }
        )))
    }

    /// Loads a diffusers folder from disk, reading each weight file in pieces.
    #[cfg(not(target_family = "wasm"))]
    pub fn load_dir(dir: &std::path::Path, device: &Device) -> Result<Self> {
        Self::load_dir_with_vae(dir, None, device)
    }

    /// [`Self::load_dir`] with the VAE from another folder when given (e.g.
    /// TAESD as a fast decoder; see [`swapped_vae_path`]).
    #[cfg(not(target_family = "wasm"))]
    pub fn load_dir_with_vae(
        dir: &std::path::Path,
        vae: Option<&std::path::Path>,
        device: &Device,
    ) -> Result<Self> {
        Self::load_dir_with(dir, vae, Precision::Auto, device)
    }

    /// [`Self::load_dir_with_vae`] at the given precision (see [`Precision`]):
    /// the headers are read first, then the weights straight into that dtype.
    #[cfg(not(target_family = "wasm"))]
    pub fn load_dir_with(
        dir: &std::path::Path,
        vae: Option<&std::path::Path>,
        precision: Precision,
        device: &Device,
    ) -> Result<Self> {
        let config = PipelineConfig::read_dir_with_vae(dir, vae)?;
        let files: Vec<WeightShards> = (0..WEIGHT_FILES.len())
            .map(|i| weight_file_shards(dir, vae, i))
            .collect::<Result<_>>()?;
        let bytes: u64 = (files.iter().flat_map(|(_, shards)| shards))
            .map(|(_, h)| h.num_elements() * 4)
            .sum();
        let dtype = precision.dtype(device, bytes)?;
        let read = |i: usize, (sharded, shards): WeightShards| {
            let on_host = PipelineConfig::on_host(i);
            let mut read = (shards.iter())
                .map(|(path, h)| WeightFile::read(path, &h.name, device, on_host, dtype))
                .collect::<Result<Vec<_>>>()?;
            match sharded {
                Some(name) => WeightFile::merge(&name, read),
                None => read
                    .pop()
                    .ok_or_else(|| Error::Weights("no weight file".into())),
            }
        };
        let files: Vec<WeightFile> = (files.into_iter().enumerate())
            .map(|(i, f)| read(i, f))
            .collect::<Result<_>>()?;
        let files: [WeightFile; 3] =
            (files.try_into()).map_err(|_| Error::Weights("three weight files".into()))?;
        Self::load(config, files, device)
    }

    /// The dtype the networks hold their weights in and run in.
    pub fn dtype(&self) -> DType {
        self.unet.conv_in.weight.val().dtype()
    }

    /// Bytes the three networks' weights take as loaded (2 per f16 weight).
    pub fn weight_bytes(&self) -> u64 {
        parameter_bytes(&self.text_encoder)
            + parameter_bytes(&self.unet)
            + match &self.vae {
                Vae::Kl(v) => parameter_bytes(v.as_ref()),
                Vae::Tiny(v) => parameter_bytes(v),
            }
    }

    /// `[negative; prompt]` embeddings (`[2, L, D]`), or just the prompt's
    /// (`[1, L, D]`) when guidance is off.
    /// Emoji in the prompts are read as their names when the folder has a
    /// `prompts.json` (see [`PromptVocabulary::read`]). The same token ids
    /// as the last call return its result without running the encoder.
    pub fn encode_prompt(&self, prompt: &str, negative_prompt: &str, guidance: bool) -> Tensor<3> {
        let read = |p: &str| PromptVocabulary::read_or_typed(self.prompts.as_ref(), p);
        let mut ids: Vec<i64> = Vec::new();
        if guidance {
            ids.extend(
                self.tokenizer
                    .encode(&read(negative_prompt))
                    .iter()
                    .map(|&i| i as i64),
            );
        }
        ids.extend(
            self.tokenizer
                .encode(&read(prompt))
                .iter()
                .map(|&i| i as i64),
        );
        // A poisoned lock only means a panic elsewhere: the pair is still whole.
        let mut last_prompt = self.last_prompt.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, context)) = &*last_prompt
            && *last == ids
        {
            return context.clone();
        }
        let l = self.tokenizer.max_length;
        let b = ids.len() / l;
        let table = self.text_encoder.token_device();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, l]), &table);
        let context = self.text_encoder.forward(input);
        *last_prompt = Some((ids, context.clone()));
        context
    }

    /// What the text encoder will read of `prompt`: emoji as names, whether
    /// it is cut off, words the model was not trained on.
    pub fn check_prompt(&self, prompt: &str) -> PromptCheck {
        PromptVocabulary::check(self.prompts.as_ref(), &self.tokenizer, prompt)
    }

    /// [`StableDiffusion::start`] from RGBA bytes of the options' size (the
    /// form the page and the CLI have them in). The options are checked
    /// before any image is converted.
    pub fn start_rgba(
        self: &Arc<Self>,
        o: &GenerateOptions,
        image: Option<&[u8]>,
        mask: Option<&[u8]>,
    ) -> Result<Sampling> {
        o.check_inputs(self)?;
        let (h, w) = o.size(self);
        let init = image
            .map(|b| rgba_to_tensor(b, w, h, &self.device))
            .transpose()?;
        let mask = mask
            .map(|b| mask_to_tensor(b, w, h, &self.device))
            .transpose()?;
        self.start(o, init, mask)
    }

    /// Starts sampling. `init` (image in [-1, 1], `[1, 3, H, W]`) turns this
    /// into image-to-image; `mask` (`[1, 1, H, W]`, 1 = repaint) into inpainting.
    pub fn start(
        self: &Arc<Self>,
        o: &GenerateOptions,
        init: Option<Tensor<4>>,
        mask: Option<Tensor<4>>,
    ) -> Result<Sampling> {
        o.check_inputs(self)?;
        if let Some(up) = &self.upscale {
            return self.start_upscale(o, up, init, mask);
        }
        let (h, w) = (
            o.height.unwrap_or(self.default_size),
            o.width.unwrap_or(self.default_size),
        );
        let (lh, lw) = (h / self.vae_scale_factor, w / self.vae_scale_factor);
        let (scheduler, context, timestep_cond) = self.prepare(o)?;

        let mut noise = NoiseGenerator::new(o.seed);
        let shape = [1, self.latent_channels, lh, lw];
        let initial_noise = noise.tensor(shape, &self.device);
        if mask.is_some() && init.is_none() {
            return Err(Error::arg("inpainting needs an image as well as a mask"));
        }
        let image_latents = init.as_ref().map(|img| self.encode_image(img.clone()));
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
                    .schedule()
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
                let z = self.encode_image(img.clone() * keep);
                (Some(resize_nearest(m, lh, lw)), Some(z))
            }
            (_, Some(m)) => (Some(feather(resize_nearest(m, lh, lw))), None),
            _ => (None, None),
        };
        Ok(Sampling {
            probes: vec![context.clone().sum()],
            sd: Arc::clone(self),
            scheduler,
            timesteps,
            index: 0,
            latents,
            context,
            guidance_scale: o.guidance_scale,
            timestep_cond,
            eta: o.eta,
            noise,
            initial_noise,
            image_latents,
            latent_mask,
            masked_image_latents,
            composite,
            low_res: None,
            tracing: false,
            last_step: None,
        })
    }

    /// What every run starts with: the sampler set to the options' steps,
    /// the prompt's embeddings (with the negative prompt's when guidance
    /// runs), and a guidance-distilled UNet's guidance embedding (it takes
    /// w = scale − 1 as an input instead of a second pass).
    fn prepare(&self, o: &GenerateOptions) -> Result<(Scheduler, Tensor<3>, Option<Tensor<2>>)> {
        let mut scheduler = self.scheduler_config.build(o.timestep_spacing)?;
        scheduler.set_timesteps(o.steps)?;
        let guidance = self.classifier_free(o.guidance_scale);
        let context = self.encode_prompt(&o.prompt, &o.negative_prompt, guidance);
        let timestep_cond = self.unet.guidance_embedding_dim().map(|dim| {
            guidance_scale_embedding(&[o.guidance_scale as f32 - 1.0], dim, &self.device)
        });
        Ok((scheduler, context, timestep_cond))
    }

    /// Starts an upscaler's run (diffusers' StableDiffusionUpscalePipeline):
    /// `image` (`[1, 3, h, w]` in [-1, 1]) is noised to the options' noise
    /// level on the low-res schedule and fed to the UNet beside latents of
    /// its size, with the level as the UNet's class label; the result is
    /// `vae_scale_factor` times larger. The seeded stream gives the image's
    /// noise first, then the latents', in the pipeline's order.
    fn start_upscale(
        self: &Arc<Self>,
        o: &GenerateOptions,
        up: &UpscaleConfig,
        image: Option<Tensor<4>>,
        mask: Option<Tensor<4>>,
    ) -> Result<Sampling> {
        let Some(image) = image else {
            return Err(Error::arg(
                "this model is an upscaler: give it the image to upscale",
            ));
        };
        if mask.is_some() {
            return Err(Error::arg("an upscaler takes an image but no mask"));
        }
        let [_, c, h, w] = image.dims();
        if c != 3 {
            return Err(Error::Shape(format!(
                "the image to upscale has {c} channels; it needs 3 (RGB)"
            )));
        }
        let (scheduler, context, timestep_cond) = self.prepare(o)?;
        let level = o.noise_level.unwrap_or(DEFAULT_NOISE_LEVEL);
        let mut noise = NoiseGenerator::new(o.seed);
        let image_noise = noise.tensor([1, 3, h, w], &self.device);
        let low_res = up
            .low_res_schedule
            .add_noise(image, image_noise, &[level])?;
        let initial_noise = noise.tensor([1, self.latent_channels, h, w], &self.device);
        Ok(Sampling {
            probes: vec![context.clone().sum()],
            sd: Arc::clone(self),
            timesteps: scheduler.timesteps().to_vec(),
            scheduler,
            index: 0,
            latents: initial_noise.clone(),
            context,
            guidance_scale: o.guidance_scale,
            timestep_cond,
            eta: o.eta,
            noise,
            initial_noise,
            image_latents: None,
            latent_mask: None,
            masked_image_latents: None,
            composite: None,
            low_res: Some((low_res, level as i64)),
            tracing: false,
            last_step: None,
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

/// What a run is asked to do, typed and checked (see [`OptionsInput`] for
/// the form the page and the CLI give it in).
#[derive(Debug, Clone)]
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
    /// Upscalers: how much noise the low-resolution image gets before the
    /// UNet sees it (a `low_res_scheduler` timestep; default
    /// [`DEFAULT_NOISE_LEVEL`]). Higher lets the model invent more detail.
    pub noise_level: Option<usize>,
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
            noise_level: None,
        }
    }
}

/// The largest image side accepted before the device's own limit is known.
pub const MAX_IMAGE_SIDE: usize = 2048;
/// The most denoising steps a run may ask for (the training schedule's length).
pub const MAX_STEPS: u64 = 1000;
/// The largest seed a JavaScript number holds exactly (2^53 − 1); larger
/// seeds come as a BigInt or a decimal string.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A number as a person or a page writes it: JSON number, BigInt, or text
/// (the CLI's). [`OptionsInput`] turns it into a checked value and says which
/// option was wrong and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Number {
    Int(i128),
    Float(f64),
    Text(String),
}

impl Number {
    /// A command-line value: a whole number when it reads as one, else a float,
    /// else kept as text for the error message.
    pub fn parse(text: &str) -> Self {
        let t = text.trim();
        if let Ok(i) = t.parse::<i128>() {
            Self::Int(i)
        } else if let Ok(f) = t.parse::<f64>() {
            Self::Float(f)
        } else {
            Self::Text(text.to_string())
        }
    }

    fn show(&self) -> String {
        match self {
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Text(t) => format!("{t:?}"),
        }
    }

    /// A whole number in `min..=max`, or an error naming `name` and the range.
    fn whole(&self, name: &str, min: u64, max: u64) -> Result<u64> {
        let bad = || {
            Error::arg(format!(
                "{name} = {} must be a whole number from {min} to {max}",
                self.show()
            ))
        };
        let v = match *self {
            Self::Int(i) => u64::try_from(i).map_err(|_| bad())?,
            // A float is whole only where it is exact: beyond 2^53 a JS number
            // is not the integer that was typed.
            Self::Float(f) if f.fract() == 0.0 && (0.0..=MAX_SAFE_INTEGER as f64).contains(&f) => {
                f as u64
            }
            Self::Float(f) if f.is_finite() && f.fract() == 0.0 && f > 0.0 => {
                return Err(Error::arg(format!(
                    "{name} = {f} is above 2^53 − 1, past which a JavaScript number is not exact; \
                     pass it as a BigInt or a decimal string"
                )));
            }
            _ => return Err(bad()),
        };
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(bad())
        }
    }

    /// A finite number in `range`, or an error naming `name` and the range.
    fn real(&self, name: &str, range: std::ops::RangeInclusive<f64>, what: &str) -> Result<f64> {
        let v = match *self {
            Self::Int(i) => i as f64,
            Self::Float(f) => f,
            Self::Text(_) => f64::NAN,
        };
        if v.is_finite() && range.contains(&v) {
            Ok(v)
        } else {
            Err(Error::arg(format!(
                "{name} = {} must be {what}",
                self.show()
            )))
        }
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Number, E> {
                Ok(Number::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Number, E> {
                Ok(Number::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> std::result::Result<Number, E> {
                Ok(Number::Int(v))
            }
            fn visit_u128<E>(self, v: u128) -> std::result::Result<Number, E> {
                Ok(Number::Int(i128::try_from(v).unwrap_or(i128::MAX)))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Number, E> {
                Ok(Number::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Number, E> {
                Ok(Number::parse(v))
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Number, E> {
                Ok(Number::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The options as the page's `generate(options)` and the CLI's flags give
/// them: every field optional, numbers not yet known to be whole or in range.
/// Unknown fields are an error (a misspelt `stpes` is not silently ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct OptionsInput {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub seed: Option<Number>,
    pub steps: Option<Number>,
    pub eta: Option<Number>,
    pub guidance_scale: Option<Number>,
    pub timestep_spacing: Option<String>,
    pub width: Option<Number>,
    pub height: Option<Number>,
    pub strength: Option<Number>,
    pub noise_level: Option<Number>,
}

impl OptionsInput {
    /// The option names, as written in JavaScript.
    pub const FIELDS: [&str; 11] = [
        "prompt",
        "negativePrompt",
        "seed",
        "steps",
        "eta",
        "guidanceScale",
        "timestepSpacing",
        "width",
        "height",
        "strength",
        "noiseLevel",
    ];

    /// Checks every value (whole numbers, ranges, names) and fills in the
    /// defaults; the first wrong value is the error.
    pub fn check(&self) -> Result<GenerateOptions> {
        let d = GenerateOptions::default();
        let side = |n: &Option<Number>, name: &str| {
            n.as_ref()
                .map(|n| n.whole(name, 1, MAX_IMAGE_SIDE as u64).map(|v| v as usize))
                .transpose()
        };
        Ok(GenerateOptions {
            prompt: self.prompt.clone().unwrap_or_default(),
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            seed: match &self.seed {
                Some(n) => n.whole("seed", 0, u64::MAX)?,
                None => d.seed,
            },
            steps: match &self.steps {
                Some(n) => n.whole("steps", 1, MAX_STEPS)? as usize,
                None => d.steps,
            },
            eta: match &self.eta {
                Some(n) => n.real("eta", 0.0..=1.0, "between 0 and 1")?,
                None => d.eta,
            },
            guidance_scale: match &self.guidance_scale {
                Some(n) => n.real("guidance scale", 0.0..=50.0, "between 0 and 50")?,
                None => d.guidance_scale,
            },
            timestep_spacing: self
                .timestep_spacing
                .as_deref()
                .map(|s| match s {
                    "leading" => Ok(TimestepSpacing::Leading),
                    "trailing" => Ok(TimestepSpacing::Trailing),
                    "linspace" => Ok(TimestepSpacing::Linspace),
                    other => Err(Error::arg(format!(
                        "timestep spacing {other:?} is not one of leading, trailing, linspace"
                    ))),
                })
                .transpose()?,
            width: side(&self.width, "width")?,
            height: side(&self.height, "height")?,
            strength: match &self.strength {
                Some(n) => n.real("strength", f64::MIN_POSITIVE..=1.0, "above 0 and at most 1")?,
                None => d.strength,
            },
            noise_level: (self.noise_level.as_ref())
                .map(|n| n.whole("noise level", 0, MAX_STEPS).map(|v| v as usize))
                .transpose()?,
        })
    }
}

impl GenerateOptions {
    /// Every value in range for this model, and the size within the device's
    /// buffers (as diffusers' `check_inputs`; `StableDiffusion::start` calls it).
    pub fn check_inputs(&self, sd: &StableDiffusion) -> Result<()> {
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = v {
                sd.check_side(name, v)?;
            }
        }
        if !(1..=MAX_STEPS as usize).contains(&self.steps) {
            return Err(Error::arg(format!(
                "steps = {} must be between 1 and {MAX_STEPS}",
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
        match (&sd.upscale, self.noise_level) {
            (None, Some(_)) => {
                return Err(Error::arg(
                    "noise level is an upscaler's option, and this model is not an upscaler",
                ));
            }
            (Some(up), Some(level)) if level > up.max_noise_level => {
                return Err(Error::arg(format!(
                    "noise level = {level} must be at most {} (this model's max_noise_level)",
                    up.max_noise_level
                )));
            }
            _ => {}
        }
        let (h, w) = self.size(sd);
        let (w, h) = sd.output_size(w, h);
        sd.check_size(w, h, sd.classifier_free(self.guidance_scale))
    }

    /// `(height, width)` in pixels: the options' or the model's default.
    pub fn size(&self, sd: &StableDiffusion) -> (usize, usize) {
        (
            self.height.unwrap_or(sd.default_size),
            self.width.unwrap_or(sd.default_size),
        )
    }
}

/// One denoising step laid open, for views that teach what a step does
/// (see [`Sampling::trace`]). Tensors are latents, `[1, C, h, w]`.
#[derive(Debug, Clone)]
pub struct StepTrace {
    /// The step's number (0 = first) and its timestep t.
    pub index: usize,
    pub timestep: usize,
    /// ᾱ_t, and ᾱ of the timestep the step lands on.
    pub alpha_prod_t: f64,
    pub alpha_prod_prev: f64,
    /// DDIM's update `x_{t−1} = √ᾱ_prev·x̂₀ + direction·ε̂ + σ·z` with this
    /// step's numbers (none for LCM, whose update is another formula).
    pub ddim: Option<DdimCoefficients>,
    /// x_t: the step's input.
    pub sample: Tensor<4>,
    /// x̂₀: the model's estimate of the clean latents.
    pub pred_original: Tensor<4>,
    /// ε̂: the noise the model sees in x_t.
    pub pred_noise: Tensor<4>,
    /// x_{t−1}: the step's output (after inpainting's blend, if any).
    pub prev_sample: Tensor<4>,
}

/// A run in progress: call [`Sampling::step`] until it returns `false`,
/// then [`Sampling::decode`].
pub struct Sampling {
    sd: Arc<StableDiffusion>,
    scheduler: Scheduler,
    timesteps: Vec<usize>,
    index: usize,
    latents: Tensor<4>,
    context: Tensor<3>,
    guidance_scale: f64,
    /// The guidance embedding of a guidance-distilled UNet (LCM).
    timestep_cond: Option<Tensor<2>>,
    eta: f64,
    noise: NoiseGenerator,
    initial_noise: Tensor<4>,
    image_latents: Option<Tensor<4>>,
    latent_mask: Option<Tensor<4>>,
    masked_image_latents: Option<Tensor<4>>,
    /// Inpainting: the original image and the pixel mask, for the final blend.
    composite: Option<(Tensor<4>, Tensor<4>)>,
    /// Upscaling: the noised low-resolution image the UNet sees beside the
    /// latents, and its noise level (the UNet's class label).
    low_res: Option<(Tensor<4>, i64)>,
    /// Whether each step keeps its [`StepTrace`] (see [`Sampling::trace`]).
    tracing: bool,
    last_step: Option<StepTrace>,
    /// One sum per stage (the prompt embeddings, then the latents after each
    /// step): NaN or infinity anywhere in a stage makes its sum non-finite.
    /// Summed on the device, read back only with the image.
    probes: Vec<Tensor<1>>,
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
        let sd = Arc::clone(&self.sd);
        let guidance = sd.classifier_free(self.guidance_scale);
        let mut input = self.latents.clone();
        if let (Some(m), Some(z)) = (&self.latent_mask, &self.masked_image_latents) {
            input = Tensor::cat(vec![input, m.clone(), z.clone()], 1);
        }
        if let Some((image, _)) = &self.low_res {
            input = Tensor::cat(vec![input, image.clone()], 1);
        }
        if guidance {
            input = Tensor::cat(vec![input.clone(), input], 0);
        }
        let rows = if guidance { 2 } else { 1 };
        let class_labels = self.low_res.as_ref().map(|(_, level)| vec![*level; rows]);
        let out = sd.unet.forward(
            input,
            &[t as f32],
            &self.context,
            class_labels.as_deref(),
            self.timestep_cond.as_ref(),
        );
        let noise_pred = if guidance {
            let mut halves = out.chunk(2, 0);
            let cond = halves.pop().expect("two halves");
            let uncond = halves.pop().expect("two halves");
            uncond.clone() + (cond - uncond).mul_scalar(self.guidance_scale as f32)
        } else {
            out
        };
        let variance_noise = (self.scheduler.needs_noise(t, self.eta))
            .then(|| self.noise.tensor(self.latents.dims(), &sd.device));
        let sample = self.latents.clone();
        let step = self.scheduler.step(
            noise_pred.clone(),
            t,
            sample.clone(),
            self.eta,
            variance_noise,
        )?;
        self.latents = step.prev_sample;
        self.index += 1;
        self.probes.push(self.latents.clone().sum());
        // 4-channel inpainting: keep the known region on the original's noisy trajectory.
        if let (Some(m), Some(z), None) = (
            &self.latent_mask,
            &self.image_latents,
            &self.masked_image_latents,
        ) {
            let known = match self.timesteps.get(self.index) {
                Some(&next) => self.scheduler.schedule().add_noise(
                    z.clone(),
                    self.initial_noise.clone(),
                    &[next],
                )?,
                None => z.clone(),
            };
            let keep = m.clone().neg().add_scalar(1.0);
            self.latents = known * keep + self.latents.clone() * m.clone();
        }
        self.last_step = if self.tracing {
            Some(self.step_trace(t, sample, noise_pred, step.pred_original_sample)?)
        } else {
            None
        };
        Ok(self.index < self.timesteps.len())
    }

    /// Keeps each step's [`StepTrace`] from now on (for a view that shows
    /// what happens inside a step): a few tensors of the latents' size.
    pub fn trace(&mut self, on: bool) {
        self.tracing = on;
        if !on {
            self.last_step = None;
        }
    }

    /// The last step laid open, when tracing.
    pub fn last_step(&self) -> Option<&StepTrace> {
        self.last_step.as_ref()
    }

    /// Inpainting: the mask in latent space (1 = repaint), `[1, 1, h, w]`.
    pub fn latent_mask(&self) -> Option<Tensor<4>> {
        self.latent_mask.clone()
    }

    /// The step just run at `t` laid open (its output is the current latents).
    fn step_trace(
        &self,
        t: usize,
        sample: Tensor<4>,
        model_output: Tensor<4>,
        pred_original: Tensor<4>,
    ) -> Result<StepTrace> {
        let schedule = self.scheduler.schedule();
        let alpha_prod_t = schedule.alpha_cumprod(t)?;
        let ddim = match &self.scheduler {
            Scheduler::Ddim(s) => Some(s.coefficients(t, self.eta)?),
            Scheduler::Lcm(_) => None,
        };
        // DDIM's own ε̂; otherwise the noise that x̂₀ implies
        // (x_t = √ᾱ_t x̂₀ + √(1−ᾱ_t) ε̂).
        let pred_noise = match &ddim {
            Some(c) => {
                sample.clone().mul_scalar(c.eps[0] as f32)
                    + model_output.mul_scalar(c.eps[1] as f32)
            }
            None => (sample.clone() - pred_original.clone().mul_scalar(alpha_prod_t.sqrt() as f32))
                .div_scalar((1.0 - alpha_prod_t).max(1e-12).sqrt() as f32),
        };
        let alpha_prod_prev = match ddim {
            // DDIM's step back is T / n, whatever the spacing (its final ᾱ
            // past t = 0): the coefficients carry it as √ᾱ_prev.
            Some(c) => c.sqrt_alpha_prev * c.sqrt_alpha_prev,
            None => match self.timesteps.get(self.index) {
                Some(&next) => schedule.alpha_cumprod(next)?,
                None => 1.0,
            },
        };
        Ok(StepTrace {
            index: self.index - 1,
            timestep: t,
            alpha_prod_t,
            alpha_prod_prev,
            ddim,
            sample,
            pred_original,
            prev_sample: self.latents.clone(),
            pred_noise,
        })
    }

    /// The stage sums so far, as one tensor to read back with the image
    /// (see [`Sampling::check_probes`]).
    pub fn probes(&self) -> Tensor<1> {
        Tensor::cat(self.probes.clone(), 0)
    }

    /// An error naming the first stage whose values were NaN or infinite,
    /// given [`Sampling::probes`] read back.
    pub fn check_probes(&self, sums: &[f32]) -> Result<()> {
        Self::check_probe_sums(sums, self.timesteps.len())
    }

    /// [`Sampling::check_probes`] for a run of `total_steps` steps.
    pub fn check_probe_sums(sums: &[f32], total_steps: usize) -> Result<()> {
        let Some(bad) = sums.iter().position(|v| !v.is_finite()) else {
            return Ok(());
        };
        let stage = match bad {
            0 => "the text encoder's prompt embeddings".to_string(),
            k => format!("the latents after denoising step {k} of {total_steps}"),
        };
        Err(Error::NonFinite(format!(
            "{stage} hold NaN or infinity: the model's numbers overflowed or its weights are \
             broken, so the image would be blank"
        )))
    }

    /// Reads the stage sums back (blocking) and checks them.
    #[cfg(not(target_family = "wasm"))]
    pub fn check_finite(&self) -> Result<()> {
        let sums = (self.probes().into_data().try_to_vec::<f32>())
            .map_err(|e| Error::Device(format!("reading the stage sums back: {e:?}")))?;
        self.check_probes(&sums)
    }

    /// The current latents (`[1, C, H/f, W/f]`, as the UNet sees them).
    pub fn latents(&self) -> Tensor<4> {
        self.latents.clone()
    }

    /// The current latents decoded to an image in [-1, 1] (a preview mid-run).
    pub fn decode(&self) -> Tensor<4> {
        self.sd.decode_latents(self.latents.clone())
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
