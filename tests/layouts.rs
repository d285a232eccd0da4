//! Real model layouts at full size: BK-SDM-Tiny (3-stage-free SD1 UNet
//! without a mid block), SDXS-512-DreamShaper (3 stages, no mid block,
//! AutoencoderTiny), SD-Turbo (SD 2.x: per-block heads, linear
//! projections, OpenCLIP-H text encoder with gelu and "!" padding) and
//! LCM-Dreamshaper-v7 (SD 1.5 with the guidance embedding's `cond_proj`).
//!
//! Each folder is generated here from the published configs in
//! `tests/fixtures/layouts/<name>/` (`tests/common/random_model.rs`: f16
//! random weights, streamed straight into the loader, never written to disk
//! or held whole), loaded on Burn's CPU backend, and compared with diffusers /
//! transformers on the same weights (`tools/make_layout_fixtures.py`): the
//! tokenizer's ids exactly; the text encoder, one UNet call at 8×8 latents and
//! one VAE decode to 64×64, each within 1e-4 of the reference output's largest
//! magnitude (f32 on both sides; the difference is summation order over up to
//! 0.87 B parameters).
//!
//! SD-Turbo is loaded a second time with f16 weights and compute
//! (`Precision::F16`): its weights then take 2 bytes each (2.6 GB, not the
//! 5.2 GB of f32), and the outputs stay within [`F16_TOL`] × the reference's
//! largest magnitude of diffusers' f32 outputs.

use std::path::PathBuf;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use latent_diffusion_web::NoiseGenerator;
use latent_diffusion_web::pipeline::{PipelineConfig, StableDiffusion, WEIGHT_FILES};
use latent_diffusion_web::weights::{WeightFile, WeightReader};

mod common;
#[path = "common/random_model.rs"]
mod random_model;

/// The prompt the references tokenize and encode.
const PROMPT: &str = "a photo of an astronaut riding a horse on mars";

fn layout(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/layouts")
        .join(name)
}

/// See the module docs (measured 2026-11-26: at most 2.9e-3 × the scale:
/// text encoder 2.3e-3, UNet 2.2e-3, VAE decode 2.9e-3).
const F16_TOL: f32 = 1e-2;

fn close(what: &str, got: Vec<f32>, want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let max = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("{what}: max abs diff {max:e} (reference scale {scale:.3})");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    assert!(
        max <= tol * scale,
        "{what}: max abs diff {max:e} > {tol:e} × {scale}"
    );
}

fn check(name: &str) {
    check_as(name, DType::F32);
}

fn check_as(name: &str, dtype: DType) {
    let tol = if dtype == DType::F16 { F16_TOL } else { 1e-4 };
    let dir = layout(name);
    let device = Device::flex();
    let config = PipelineConfig::from_lookup(&format!("{name}/"), |p| {
        Ok(random_model::text_file(&dir, p))
    })
    .unwrap();
    let plans = config.plan();
    let files: Vec<WeightFile> = WEIGHT_FILES
        .iter()
        .zip(&plans)
        .map(|(file, keys)| {
            let mut reader = WeightReader::new(file, &device, None).with_dtype(dtype);
            random_model::safetensors(keys, |b| reader.push(b).map_err(std::io::Error::other))
                .unwrap();
            reader.finish().unwrap()
        })
        .collect();
    let elements: u64 = files.iter().map(|f| f.header().num_elements()).sum();
    let sd = StableDiffusion::load(config, files.try_into().ok().unwrap(), &device).unwrap();
    assert_eq!(sd.dtype(), dtype);
    // The token table stays on the host as stored (f16); everything else as `dtype`.
    let bytes = sd.weight_bytes();
    println!("{name} {dtype:?}: {elements} weights take {bytes} bytes");
    if dtype == DType::F16 {
        assert_eq!(bytes, 2 * elements, "{name}: 2 bytes per weight");
    }
    let want = common::f32_tensors(dir.join("expected.safetensors"));

    // WebGPU's default 128 MiB binding: 512×512 with guidance fits, the KL
    // decoder in tiles (its whole decode needs a 256 MiB buffer).
    sd.set_max_buffer_bytes(128 << 20);
    let tile = sd.decode_tile(512, 512);
    println!(
        "{name}: at 128 MiB per buffer: 512×512 decoded in tiles of {tile:?} latents; largest \
         square {}",
        sd.max_side(sd.classifier_free(2.0))
    );
    sd.check_size(512, 512, sd.classifier_free(2.0)).unwrap();
    assert_eq!(
        tile.is_some(),
        name != "sdxs-512-dreamshaper",
        "{name}: TAESD is not tiled"
    );
    // The encoder (img2img, inpainting) holds 128 channels at full size: 512²
    // fits 128 MiB exactly, 1024² is encoded in tiles.
    assert_eq!(sd.encode_tile(512, 512), None);
    assert_eq!(
        sd.encode_tile(1024, 1024).is_some(),
        name != "sdxs-512-dreamshaper",
        "{name}: TAESD is not tiled"
    );
    sd.set_max_buffer_bytes(4 << 30);
    assert_eq!(sd.decode_tile(512, 512), None);

    let ids = sd.tokenizer.encode(PROMPT);
    let want_ids: Vec<u32> = want["input_ids"].1.iter().map(|&v| v as u32).collect();
    assert_eq!(ids, want_ids, "{name}: token ids");
    let l = ids.len();
    let ids = TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, l]);
    let hidden = sd
        .text_encoder
        .forward(Tensor::<2, Int>::from_data(ids, &device));
    let dim = hidden.dims()[2];
    let rows = |r: std::ops::Range<usize>| {
        hidden
            .clone()
            .slice([0..1, r, 0..dim])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    close(
        &format!("{name} text encoder, tokens 0..8"),
        rows(0..8),
        &want["text_head"].1,
        tol,
    );
    close(
        &format!("{name} text encoder, tokens 70..77"),
        rows(70..77),
        &want["text_tail"].1,
        tol,
    );

    let sample: Tensor<4> = NoiseGenerator::new(1).tensor([1, 4, 8, 8], &device);
    let context: Tensor<3> = NoiseGenerator::new(2).tensor([1, 77, dim], &device);
    let out = sd.unet.forward(sample, &[999.0], &context, None, None);
    close(
        &format!("{name} UNet"),
        out.into_data().try_to_vec().unwrap(),
        &want["unet_out"].1,
        tol,
    );

    let latents: Tensor<4> = NoiseGenerator::new(3).tensor([1, 4, 8, 8], &device);
    let image = sd.vae.decode_scaled(latents);
    close(
        &format!("{name} VAE decode"),
        image.into_data().try_to_vec().unwrap(),
        &want["image"].1,
        tol,
    );
}

#[test]
fn bk_sdm_tiny_matches_diffusers() {
    check("bk-sdm-tiny");
}

#[test]
fn sdxs_512_dreamshaper_matches_diffusers() {
    check("sdxs-512-dreamshaper");
}

#[test]
fn sd_turbo_matches_diffusers() {
    check("sd-turbo");
}

/// LCM-Dreamshaper-v7: SD 1.5's UNet with `time_cond_proj_dim` 256 (its
/// config reconstructed: see `tests/fixtures/layouts/README.md`).
#[test]
fn lcm_dreamshaper_v7_matches_diffusers() {
    check("lcm-dreamshaper-v7");
}

#[test]
fn sd_turbo_in_f16_takes_half_the_memory() {
    check_as("sd-turbo", DType::F16);
}
