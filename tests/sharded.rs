//! Sharded checkpoints (`*.safetensors.index.json` and its shards), as
//! diffusers and transformers save weights above their shard size: loaded as
//! one file, checked against the index before any tensor is read.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use latent_diffusion_web::pipeline::{GenerateOptions, StableDiffusion};
mod common;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A copy of the tiny pipeline (symlinks read through) in a fresh folder.
fn copy_tiny(name: &str) -> PathBuf {
    let from = root().join("tests/fixtures/pipelines/tiny");
    let to = std::env::temp_dir().join(format!("ldw-sharded-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for e in std::fs::read_dir(from.join(sub)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    to
}

/// Replaces `unet/diffusion_pytorch_model.safetensors` by `n` shards and an
/// index; returns the shard file names.
fn shard_unet(dir: &Path, n: usize) -> Vec<String> {
    let file = dir.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let mut names = Vec::new();
    for (name, body) in common::shard("diffusion_pytorch_model.safetensors", &bytes, n) {
        if !name.ends_with(".json") {
            names.push(name.clone());
        }
        std::fs::write(dir.join("unet").join(&name), body).unwrap();
    }
    names
}

fn image(dir: &Path) -> Result<Vec<f32>, String> {
    let sd = StableDiffusion::load_dir(dir, &Device::flex()).map_err(|e| e.to_string())?;
    let sd = std::sync::Arc::new(sd);
    let o = GenerateOptions {
        prompt: "a red heart".into(),
        steps: 2,
        ..Default::default()
    };
    let mut run = sd.start(&o, None, None).map_err(|e| e.to_string())?;
    while run.step().map_err(|e| e.to_string())? {}
    Ok(run.decode().to_data().try_to_vec().unwrap())
}

#[test]
fn a_sharded_unet_loads_like_the_single_file() {
    let whole = image(&root().join("tests/fixtures/pipelines/tiny")).unwrap();
    let dir = copy_tiny("ok");
    assert_eq!(shard_unet(&dir, 3).len(), 3);
    assert_eq!(image(&dir).unwrap(), whole);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_index_or_shard_is_a_clear_error() {
    let index = "unet/diffusion_pytorch_model.safetensors.index.json";
    type Edit<'a> = &'a dyn Fn(&Path, &[String]);
    let cases: [(&str, Edit, &str); 4] = [
        (
            "a shard missing from the folder",
            &|d, names| std::fs::remove_file(d.join("unet").join(&names[1])).unwrap(),
            "00002-of-00002.safetensors is missing from the model folder",
        ),
        (
            "a key the index puts in the other shard",
            &|d, names| {
                let p = d.join(index);
                let mut v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                let map = v["weight_map"].as_object_mut().unwrap();
                let (k, _) = map.iter().find(|(_, s)| **s == names[0]).unwrap();
                let k = k.clone();
                map.insert(k, names[1].clone().into());
                std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
            },
            "puts in",
        ),
        (
            "a shard outside the index's folder",
            &|d, _| {
                std::fs::write(
                    d.join(index),
                    r#"{"weight_map": {"conv_in.weight": "../x.safetensors"}}"#,
                )
                .unwrap()
            },
            "is not a .safetensors file name in the index's folder",
        ),
        (
            "an index that is not JSON",
            &|d, _| std::fs::write(d.join(index), "{").unwrap(),
            "not valid JSON",
        ),
    ];
    for (what, edit, needle) in cases {
        let dir = copy_tiny("bad");
        let names = shard_unet(&dir, 2);
        edit(&dir, &names);
        let e = image(&dir).expect_err(what);
        assert!(e.contains(needle), "{what}: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
