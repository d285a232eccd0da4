//! Times a whole generation with the shipped model (www/models/emoji-4step:
//! tokenize, encode the prompt ("red heart" / "blue car" by seed), 4 DDIM
//! steps at guidance 1, decode, read the image back) on one Burn backend.
//! Prints JSON like tools/bench_generate.py, with the median time of each
//! part; tools/bench.sh runs both and prints the ratio.
//!
//!     cargo bench --bench generate -- <flex|wgpu> [model dir]

use std::time::Instant;

use latent_diffusion_web::pipeline::{GenerateOptions, StableDiffusion};

mod common;

const RUNS: usize = 10;
/// Alternated by seed, as in tools/bench_generate.py: the pipeline reuses the
/// last prompt's embedding, which diffusers does not.
const PROMPTS: [&str; 2] = ["red heart", "blue car"];

fn main() {
    latent_diffusion_web::run_on_cpu_pool(bench);
}

fn bench() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let backend = args.get(1).map(String::as_str).unwrap_or("flex");
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/www/models/emoji-4step");
    let dir = args.get(2).map(String::as_str).unwrap_or(default);
    let device = common::device(args.get(1));
    let t = Instant::now();
    let sd =
        std::sync::Arc::new(StableDiffusion::load_dir(std::path::Path::new(dir), &device).unwrap());
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let opts = GenerateOptions {
        steps: 4,
        guidance_scale: 1.0,
        ..Default::default()
    };
    // Per part: start (tokenize, text encoder, initial noise), one step (UNet
    // + DDIM), finish (decode, read back); ms.
    let once = |seed: u64| -> [f64; 4] {
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let mut run = sd
            .start(
                &GenerateOptions {
                    seed,
                    prompt: PROMPTS[seed as usize % 2].into(),
                    ..opts.clone()
                },
                None,
                None,
            )
            .unwrap();
        let start = ms(t0);
        let t1 = Instant::now();
        while run.step().unwrap() {}
        let step = ms(t1) / opts.steps as f64;
        let t2 = Instant::now();
        run.finish().into_data();
        [ms(t0), start, step, ms(t2)]
    };
    for seed in 0..2 {
        once(seed);
    }
    let runs: Vec<[f64; 4]> = (0..RUNS as u64).map(once).collect();
    let median = |i: usize| {
        let mut v: Vec<f64> = runs.iter().map(|r| r[i]).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[RUNS / 2 - 1] + v[RUNS / 2]) / 2.0
    };
    println!(
        "{{\"backend\": \"burn {backend}\", \"load_ms\": {load_ms:.1}, \"generate_ms\": {:.2}, \"start_ms\": {:.2}, \"step_ms\": {:.2}, \"finish_ms\": {:.2}}}",
        median(0),
        median(1),
        median(2),
        median(3)
    );
}
