//! The `#[wasm_bindgen]` facade: thin wrappers that turn crate errors into
//! JS errors. No logic lives here.

use wasm_bindgen::prelude::*;

use crate::models::clip::ClipTokenizer;
use crate::{DDIMScheduler, NoiseGenerator};

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// The crate version, for the page footer and bug reports.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The DDIM timesteps for a diffusers `scheduler_config.json` text and a
/// step count, highest first.
#[wasm_bindgen(js_name = ddimTimesteps)]
pub fn ddim_timesteps(config_json: &str, steps: usize) -> Result<Vec<u32>, JsError> {
    let mut s = DDIMScheduler::from_json(config_json).map_err(to_js)?;
    s.set_timesteps(steps).map_err(to_js)?;
    Ok(s.timesteps().iter().map(|&t| t as u32).collect())
}

/// ᾱ_t for every training timestep of a `scheduler_config.json`.
#[wasm_bindgen(js_name = alphasCumprod)]
pub fn alphas_cumprod(config_json: &str) -> Result<Vec<f64>, JsError> {
    let s = DDIMScheduler::from_json(config_json).map_err(to_js)?;
    Ok(s.schedule.alphas_cumprod)
}

/// The first `n` values of the seeded noise stream (see `noise.rs`).
#[wasm_bindgen(js_name = gaussianNoise)]
pub fn gaussian_noise(seed: u64, n: usize) -> Vec<f32> {
    NoiseGenerator::new(seed).sample(n)
}

/// A random seed from the browser's crypto source.
#[wasm_bindgen(js_name = randomSeed)]
pub fn random_seed() -> Result<u32, JsError> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| JsError::new(&format!("no random source: {e}")))?;
    Ok(u32::from_le_bytes(b))
}

/// The CLIP tokenizer of a diffusers `tokenizer/` folder.
#[wasm_bindgen]
pub struct Tokenizer(ClipTokenizer);

#[wasm_bindgen]
impl Tokenizer {
    /// From the texts of `vocab.json`, `merges.txt` and (optional) `tokenizer_config.json`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        vocab_json: &str,
        merges_txt: &str,
        tokenizer_config_json: Option<String>,
    ) -> Result<Tokenizer, JsError> {
        ClipTokenizer::new(vocab_json, merges_txt, tokenizer_config_json.as_deref())
            .map(Tokenizer)
            .map_err(to_js)
    }

    /// `[bos, tokens…, eos, pad…]`, `model_max_length` ids.
    pub fn encode(&self, prompt: &str) -> Vec<u32> {
        self.0.encode(prompt)
    }
}

fn to_js(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}
