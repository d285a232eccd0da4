//! Times one UNet forward (batch 2: a guidance pair, 16×16 latents, 77 context
//! tokens) and one AutoencoderKL decode (16×16 latents → 64×64 RGB) on one
//! Burn backend, using the weights `tools/bench_forward.py` saved. Prints JSON
//! like the Python side; `tools/bench.sh` runs both and prints the ratios.
//!
//!     cargo bench --bench forward -- <flex|wgpu> <model dir> [f32|f16]

use std::time::Instant;

use burn::tensor::{DType, Device, Tensor};
use latent_diffusion_web::NoiseGenerator;
use latent_diffusion_web::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use latent_diffusion_web::models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel,
};
use latent_diffusion_web::weights::WeightFile;

mod common;
use common::peak_rss_mb;

const RUNS: usize = 10;

fn median_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    let mut t: Vec<f64> = (0..RUNS)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[RUNS / 2 - 1] + t[RUNS / 2]) / 2.0
}

fn load_file(dir: &str, sub: &str, device: &Device, dtype: DType) -> (String, WeightFile) {
    let config = std::fs::read_to_string(format!("{dir}/{sub}/config.json"))
        .expect("run tools/bench_forward.py first");
    let path = format!("{dir}/{sub}/diffusion_pytorch_model.safetensors");
    (
        config,
        WeightFile::read(path.as_ref(), sub, device, |_| false, dtype).unwrap(),
    )
}

fn main() {
    latent_diffusion_web::run_on_cpu_pool(bench);
}

fn bench() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let backend = args.get(1).map(String::as_str).unwrap_or("flex");
    let device = common::device(args.get(1));
    let dir = args.get(2).map(String::as_str).unwrap_or("/tmp/ldw-bench");
    let dtype = common::precision(args.get(3));

    let (config, file) = load_file(dir, "unet", &device, dtype);
    let config = UNet2DConditionConfig::from_json(&config).unwrap();
    let unet = file
        .build(|_| false, |vb| UNet2DConditionModel::load(vb, &config))
        .unwrap();
    let (config, file) = load_file(dir, "vae", &device, dtype);
    let config = AutoencoderKLConfig::from_json(&config).unwrap();
    let vae = file
        .build(|_| false, |vb| Ok(AutoencoderKL::load(vb, &config)))
        .unwrap();

    let mut noise = NoiseGenerator::new(0);
    let sample: Tensor<4> = noise.tensor([2, 4, 16, 16], &device);
    let ctx: Tensor<3> = noise.tensor([2, 77, 128], &device);
    let latents: Tensor<4> = noise.tensor([1, 4, 16, 16], &device);
    // Reading the result back makes each timing include the whole computation.
    let unet_ms = median_ms(|| {
        unet.forward(sample.clone(), &[500.0], &ctx, None, None)
            .into_data();
    });
    let decoder_ms = median_ms(|| {
        vae.decode(latents.clone()).into_data();
    });
    println!(
        "{{\"backend\": \"burn {backend} {dtype:?}\", \"unet_ms\": {unet_ms:.2}, \"decoder_ms\": {decoder_ms:.2}, \"peak_rss_mb\": {:.1}}}",
        peak_rss_mb()
    );
}
