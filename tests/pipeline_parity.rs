//! The whole pipeline (tokenizer → text encoder → guided DDIM loop → VAE decode)
//! against diffusers' StableDiffusionPipeline, started from the crate's seeded
//! noise (fixtures: tools/make_pipeline_fixtures.py), on a random-weight tiny
//! pipeline and on the shipped model (www/models/emoji-4step).
//! Tolerance: max |ours − diffusers| ≤ 1e-4 per pixel on the [0, 1] scale for
//! the tiny pipeline, 1e-3 for the trained 64×64 model (one 8-bit level is 4e-3).

use burn::tensor::Device;
use latent_diffusion_web::pipeline::{GenerateOptions, PipelineFiles, StableDiffusion};
use latent_diffusion_web::schedulers::TimestepSpacing;
mod common;

fn path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn matches_diffusers_stable_diffusion_pipeline() {
    let dir = path("tests/fixtures/pipelines/tiny");
    check(&dir, &dir, (2, 16), 1e-4);
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

fn check(
    model: &std::path::Path,
    fixtures: &std::path::Path,
    scale_and_size: (usize, usize),
    tolerance: f32,
) {
    let device = Device::flex();
    let sd = std::rc::Rc::new(
        StableDiffusion::load(PipelineFiles::read_dir(model).unwrap(), &device).unwrap(),
    );
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
            ..Default::default()
        };
        let mut run = sd.start(&opts, None, None).unwrap();
        while run.step().unwrap() {}
        assert_eq!(run.steps_done(), opts.steps);
        let image: Vec<f32> = run.decode().to_data().try_to_vec::<f32>().unwrap();
        let want = &expected[name].1;
        let ours = image.iter().map(|x| (x / 2.0 + 0.5).clamp(0.0, 1.0));
        let max = ours
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{name}: max abs diff {max:e}");
        assert!(max <= tolerance, "{name}: max abs diff {max:e}");
    }
}

/// The page compares this with the GPU's buffer limit before choosing WebGPU.
#[test]
fn largest_tensor_is_read_from_the_headers() {
    let files = PipelineFiles::read_dir(&path("www/models/emoji-4step")).unwrap();
    assert_eq!(
        files.largest_tensor(),
        (
            "text_encoder/embeddings.token_embedding.weight".to_string(),
            49408 * 64 * 4
        )
    );
    let mut broken = PipelineFiles::read_dir(&path("tests/fixtures/pipelines/tiny")).unwrap();
    assert_eq!(broken.largest_tensor().1, 49408 * 16 * 4);
    broken.text_encoder_weights.truncate(4);
    let (name, bytes) = broken.largest_tensor();
    assert!(
        name.starts_with("unet/") || name.starts_with("vae/"),
        "{name}"
    );
    assert!(bytes < 49408 * 16 * 4);
}
