//! Native command line for the pipeline: a diffusers folder in, PNGs out.
//!
//! latent-diffusion --model DIR --prompt TEXT [--negative-prompt TEXT] [--seed N]
//!     [--steps N] [--eta F] [--guidance F] [--spacing leading|trailing|linspace]
//!     [--width W] [--height H] [--init IMAGE.png [--strength F]] [--mask MASK.png]
//!     [--device flex|wgpu] --out OUT.png

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use burn::tensor::{Device, DeviceKind};
use latent_diffusion_web::image::{mask_to_tensor, rgba_to_tensor, tensor_values_to_rgba};
use latent_diffusion_web::pipeline::{GenerateOptions, StableDiffusion};
use latent_diffusion_web::schedulers::TimestepSpacing;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let get = |k: &str| args.get(k).map(String::as_str);
    let num = |k: &str| -> Result<Option<f64>, String> {
        get(k)
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| format!("--{k} {v:?} is not a number"))
            })
            .transpose()
    };
    let model = get("model").ok_or("--model DIR is required")?;
    let out = get("out").ok_or("--out OUT.png is required")?;
    let device = match get("device").unwrap_or("flex") {
        "flex" => Device::flex(),
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        d => return Err(format!("--device {d:?}: use flex or wgpu")),
    };
    let d = GenerateOptions::default();
    let opts = GenerateOptions {
        prompt: get("prompt").unwrap_or_default().to_string(),
        negative_prompt: get("negative-prompt").unwrap_or_default().to_string(),
        seed: get("seed")
            .map(|s| {
                s.parse()
                    .map_err(|_| format!("--seed {s:?} is not a whole number"))
            })
            .transpose()?
            .unwrap_or(0),
        steps: num("steps")?.map_or(d.steps, |v| v as usize),
        eta: num("eta")?.unwrap_or(d.eta),
        guidance_scale: num("guidance")?.unwrap_or(d.guidance_scale),
        timestep_spacing: match get("spacing") {
            None => None,
            Some("leading") => Some(TimestepSpacing::Leading),
            Some("trailing") => Some(TimestepSpacing::Trailing),
            Some("linspace") => Some(TimestepSpacing::Linspace),
            Some(s) => {
                return Err(format!(
                    "--spacing {s:?}: use leading, trailing or linspace"
                ));
            }
        },
        width: num("width")?.map(|v| v as usize),
        height: num("height")?.map(|v| v as usize),
        strength: num("strength")?.unwrap_or(d.strength),
    };
    let sd = std::rc::Rc::new(
        StableDiffusion::load_dir(Path::new(model), &device).map_err(|e| e.to_string())?,
    );
    let (init, size) = match get("init") {
        Some(p) => {
            let (rgba, w, h) = read_png(p)?;
            (
                Some(rgba_to_tensor(&rgba, w, h, &device).map_err(|e| e.to_string())?),
                Some((w, h)),
            )
        }
        None => (None, None),
    };
    let mask = match get("mask") {
        Some(p) => {
            let (rgba, w, h) = read_png(p)?;
            if size.is_some_and(|s| s != (w, h)) {
                return Err(format!(
                    "--mask {p} is {w}×{h} but --init is {:?}",
                    size.unwrap()
                ));
            }
            Some(mask_to_tensor(&rgba, w, h, &device).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let opts = match size {
        Some((w, h)) => GenerateOptions {
            width: Some(w),
            height: Some(h),
            ..opts
        },
        None => opts,
    };
    let mut run = sd.start(&opts, init, mask).map_err(|e| e.to_string())?;
    while run.step().map_err(|e| e.to_string())? {
        eprintln!("step {}/{}", run.steps_done(), run.total_steps());
    }
    let image = run.finish();
    let [_, _, h, w] = image.dims();
    let values = image
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let rgba = tensor_values_to_rgba(&values, w, h).map_err(|e| e.to_string())?;
    write_png(out, &rgba, w, h)?;
    eprintln!("wrote {out} ({w}×{h})");
    Ok(())
}

fn parse_args() -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let key = a
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {a:?}; options start with --"))?;
        if key == "help" {
            return Err(
                "see the usage at the top of src/bin/latent-diffusion.rs or README.md".into(),
            );
        }
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        map.insert(key.to_string(), value);
    }
    Ok(map)
}

fn read_png(path: &str) -> Result<(Vec<u8>, usize, usize), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(
        png::Transformations::normalize_to_color8() | png::Transformations::ALPHA,
    );
    let mut reader = decoder.read_info().map_err(|e| format!("{path}: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or("image too large")?];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("{path}: {e}"))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf[..w * h * 4].to_vec(),
        png::ColorType::GrayscaleAlpha => buf[..w * h * 2]
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect(),
        other => return Err(format!("{path}: unsupported PNG color type {other:?}")),
    };
    Ok((rgba, w, h))
}

fn write_png(path: &str, rgba: &[u8], w: usize, h: usize) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| format!("{path}: {e}"))?;
    writer
        .write_image_data(rgba)
        .map_err(|e| format!("{path}: {e}"))
}
