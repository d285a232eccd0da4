//! Writes a full-size random-weight diffusers folder for a model layout, so
//! that real layouts (BK-SDM, SDXS, SD-Turbo: 0.5–2.6 GB) can be tested for
//! shapes, memory and speed without the Hub.
//!
//!     cargo run --release --example random_model -- tests/fixtures/layouts/sd-turbo /tmp/sd-turbo
//!
//! The layout folder holds the published configs (`unet/`, `vae/`,
//! `text_encoder/`, `scheduler/`, `tokenizer/tokenizer_config.json`); the CLIP
//! vocabulary comes from `tests/fixtures/clip_tokenizer`. Every tensor the
//! crate's loaders ask for is written as f16, key by key, streamed to disk:
//! weights uniform in ±√3/√fan_in · 0.5 (so activations stay finite in f16),
//! norm scales 1 + noise, biases small, all from a hash of (file, key, index),
//! so the same folder comes out on every machine. `tools/make_layout_fixtures.py`
//! loads these folders into diffusers to make the parity references.

#[path = "../tests/common/random_model.rs"]
mod random_model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [layout, out] = args.as_slice() else {
        return Err("usage: random_model LAYOUT_DIR OUT_DIR".into());
    };
    let total = random_model::write_folder(layout.as_ref(), out.as_ref())?;
    println!("{out}: {total} bytes in all");
    Ok(())
}
