//! The whole pipeline (tokenizer → text encoder → guided DDIM loop → VAE decode)
//! against diffusers' StableDiffusionPipeline on a random-weight tiny pipeline,
//! started from the crate's seeded noise (fixture: tools/make_pipeline_fixtures.py).
//! Tolerance: max |ours − diffusers| ≤ 1e-4 per pixel on the [0, 1] scale
//! (one 8-bit level is 4e-3; seen: ≤ 5e-6).

use burn::tensor::Device;
use latent_diffusion_web::pipeline::{GenerateOptions, PipelineFiles, StableDiffusion};
use latent_diffusion_web::schedulers::TimestepSpacing;
use safetensors::SafeTensors;

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/tiny")
}

#[test]
fn matches_diffusers_stable_diffusion_pipeline() {
    let device = Device::flex();
    let sd = std::rc::Rc::new(
        StableDiffusion::load(PipelineFiles::read_dir(&dir()).unwrap(), &device).unwrap(),
    );
    assert_eq!((sd.vae_scale_factor, sd.default_size), (2, 16));
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    let expected_bytes = std::fs::read(dir().join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&expected_bytes).unwrap();
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
        let want: Vec<f32> = expected
            .tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let ours = image.iter().map(|x| (x / 2.0 + 0.5).clamp(0.0, 1.0));
        let max = ours
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{name}: max abs diff {max:e}");
        assert!(max <= 1e-4, "{name}: max abs diff {max:e}");
    }
}
