//! The whole pipeline (tokenizer → text encoder → guided DDIM loop → VAE decode)
//! against diffusers' StableDiffusionPipeline, started from the crate's seeded
//! noise (fixtures: tools/make_pipeline_fixtures.py), on a random-weight tiny
//! pipeline and on the shipped model (www/models/emoji-4step).
//! Tolerance: max |ours − diffusers| ≤ 1e-4 per pixel on the [0, 1] scale for
//! the tiny pipeline, 1e-3 for the trained 64×64 model (one 8-bit level is 4e-3).
//! With f16 weights and compute (`Precision::F16`) against the same f32
//! references (measured 2026-11-26 in brackets): the shipped model on the CPU
//! within 5 levels, 2e-2 (3.4 levels, 1.3e-2); the random-weight tiny
//! pipeline on wgpu/lavapipe within 4.5e-2 (2.9e-2).

use burn::tensor::{DType, Device, DeviceKind};
use latent_diffusion_web::pipeline::{
    GenerateOptions, PipelineConfig, Precision, StableDiffusion, WEIGHT_FILES, largest_tensor,
};
use latent_diffusion_web::schedulers::TimestepSpacing;
use latent_diffusion_web::weights::Header;
mod common;

fn path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn matches_diffusers_stable_diffusion_pipeline() {
    let dir = path("tests/fixtures/pipelines/tiny");
    check(&dir, &dir, (2, 16), 1e-4);
}

/// A guidance-distilled UNet with LCMScheduler against diffusers'
/// LatentConsistencyModelPipeline: the LCM timesteps, boundary scalings and
/// per-step noise, and the guidance embedding instead of a second UNet row.
#[test]
fn matches_diffusers_latent_consistency_pipeline() {
    let dir = path("tests/fixtures/pipelines/tiny-lcm");
    check(&dir, &dir, (2, 16), 1e-4);
}

/// An upscaler against diffusers' StableDiffusionUpscalePipeline: the
/// low-res image noised on its DDPM schedule, concatenated to the latents,
/// the noise level as the UNet's class label, guidance, and the VAE's 2×.
#[test]
fn matches_diffusers_upscale_pipeline() {
    let dir = path("tests/fixtures/pipelines/tiny-upscale");
    let sd = check(&dir, &dir, (2, 8), 1e-4);
    assert_eq!(sd.output_size(8, 8), (16, 16));
}

/// The shipped 4× upscaler (64×64 → 256×256) on the shipped generator's red
/// heart, against diffusers at 4 steps.
#[test]
fn shipped_upscaler_matches_diffusers() {
    check(
        &path("www/models/emoji-upscaler"),
        &path("tests/fixtures/pipelines/emoji-upscaler"),
        (4, 64),
        1e-3,
    );
}

#[test]
fn shipped_model_matches_diffusers() {
    check(
        &path("www/models/emoji-4step"),
        &path("tests/fixtures/pipelines/emoji-4step"),
        (4, 64),
        1e-3,
    );
}

/// The shipped model with its weights as f16 (half the memory) and every
/// network in f16, on the CPU: within 5 levels of diffusers' f32 images.
#[test]
fn shipped_model_in_f16_stays_near_diffusers() {
    let sd = check_as(
        &path("www/models/emoji-4step"),
        &path("tests/fixtures/pipelines/emoji-4step"),
        (4, 64),
        5.0 / 255.0,
        (&Device::flex(), Precision::F16),
    );
    assert_eq!(sd.dtype(), DType::F16);
    // Every weight takes 2 bytes: 15.1 MB, not the 30.2 MB of f32.
    let elements: u64 = (read_headers(&path("www/models/emoji-4step")).iter())
        .map(|h| h.num_elements())
        .sum();
    assert_eq!(sd.weight_bytes(), 2 * elements);
}

/// The f16 path on Burn's wgpu backend (lavapipe natively has shader-f16).
#[test]
fn wgpu_f16_pipeline_stays_near_diffusers() {
    let dir = path("tests/fixtures/pipelines/tiny");
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let sd = check_as(&dir, &dir, (2, 16), 4.5e-2, (&gpu, Precision::F16));
    assert_eq!(sd.dtype(), DType::F16);
}

