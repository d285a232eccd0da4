//! Full-size random-weight diffusers folders for real model layouts (shared
//! by `examples/random_model.rs` and `tests/layouts.rs`). See the example.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use latent_diffusion_web::pipeline::{PipelineConfig, WEIGHT_FILES};

const COPIED: [&str; 7] = [
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
];

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key_seed(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// How the values of tensor `key` are drawn: `offset + scale · u`, u uniform in [-1, 1).
fn distribution(key: &str, shape: &[usize]) -> (f32, f32) {
    let is_norm = key.contains("norm") && key.ends_with("weight") && shape.len() == 1;
    if is_norm {
        (1.0, 0.1)
    } else if key.ends_with("bias") {
        (0.0, 0.02)
    } else if key.ends_with("token_embedding.weight")
        || key.ends_with("position_embedding.weight")
        || key.contains("class_embedding")
    {
        (0.0, 0.5)
    } else {
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        (0.0, 0.5 * 3f32.sqrt() / (fan_in as f32).sqrt())
    }
}

/// Writes the safetensors bytes of `keys` (f16) to `sink`, in pieces of at
/// most 1 MiB; returns the file's length.
pub fn safetensors(
    keys: &[(String, Vec<usize>)],
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut header = serde_json::Map::new();
    let mut at = 0u64;
    for (k, shape) in keys {
        let n: usize = shape.iter().product();
        let end = at + 2 * n as u64;
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [at, end]}),
        );
        at = end;
    }
    let mut json = serde_json::to_vec(&header)?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    sink(&(json.len() as u64).to_le_bytes())?;
    sink(&json)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    for (k, shape) in keys {
        let seed = key_seed(k);
        let (offset, scale) = distribution(k, shape);
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        for i in 0..n {
            let bits = splitmix(seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d)) >> 40;
            let u = bits as f32 * (2.0 / (1u64 << 24) as f32) - 1.0;
            let v = half::f16::from_f32(offset + scale * u).to_bits();
            buf[len] = v as u8;
            buf[len + 1] = (v >> 8) as u8;
            len += 2;
            if len == buf.len() {
                sink(&buf)?;
                len = 0;
            }
        }
    }
    sink(&buf[..len])?;
    Ok(8 + json.len() as u64 + at)
}

/// The layout's text files with the CLIP vocabulary, by relative path.
pub fn text_file(layout: &Path, path: &str) -> Option<Vec<u8>> {
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tokenizer");
    match path {
        "tokenizer/vocab.json" | "tokenizer/merges.txt" => {
            std::fs::read(vocab.join(&path[10..])).ok()
        }
        p => std::fs::read(layout.join(p)).ok(),
    }
}

/// Writes the whole folder for `layout` to `out`; returns its size in bytes.
pub fn write_folder(layout: &Path, out: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    for f in COPIED
        .iter()
        .chain(&["tokenizer/vocab.json", "tokenizer/merges.txt"])
    {
        if let Some(bytes) = text_file(layout, f) {
            std::fs::create_dir_all(out.join(f).parent().unwrap())?;
            std::fs::write(out.join(f), bytes)?;
        }
    }
    let config = PipelineConfig::read_dir(out)?;
    let plans = config.plan();
    let mut total = 0;
    for (file, keys) in WEIGHT_FILES.iter().zip(&plans) {
        let path = out.join(file);
        std::fs::create_dir_all(path.parent().unwrap())?;
        let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&path)?);
        let bytes = safetensors(keys, |b| f.write_all(b))?;
        f.flush()?;
        let params: usize = keys.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        println!(
            "{file}: {} tensors, {params} parameters, {bytes} bytes",
            keys.len()
        );
        total += bytes;
    }
    Ok(total)
}
