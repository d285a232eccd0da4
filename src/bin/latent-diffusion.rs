//! Native command line for the pipeline: a diffusers folder in, PNGs out.
//! `latent-diffusion --help` lists the options.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use burn::tensor::{DType, Device, DeviceKind};
use clap::{Parser, ValueEnum};
use latent_diffusion_web::image::{decode_png, tensor_values_to_rgba};
use latent_diffusion_web::pipeline::{
    GenerateOptions, MAX_IMAGE_SIDE, Number, OptionsInput, Precision, StableDiffusion,
};

/// Generates an image from a prompt with a diffusers-layout latent diffusion
/// model; with --init it redraws an image, with --init and --mask it
/// inpaints the mask's white part. With --upscaler the image is then
/// upscaled by an upscaler folder (StableDiffusionUpscalePipeline layout);
/// an upscaler given as --model upscales --init.
#[derive(Parser, Debug)]
#[command(version, allow_negative_numbers = true)]
struct Args {
    /// Model folder in the diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/)
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// A VAE folder used instead of the model's vae/ (config.json and
    /// diffusion_pytorch_model.safetensors at its root), e.g. TAESD as a fast decoder
    #[arg(long, value_name = "DIR")]
    vae: Option<PathBuf>,
    /// Where to write the image
    #[arg(long, value_name = "OUT.png")]
    out: PathBuf,
    /// What to draw
    #[arg(long, default_value = "")]
    prompt: String,
    /// What to steer away from (used when --guidance is above 1)
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Seed of the starting noise: a whole number from 0 to 2^64 − 1 [default: 0]
    #[arg(long)]
    seed: Option<String>,
    /// Denoising steps, 1 to 1000 [default: 4]
    #[arg(long)]
    steps: Option<String>,
    /// DDIM eta, 0 (deterministic) to 1 [default: 0]
    #[arg(long)]
    eta: Option<String>,
    /// Classifier-free guidance scale, 0 to 50; 1 or less turns guidance off [default: 3]
    #[arg(long)]
    guidance: Option<String>,
    /// Timestep spacing [default: the scheduler config's]
    #[arg(long, value_enum)]
    spacing: Option<Spacing>,
    /// Image width in pixels [default: the model's size, or --init's]
    #[arg(long)]
    width: Option<String>,
    /// Image height in pixels [default: the model's size, or --init's]
    #[arg(long)]
    height: Option<String>,
    /// Image to start from (PNG): image-to-image
    #[arg(long, value_name = "IMAGE.png")]
    init: Option<PathBuf>,
    /// With --init: how much to change it, above 0 to 1 [default: 0.75]
    #[arg(long)]
    strength: Option<String>,
    /// Mask (PNG, the size of --init): white is redrawn, black kept
    #[arg(long, value_name = "MASK.png", requires = "init")]
    mask: Option<PathBuf>,
    /// An upscaler folder (StableDiffusionUpscalePipeline layout) that
    /// upscales the image made, with the same prompt and seed
    #[arg(long, value_name = "DIR")]
    upscaler: Option<PathBuf>,
    /// Steps of the upscaler, 1 to 1000 [default: 4]
    #[arg(long)]
    upscale_steps: Option<String>,
    /// Noise added to the image before it is upscaled, 0 to the upscaler's
    /// max_noise_level; more lets it invent more detail [default: 20]
    #[arg(long)]
    noise_level: Option<String>,
    /// Where to run
    #[arg(long, value_enum, default_value = "flex")]
    device: Backend,
    /// Weights and compute: auto (f16 on a GPU for models over 1 GiB of f32
    /// weights), f32 or f16
    #[arg(long, default_value = "auto")]
    precision: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// Burn's CPU backend
    Flex,
    /// The default wgpu adapter (Vulkan, Metal, DX12)
    Wgpu,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match latent_diffusion_web::run_on_cpu_pool(|| run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<(), String> {
    let num = |v: &Option<String>| v.as_deref().map(Number::parse);
    let mut input = OptionsInput {
        prompt: Some(a.prompt),
        negative_prompt: Some(a.negative_prompt),
        seed: num(&a.seed),
        steps: num(&a.steps),
        eta: num(&a.eta),
        guidance_scale: num(&a.guidance),
        timestep_spacing: a.spacing.map(|s| {
            s.to_possible_value()
                .expect("no skipped variants")
                .get_name()
                .to_string()
        }),
        width: num(&a.width),
        height: num(&a.height),
        strength: num(&a.strength),
        noise_level: None,
    };
    // The upscaler runs without guidance (its UNet sees the image, which
    // the prompt cannot add to) at its own steps and noise level.
    let mut upscale = OptionsInput {
        prompt: input.prompt.clone(),
        seed: input.seed.clone(),
        steps: num(&a.upscale_steps),
        guidance_scale: Some(Number::Int(1)),
        noise_level: num(&a.noise_level),
        ..OptionsInput::default()
    };
    if a.upscaler.is_none() {
        // An upscaler given as --model takes these directly.
        input.noise_level = upscale.noise_level.take();
        if a.upscale_steps.is_some() {
            return Err("--upscale-steps needs --upscaler".into());
        }
    }
    // Every option is checked before the model is read.
    input.check().map_err(|e| e.to_string())?;
    upscale.check().map_err(|e| e.to_string())?;
    let png = |p: &PathBuf| -> Result<(Vec<u8>, usize, usize), String> {
        let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        decode_png(&bytes, MAX_IMAGE_SIDE).map_err(|e| format!("{}: {e}", p.display()))
    };
    let init = a.init.as_ref().map(png).transpose()?;
    let mask = a.mask.as_ref().map(png).transpose()?;
    if let (Some((_, w, h)), Some((_, mw, mh))) = (&init, &mask)
        && (w, h) != (mw, mh)
    {
        return Err(format!("--mask is {mw}×{mh} but --init is {w}×{h}"));
    }
    if let Some((_, w, h)) = &init {
        input.width = Some(Number::Int(*w as i128));
        input.height = Some(Number::Int(*h as i128));
    }
    let opts = input.check().map_err(|e| e.to_string())?;

    let device = match a.device {
        Backend::Flex => Device::flex(),
        Backend::Wgpu => Device::wgpu(DeviceKind::DefaultDevice),
    };
    let precision = Precision::parse(&a.precision).map_err(|e| e.to_string())?;
    let sd = StableDiffusion::load_dir_with(&a.model, a.vae.as_deref(), precision, &device);
    let sd = Arc::new(sd.map_err(|e| e.to_string())?);
    let init = init.map(|(rgba, ..)| rgba);
    let mask = mask.map(|(rgba, ..)| rgba);
    // The upscaler is read before the image is made: a wrong folder fails fast.
    let upscaler = match &a.upscaler {
        Some(dir) => {
            let up = StableDiffusion::load_dir_with(dir, None, precision, &device);
            let up = up.map_err(|e| format!("--upscaler {}: {e}", dir.display()))?;
            if up.upscale.is_none() {
                return Err(format!(
                    "--upscaler {}: this folder is not an upscaler (StableDiffusionUpscalePipeline)",
                    dir.display()
                ));
            }
            Some(Arc::new(up))
        }
        None => None,
    };
    let (mut rgba, mut w, mut h) = generate(&sd, &opts, init.as_deref(), mask.as_deref())?;
    if let Some(up) = &upscaler {
        eprintln!("upscaling {w}×{h}");
        upscale.width = Some(Number::Int(w as i128));
        upscale.height = Some(Number::Int(h as i128));
        let opts = upscale.check().map_err(|e| e.to_string())?;
        (rgba, w, h) = generate(up, &opts, Some(&rgba), None)?;
    }
    write_png(&a.out, &rgba, w, h)?;
    eprintln!("wrote {} ({w}×{h})", a.out.display());
    Ok(())
}

/// One run of a pipeline, to RGBA bytes and their size.
fn generate(
    sd: &Arc<StableDiffusion>,
    opts: &GenerateOptions,
    init: Option<&[u8]>,
    mask: Option<&[u8]>,
) -> Result<(Vec<u8>, usize, usize), String> {
    if sd.dtype() != DType::F32 {
        eprintln!(
            "note: weights and compute in {:?} ({:.2} GB of weights)",
            sd.dtype(),
            sd.weight_bytes() as f64 / 1e9
        );
    }
    if let Some(note) = sd.scheduler_note() {
        eprintln!("note: {note}");
    }
    let read = sd.check_prompt(&opts.prompt);
    if read.text != opts.prompt {
        eprintln!("note: the prompt is read as {:?}", read.text);
    }
    for note in read.notes() {
        eprintln!("note: {note}");
    }
    let mut run = sd.start_rgba(opts, init, mask).map_err(|e| e.to_string())?;
    while run.step().map_err(|e| e.to_string())? {
        eprintln!("step {}/{}", run.steps_done(), run.total_steps());
    }
    run.check_finite().map_err(|e| e.to_string())?;
    let image = run.finish();
    let [_, _, h, w] = image.dims();
    let values = image
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let rgba = tensor_values_to_rgba(&values, w, h).map_err(|e| e.to_string())?;
    Ok((rgba, w, h))
}

fn write_png(path: &PathBuf, rgba: &[u8], w: usize, h: usize) -> Result<(), String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = std::fs::File::create(path).map_err(|e| at(&e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| at(&e))?;
    writer.write_image_data(rgba).map_err(|e| at(&e))
}
