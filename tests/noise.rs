//! The seeded noise stream against its independent Python implementation
//! (`tools/noise.py`, fixture `tests/fixtures/noise.json`).

use latent_diffusion_web::NoiseGenerator;

#[test]
fn matches_python_reference_stream() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/noise.json"
    ))
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    for stream in doc["streams"].as_array().unwrap() {
        let seed: u64 = stream["seed"].as_str().unwrap().parse().unwrap();
        let want: Vec<f32> = stream["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = NoiseGenerator::new(seed).sample(want.len());
        // Bit for bit: the browser test holds the wasm build to the same file.
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "seed {seed}");
    }
}

#[test]
fn different_seeds_differ_and_statistics_are_standard_normal() {
    let a = NoiseGenerator::new(1).sample(200_000);
    let b = NoiseGenerator::new(2).sample(16);
    assert_ne!(&a[..16], &b[..]);
    let n = a.len() as f64;
    let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((var - 1.0).abs() < 0.01, "variance {var}");
    let tail = a.iter().filter(|x| x.abs() > 3.0).count() as f64 / n;
    assert!((tail - 0.0027).abs() < 0.0006, "P(|z|>3) = {tail}");
}

#[test]
fn stream_continues_across_calls() {
    let whole = NoiseGenerator::new(9).sample(7);
    let mut g = NoiseGenerator::new(9);
    let mut parts = g.sample(3);
    parts.extend(g.sample(4));
    assert_eq!(whole, parts);
}
