//! Fuzz entry points: each takes arbitrary bytes and feeds them to one of the
//! parsers that read outside input. None may panic, abort or allocate from an
//! unchecked size; an `Err` is the expected outcome for most inputs.
//! Shared by `tests/fuzz_smoke.rs` (a seeded mutation run in `cargo test`) and
//! the cargo-fuzz targets in `fuzz/` (coverage-guided, run by hand).

use std::sync::OnceLock;

use burn::tensor::Device;
use latent_diffusion_web::image::decode_png;
use latent_diffusion_web::models::clip::ClipTokenizer;
use latent_diffusion_web::pipeline::{
    MAX_IMAGE_SIDE, OPTIONAL_FILES, OptionsInput, PipelineConfig, TEXT_FILES,
};
use latent_diffusion_web::weights::{Header, WeightReader};

/// The tiny fixture folder, from this crate or from `fuzz/` beside it.
fn tiny_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let sub = "tests/fixtures/pipelines/tiny";
        match here.join(sub).exists() {
            true => here.join(sub),
            false => here.join("..").join(sub),
        }
    })
}

fn tiny(path: &str) -> Vec<u8> {
    std::fs::read(tiny_dir().join(path)).unwrap()
}

/// A safetensors file: header parse, then the streamed reader, fed in
/// pieces whose sizes come from the first byte.
pub fn safetensors(data: &[u8]) {
    let Some((&k, data)) = data.split_first() else {
        return;
    };
    let _ = Header::parse("fuzz.safetensors", data, Some(data.len() as u64));
    let mut r = WeightReader::new("fuzz.safetensors", &Device::flex(), Some(data.len() as u64));
    for piece in data.chunks(1 + k as usize * 7) {
        if r.push(piece).is_err() {
            return;
        }
    }
    let _ = r.finish();
}

/// One text file of a model folder replaced by the input (which one: the
/// first byte), the rest from the tiny fixture: every config parser, the
/// tokenizer and the consistency checks.
pub fn model_folder(data: &[u8]) {
    let Some((&k, data)) = data.split_first() else {
        return;
    };
    let files: Vec<&str> = TEXT_FILES.iter().chain(&OPTIONAL_FILES).copied().collect();
    let target = files[k as usize % files.len()];
    let _ = PipelineConfig::from_lookup("", |p| {
        Ok(if p == target {
            Some(data.to_vec())
        } else if p.ends_with("vocab.json") || p.ends_with("merges.txt") {
            Some(tiny_text(p).to_vec())
        } else {
            std::fs::read(tiny_dir().join(p)).ok()
        })
    });
}

/// The CLIP vocabulary and merges are 2 MB: read once.
fn tiny_text(p: &str) -> &'static [u8] {
    static VOCAB: OnceLock<Vec<u8>> = OnceLock::new();
    static MERGES: OnceLock<Vec<u8>> = OnceLock::new();
    if p.ends_with("vocab.json") {
        VOCAB.get_or_init(|| tiny("tokenizer/vocab.json"))
    } else {
        MERGES.get_or_init(|| tiny("tokenizer/merges.txt"))
    }
}

/// A prompt through the CLIP tokenizer.
pub fn prompt(data: &[u8]) {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    let t = TOKENIZER.get_or_init(|| {
        let text = |p| String::from_utf8(tiny_text(p).to_vec()).unwrap();
        ClipTokenizer::new(&text("vocab.json"), &text("merges.txt"), None).unwrap()
    });
    let ids = t.encode(&String::from_utf8_lossy(data));
    assert_eq!(ids.len(), t.max_length);
}

/// An image file given to the CLI.
pub fn png(data: &[u8]) {
    if let Ok((rgba, w, h)) = decode_png(data, MAX_IMAGE_SIDE) {
        assert_eq!(rgba.len(), w * h * 4);
    }
}

/// The options object of `generate()` as JSON.
pub fn options(data: &[u8]) {
    if let Ok(o) = serde_json::from_slice::<OptionsInput>(data) {
        let _ = o.check();
    }
}