/// `Precision::Auto` keeps small models in f32 (and so exact), and `F16` on
/// a device is honoured.
#[test]
fn auto_precision_keeps_small_models_in_f32() {
    let dir = path("tests/fixtures/pipelines/tiny");
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let sd = StableDiffusion::load_dir_with(&dir, None, Precision::Auto, &gpu).unwrap();
    assert_eq!(sd.dtype(), DType::F32);
    assert_eq!(Precision::Auto.dtype(&gpu, 2 << 30).unwrap(), DType::F16);
    assert_eq!(
        Precision::Auto.dtype(&Device::flex(), 2 << 30).unwrap(),
        DType::F32
    );
    let e = Precision::parse("half").unwrap_err().to_string();
    assert!(e.contains("\"f16\""), "{e}");
}

fn check(
    model: &std::path::Path,
    fixtures: &std::path::Path,
    scale_and_size: (usize, usize),
    tolerance: f32,
) -> std::sync::Arc<StableDiffusion> {
    check_as(
        model,
        fixtures,
        scale_and_size,
        tolerance,
        (&Device::flex(), Precision::F32),
    )
}

fn check_as(
    model: &std::path::Path,
    fixtures: &std::path::Path,
    scale_and_size: (usize, usize),
    tolerance: f32,
    (device, precision): (&Device, Precision),
) -> std::sync::Arc<StableDiffusion> {
    let sd = StableDiffusion::load_dir_with(model, None, precision, device).unwrap();
    let sd = std::sync::Arc::new(sd);
    assert_eq!((sd.vae_scale_factor, sd.default_size), scale_and_size);
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("cases.json")).unwrap())
            .unwrap();
    let expected = common::f32_tensors(fixtures.join("expected.safetensors"));
    for c in cases.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let opts = GenerateOptions {
            prompt: c["prompt"].as_str().unwrap().into(),
            negative_prompt: c["negative_prompt"].as_str().unwrap().into(),
            seed: c["seed"].as_u64().unwrap(),
            steps: c["steps"].as_u64().unwrap() as usize,
            eta: c["eta"].as_f64().unwrap(),
            guidance_scale: c["guidance_scale"].as_f64().unwrap(),
            timestep_spacing: Some(match c["spacing"].as_str().unwrap() {
                "trailing" => TimestepSpacing::Trailing,
                _ => TimestepSpacing::Leading,
            }),
            noise_level: c["noise_level"].as_u64().map(|v| v as usize),
            ..Default::default()
        };
        // An upscaler's case holds its input image (RGBA, [h, w, 4]).
        let mut run = match expected.get(&format!("{name}.input")) {
            Some((shape, rgba)) => {
                let rgba: Vec<u8> = rgba.iter().map(|&v| v as u8).collect();
                let opts = GenerateOptions {
                    height: Some(shape[0]),
                    width: Some(shape[1]),
                    ..opts.clone()
                };
                sd.start_rgba(&opts, Some(&rgba), None).unwrap()
            }
            None => sd.start(&opts, None, None).unwrap(),
        };
        while run.step().unwrap() {}
        assert_eq!(run.steps_done(), opts.steps);
        let image: Vec<f32> = run.decode().to_data().try_to_vec::<f32>().unwrap();
        let want = &expected[name].1;
        let ours = image.iter().map(|x| (x / 2.0 + 0.5).clamp(0.0, 1.0));
        let max = ours
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{name} {:?}: max abs diff {max:e}", sd.dtype());
        assert!(max <= tolerance, "{name}: max abs diff {max:e}");
    }
    sd
}

/// The headers of a folder's weight files, reading nothing after them.
fn read_headers(dir: &std::path::Path) -> [Header; 3] {
    use std::io::Read;
    WEIGHT_FILES.map(|p| {
        let mut f = std::fs::File::open(dir.join(p)).unwrap();
        let len = f.metadata().unwrap().len();
        let mut prefix = vec![0; 8];
        f.read_exact(&mut prefix).unwrap();
        let n = u64::from_le_bytes(prefix[..8].try_into().unwrap()) as usize;
        prefix.resize(8 + n, 0);
        f.read_exact(&mut prefix[8..]).unwrap();
        Header::parse(p, &prefix, Some(len)).unwrap().unwrap()
    })
}

