//! One full-size UNet call at 512×512 (64×64 latents, batch 2: a guidance
//! pair, 77 context tokens) of a real model layout, from a folder written by
//! `examples/random_model.rs`, on one Burn backend and precision. Prints JSON
//! like `tools/bench_layout_unet.py` (the PyTorch side, on the same weights and
//! inputs) and writes the output to `<folder>/crate_unet_out.f32` for it to
//! compare. `tools/bench_layouts.sh` runs both and prints the ratios.
//!
//!     cargo bench --bench layout_unet -- <folder> [flex|wgpu] [f32|f16]

use std::time::Instant;

use burn::tensor::Tensor;
use latent_diffusion_web::NoiseGenerator;
use latent_diffusion_web::models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel,
};
use latent_diffusion_web::weights::{WeightFile, parameter_bytes};

mod common;
use common::peak_rss_mb;

/// Timed calls after one warm-up (each takes seconds to a minute on a CPU).
const RUNS: usize = 2;

fn main() {
    latent_diffusion_web::run_on_cpu_pool(bench);
}

fn bench() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let dir = args
        .get(1)
        .expect("usage: layout_unet <folder> [flex|wgpu] [f32|f16]");
    let backend = args.get(2).map(String::as_str).unwrap_or("flex");
    let device = common::device(args.get(2));
    let dtype = common::precision(args.get(3));
    let json = std::fs::read_to_string(format!("{dir}/unet/config.json")).unwrap();
    let config = UNet2DConditionConfig::from_json(&json).unwrap();
    let load = Instant::now();
    let path = [
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.safetensors",
    ]
    .map(|f| format!("{dir}/unet/{f}"))
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
    .expect("a UNet weight file");
    let file = WeightFile::read(path.as_ref(), "unet", &device, |_| false, dtype).unwrap();
    let unet = file
        .build(|_| false, |vb| UNet2DConditionModel::load(vb, &config))
        .unwrap();
    let load_ms = load.elapsed().as_secs_f64() * 1e3;

    let sample: Tensor<4> = NoiseGenerator::new(1).tensor([2, 4, 64, 64], &device);
    let dim = config
        .cross_attention_dim
        .per_block("cross_attention_dim", 1)
        .unwrap()[0];
    let ctx: Tensor<3> = NoiseGenerator::new(2).tensor([2, 77, dim], &device);
    // Reading the result back makes each timing include the whole computation.
    let call = || {
        unet.forward(sample.clone(), &[999.0], &ctx, None, None)
            .into_data()
    };
    let out = call();
    let times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let s = Instant::now();
            call();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let mean = times.iter().sum::<f64>() / RUNS as f64;
    let values = out.try_to_vec::<f32>().unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(format!("{dir}/crate_unet_out.f32"), bytes).unwrap();
    println!(
        "{{\"backend\": \"burn {backend} {dtype:?}\", \"unet_ms\": {:.0}, \"load_ms\": {load_ms:.0}, \
         \"weight_bytes\": {}, \"peak_rss_mb\": {:.0}}}",
        mean,
        parameter_bytes(&unet),
        peak_rss_mb()
    );
}
