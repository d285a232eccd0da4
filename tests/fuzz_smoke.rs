//! A seeded mutation fuzzer over the parsers that read outside input (see
//! tests/common/fuzz_entries.rs): a fixed number of mutants of valid seeds per
//! target, each run under `catch_unwind`. Any panic fails the test and prints
//! the input. Not coverage-guided; the cargo-fuzz targets in `fuzz/` are (see
//! the README for the command and their last result).

use std::panic::{AssertUnwindSafe, catch_unwind};

#[path = "common/fuzz_entries.rs"]
mod entries;

/// splitmix64: a small, seedable stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Text that parsers treat specially: huge and negative numbers, non-finite
/// values, nesting, HTML, multi-byte UTF-8.
const TOKENS: &[&str] = &[
    "4294967296",
    "18446744073709551616",
    "-1",
    "1e309",
    "NaN",
    "0",
    "null",
    "[[[[",
    "]]]]",
    "{",
    "}",
    "\"",
    ",",
    "<html>",
    "é",
    "😀",
    "\u{0}",
    "9007199254740993",
    "1.5",
    "[]",
    "{}",
];

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            3 => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at.min(end)..end);
            }
            4 => b.truncate(at),
            5 => {
                let end = (at + 1 + rng.below(32)).min(b.len());
                let piece = b[at.min(end)..end].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, piece);
            }
            _ => {
                // Overwrite 8 bytes with an extreme little-endian integer
                // (safetensors' header length, PNG sizes).
                let v = [u64::MAX, 1 << 40, 1 << 31, 0][rng.below(4)].to_le_bytes();
                let at = at.min(b.len().saturating_sub(8));
                for (i, x) in v.iter().enumerate() {
                    if let Some(y) = b.get_mut(at + i) {
                        *y = *x;
                    }
                }
            }
        }
    }
    b
}

/// Runs `entry` on every seed and `n` mutants; returns the inputs that panicked.
fn fuzz(name: &str, entry: fn(&[u8]), seeds: &[Vec<u8>], n: usize) -> Vec<String> {
    let mut rng = Rng(0x5eed ^ name.len() as u64);
    let mut failures = Vec::new();
    let start = std::time::Instant::now();
    for i in 0..seeds.len() + n {
        let input = match i < seeds.len() {
            true => seeds[i].clone(),
            false => mutate(&seeds[rng.below(seeds.len())], &mut rng),
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| entry(&input))) {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or(p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let shown: String = String::from_utf8_lossy(&input[..input.len().min(300)]).into();
            failures.push(format!(
                "{name}: {why}; input ({} bytes) {shown:?}",
                input.len()
            ));
        }
    }
    println!(
        "{name}: {} inputs, {} panics, {:.1} s",
        seeds.len() + n,
        failures.len(),
        start.elapsed().as_secs_f64()
    );
    failures
}

fn safetensors_seed() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]},"c":{"dtype":"BF16","shape":[1,1,2],"data_offsets":[28,32]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    out
}

fn png_seed(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgba);
        let data: Vec<u8> = (0..w * h * 4).map(|i| i as u8).collect();
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(&data).unwrap();
    }
    out
}

#[test]
fn no_parser_panics_on_mutated_input() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let read = |p: &str| std::fs::read(format!("{root}{p}")).unwrap();
    let with = |k: u8, b: Vec<u8>| [vec![k], b].concat();
    let folder_seeds = vec![
        with(0, read("pipelines/tiny/unet/config.json")),
        with(1, read("pipelines/tiny/vae/config.json")),
        with(1, read("layouts/sdxs-512-dreamshaper/vae/config.json")),
        with(2, read("pipelines/tiny/text_encoder/config.json")),
        with(4, b"#version: 0.2\na b\nab c\n".to_vec()),
        with(5, read("pipelines/tiny/scheduler/scheduler_config.json")),
        with(6, read("pipelines/tiny/tokenizer/tokenizer_config.json")),
    ];
    let corpus: serde_json::Value = serde_json::from_slice(&read("bad_input/corpus.json")).unwrap();
    let option_seeds: Vec<Vec<u8>> = (corpus["cases"].as_array().unwrap().iter())
        .filter_map(|c| c.get("options"))
        .map(|o| serde_json::to_vec(o).unwrap())
        .collect();
    let prompt_seeds = [
        "a photo of a cat, 8k",
        "",
        "😀 émoji <|endoftext|> 123,456",
        "a  b\t\nc",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec();
    // Panics are collected with their input, not printed as they happen.
    std::panic::set_hook(Box::new(|_| {}));
    let failures = [
        fuzz(
            "safetensors",
            entries::safetensors,
            &[with(3, safetensors_seed())],
            3000,
        ),
        // Each folder input parses the 1.6 MB CLIP vocabulary: fewer of them.
        fuzz("model folder", entries::model_folder, &folder_seeds, 400),
        fuzz("prompt", entries::prompt, &prompt_seeds, 3000),
        fuzz(
            "png",
            entries::png,
            &[png_seed(4, 3), png_seed(16, 16)],
            3000,
        ),
        fuzz("options", entries::options, &option_seeds, 3000),
    ]
    .concat();
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