/// The page compares this with the GPU's buffer limit before choosing WebGPU.
#[test]
fn largest_tensor_is_read_from_the_headers() {
    let dir = path("www/models/emoji-4step");
    let headers = read_headers(&dir);
    let headers = headers.each_ref();
    // The token table (49408 × 64) stays on the host (CLIPTextModel::host_key),
    // so the largest tensor a GPU must bind is the UNet's widest convolution.
    let (name, bytes) = largest_tensor(&headers);
    assert!(name.starts_with("unet/"), "{name}");
    assert!(bytes < 49408 * 64 * 4, "{bytes}");
    let unet = headers[1].largest(|_| false).unwrap();
    assert_eq!((name, bytes), (format!("unet/{}", unet.0), unet.1 * 4));
    // The configs agree with the headers key by key, before any data is used.
    PipelineConfig::read_dir(&dir)
        .unwrap()
        .check(headers)
        .unwrap();
}

/// A config that the weights contradict is caught from the headers alone,
/// naming the keys, and allocates nothing of the config's size.
#[test]
fn config_checked_against_headers() {
    let dir = path("tests/fixtures/pipelines/tiny");
    let headers = read_headers(&dir);
    let headers = headers.each_ref();
    let mut config = PipelineConfig::read_dir(&dir).unwrap();
    config.check(headers).unwrap();
    // A UNet config claiming 8192-channel blocks (about 20 GB of weights):
    // reported from the headers, nothing of that size allocated.
    config.unet.block_out_channels = vec![8192, 8192];
    config.unet.norm_num_groups = Some(1);
    let e = config.check(headers).unwrap_err().to_string();
    assert!(
        e.contains("unet/diffusion_pytorch_model.safetensors does not match the model config")
            && e.contains("down_blocks.0.resnets.0.conv1.weight is [32, 32, 3, 3], expected [8192, 8192, 3, 3]"),
        "{e}"
    );
}

/// A decoded image with NaN or infinity (an overflow) is an error naming the
/// stage, never a silently black PNG; a wrong length is an error too.
#[test]
fn non_finite_image_is_an_error() {
    use latent_diffusion_web::image::tensor_values_to_rgba;
    let mut v = vec![0.0f32; 3 * 4 * 4];
    assert_eq!(tensor_values_to_rgba(&v, 4, 4).unwrap().len(), 64);
    v[17] = f32::NAN;
    let e = tensor_values_to_rgba(&v, 4, 4).unwrap_err().to_string();
    assert!(e.contains("decoded image holds NaN at value 17"), "{e}");
    let e = tensor_values_to_rgba(&v[..10], 4, 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("10 values"), "{e}");
}

/// A VAE swapped in from its own folder (TAESD as a fast decoder): the same
/// latents as with the model's VAE, decoded by the swapped one; a VAE folder
/// without its config is an error naming that folder.
#[test]
fn swapped_vae_decodes_the_same_latents() {
    use latent_diffusion_web::pipeline::Vae;
    let device = Device::flex();
    let model = path("tests/fixtures/pipelines/tiny");
    let taesd = path("tests/fixtures/models/vae_tiny");
    let opts = GenerateOptions {
        prompt: "a red heart".into(),
        seed: 3,
        steps: 2,
        guidance_scale: 1.0,
        ..Default::default()
    };
    let run = |vae: Option<&std::path::Path>| {
        let sd =
            std::sync::Arc::new(StableDiffusion::load_dir_with_vae(&model, vae, &device).unwrap());
        let mut run = sd.start(&opts, None, None).unwrap();
        while run.step().unwrap() {}
        let latents: Vec<f32> = run.latents().to_data().try_to_vec().unwrap();
        let image: Vec<f32> = run.decode().to_data().try_to_vec().unwrap();
        (sd, run.latents(), latents, image)
    };
    let (_, _, kl_latents, kl_image) = run(None);
    let (sd, latents, tiny_latents, tiny_image) = run(Some(&taesd));
    assert!(matches!(sd.vae, Vae::Tiny(_)), "the swapped VAE is TAESD");
    assert_eq!(
        kl_latents, tiny_latents,
        "the VAE does not change the latents"
    );
    assert_ne!(kl_image, tiny_image);
    let direct: Vec<f32> = sd
        .vae
        .decode_scaled(latents)
        .to_data()
        .try_to_vec()
        .unwrap();
    assert_eq!(tiny_image, direct);

    let e =
        StableDiffusion::load_dir_with_vae(&model, Some(&path("tests/fixtures/models")), &device)
            .err()
            .expect("no config.json there")
            .to_string();
    assert!(
        e.contains("models/config.json is missing from the VAE folder"),
        "{e}"
    );
}

fn max_diff<const D: usize>(a: burn::tensor::Tensor<D>, b: burn::tensor::Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// A traced run lays each step open (what the learning view shows): one trace
/// per step; x_t = √ᾱ_t x̂₀ + √(1−ᾱ_t) ε̂; DDIM's update x_{t−1} =
/// √ᾱ_prev x̂₀ + direction ε̂ (η = 0) with the trace's coefficients; each
/// step starts where the last ended, and the last ends at the run's latents.
#[test]
fn a_traced_run_lays_each_step_open() {
    let device = Device::flex();
    let dir = path("tests/fixtures/pipelines/tiny");
    let sd = std::sync::Arc::new(StableDiffusion::load_dir(&dir, &device).unwrap());
    let opts = GenerateOptions {
        prompt: "a red heart".into(),
        steps: 4,
        guidance_scale: 3.0,
        ..GenerateOptions::default()
    };
    let mut run = sd.start(&opts, None, None).unwrap();
    run.trace(true);
    let mut before = run.latents();
    let mut timesteps = Vec::new();
    loop {
        let more = run.step().unwrap();
        let t = run.last_step().unwrap().clone();
        assert_eq!(t.index, timesteps.len());
        timesteps.push(t.timestep);
        assert!(max_diff(t.sample.clone(), before.clone()) == 0.0);
        let a = t.alpha_prod_t;
        let forward = t.pred_original.clone().mul_scalar(a.sqrt() as f32)
            + t.pred_noise.clone().mul_scalar((1.0 - a).sqrt() as f32);
        assert!(max_diff(forward, t.sample.clone()) < 1e-4);
        let d = t.ddim.expect("DDIM coefficients");
        assert_eq!(d.std_dev, 0.0);
        assert!((d.sqrt_alpha_prev.powi(2) - t.alpha_prod_prev).abs() < 1e-12);
        let update = t.pred_original.clone().mul_scalar(d.sqrt_alpha_prev as f32)
            + t.pred_noise.clone().mul_scalar(d.direction as f32);
        assert!(max_diff(update, t.prev_sample.clone()) < 1e-5);
        before = t.prev_sample.clone();
        if !more {
            break;
        }
    }
    assert_eq!(timesteps.len(), 4);
    assert!(timesteps.windows(2).all(|w| w[0] > w[1]), "{timesteps:?}");
    assert!(max_diff(before, run.latents()) == 0.0);
}

/// The forward process (`image::add_noise_rgba`) on the learning view's
/// example image under four beta schedules equals the committed fixture the
/// browser test compares the page with (`tests/fixtures/forward_process.json`,
/// x_t as base64 RGBA; rewrite it with `UPDATE_FIXTURES=1`).
#[test]
fn forward_process_matches_its_fixture() {
    use latent_diffusion_web::DDIMScheduler;
    let file = std::fs::File::open(path("www/learn/example.png")).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let rgba: Vec<u8> = buf[..w * h * 3]
        .chunks(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    let mut cases = Vec::new();
    for (schedule, extra, t) in [
        ("linear", "", 100),
        (
            "scaled_linear",
            r#","beta_start":0.00085,"beta_end":0.012"#,
            250,
        ),
        ("squaredcos_cap_v2", "", 500),
        ("sigmoid", "", 900),
    ] {
        let config =
            format!(r#"{{"beta_schedule":"{schedule}","num_train_timesteps":1000{extra}}}"#);
        let s = DDIMScheduler::from_json(&config).unwrap();
        let x_t =
            latent_diffusion_web::image::add_noise_rgba(&s.schedule, &rgba, w, h, t, 7).unwrap();
        // t = 100 on the linear schedule keeps most of the image; t = 900 on
        // the sigmoid one almost none of it.
        let close = x_t
            .iter()
            .zip(&rgba)
            .filter(|(a, b)| a.abs_diff(**b) <= 32)
            .count();
        let share = close as f64 / rgba.len() as f64;
        assert!(
            if t == 100 {
                share > 0.5
            } else if t == 900 {
                share < 0.5
            } else {
                true
            },
            "{schedule}: {share}"
        );
        cases.push(serde_json::json!({
            "schedule": schedule, "t": t, "seed": 7, "x_t": base64(&x_t),
        }));
    }
    let got = serde_json::json!({ "width": w, "height": h, "cases": cases });
    let fixture = path("tests/fixtures/forward_process.json");
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&fixture, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
    assert!(
        got == want,
        "the forward process changed: rerun with UPDATE_FIXTURES=1 if meant"
    );
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// img2img and inpainting encode their image in tiles (diffusers'
/// `tiled_encode`, checked in model_parity) when a whole encode would not fit
/// one of the device's buffers, as the decoder decodes in tiles.
#[test]
fn images_are_encoded_in_tiles_when_a_whole_encode_would_not_fit() {
    let device = Device::flex();
    let sd = StableDiffusion::load_dir(&path("tests/fixtures/pipelines/tiny"), &device).unwrap();
    let (w, h) = (48, 32);
    let image: burn::tensor::Tensor<4> =
        latent_diffusion_web::NoiseGenerator::new(5).tensor([1, 3, h, w], &device);
    let image = image.clamp(-1.0, 1.0);
    assert_eq!(sd.encode_tile(w, h), None);
    let whole = sd.encode_image(image.clone());
    // The tiny VAE's encoder holds 32 channels at full size: 196,608 bytes here.
    sd.set_max_buffer_bytes(100_000);
    let tile = sd.encode_tile(w, h).expect("tiles at 100 kB");
    let tiled = sd.encode_image(image.clone());
    assert_eq!(tiled.dims(), whole.dims());
    let latent_diffusion_web::pipeline::Vae::Kl(vae) = &sd.vae else {
        panic!("a KL VAE")
    };
    let direct = vae.scale_latents(vae.tiled_encode(image, tile));
    assert_eq!(
        max_diff(tiled.clone(), direct),
        0.0,
        "the tiled path is tiled_encode"
    );
    let d = max_diff(tiled, whole);
    println!("encoded in {tile}-latent tiles: max diff from the whole encode {d:e}");
    assert!(d > 0.0 && d.is_finite());
}

/// The text encoder's last result is reused only for the same token ids:
/// alternating prompts and guidance give each its own embedding, equal to a
/// fresh model's.
#[test]
fn prompt_embedding_is_reused_only_for_the_same_prompt() {
    let device = Device::flex();
    let dir = path("tests/fixtures/pipelines/tiny");
    let sd = StableDiffusion::load_dir(&dir, &device).unwrap();
    let a = sd.encode_prompt("a red heart", "", false);
    let b = sd.encode_prompt("a blue car", "", false);
    let pair = sd.encode_prompt("a blue car", "", true);
    assert!(max_diff(a.clone(), b.clone()) > 1e-3);
    assert_eq!(pair.dims()[0], 2);
    for (prompt, guidance, want) in [("a red heart", false, &a), ("a blue car", false, &b)] {
        let again = sd.encode_prompt(prompt, "", guidance);
        let fresh = StableDiffusion::load_dir(&dir, &device)
            .unwrap()
            .encode_prompt(prompt, "", guidance);
        assert_eq!(max_diff(again.clone(), want.clone()), 0.0);
        assert_eq!(max_diff(again.clone(), fresh), 0.0, "{prompt}");
        assert_eq!(max_diff(sd.encode_prompt(prompt, "", guidance), again), 0.0);
    }
}
