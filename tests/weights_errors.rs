//! Bad weight files get a typed error naming the problem; good ones leave
//! nothing behind but the model's tensors.

use burn::tensor::Device;
use latent_diffusion_web::Error;
use latent_diffusion_web::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use latent_diffusion_web::weights::WeightFile;

fn fixture(f: &str) -> String {
    format!(
        "{}/tests/fixtures/models/vae_tiny/{f}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn config() -> AutoencoderTinyConfig {
    AutoencoderTinyConfig::from_json(&std::fs::read_to_string(fixture("config.json")).unwrap())
        .unwrap()
}

fn good_bytes() -> Vec<u8> {
    std::fs::read(fixture("diffusion_pytorch_model.safetensors")).unwrap()
}

/// Rebuilds a safetensors file with `edit` applied to its (name, dtype, shape, bytes) list.
fn rewrite(edit: impl FnOnce(&mut Vec<(String, String, Vec<usize>, Vec<u8>)>)) -> Vec<u8> {
    let bytes = good_bytes();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut entries: Vec<_> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let off: Vec<usize> = serde_json::from_value(v["data_offsets"].clone()).unwrap();
            let data = bytes[8 + n + off[0]..8 + n + off[1]].to_vec();
            (
                k.clone(),
                v["dtype"].as_str().unwrap().to_string(),
                serde_json::from_value(v["shape"].clone()).unwrap(),
                data,
            )
        })
        .collect();
    edit(&mut entries);
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (k, dtype, shape, d) in entries {
        header.insert(k, serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + d.len()]}));
        data.extend(d);
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn load(bytes: Vec<u8>) -> Result<AutoencoderTiny, Error> {
    let file = WeightFile::from_bytes(
        "vae/diffusion_pytorch_model.safetensors",
        bytes,
        &Device::flex(),
    )?;
    let model = AutoencoderTiny::load(&file.root(), &config());
    file.finish(|_| false)?;
    Ok(model)
}

fn message(r: Result<AutoencoderTiny, Error>) -> String {
    let e = r.expect_err("expected an error");
    assert!(matches!(e, Error::Weights(_)), "{e:?}");
    e.to_string()
}

#[test]
fn good_file_loads_and_frees_its_bytes() {
    let file = WeightFile::from_bytes("vae", good_bytes(), &Device::flex()).unwrap();
    assert!(file.resident_bytes() > 0);
    let _model = AutoencoderTiny::load(&file.root(), &config());
    file.finish(|_| false).unwrap();
    assert_eq!(
        file.resident_bytes(),
        0,
        "the file's bytes must not outlive loading"
    );
}

#[test]
fn truncated_file() {
    let mut b = good_bytes();
    b.truncate(b.len() - 100);
    let m = message(load(b));
    assert!(
        m.contains("vae/diffusion_pytorch_model.safetensors") && m.contains("truncated"),
        "{m}"
    );
}

#[test]
fn not_a_safetensors_file() {
    let m = message(load(b"<!doctype html><html>404 Not Found</html>".to_vec()));
    assert!(m.contains("not a valid safetensors file"), "{m}");
    let m = message(load(Vec::new()));
    assert!(m.contains("0 bytes"), "{m}");
}

#[test]
fn missing_unexpected_and_misshapen_keys_are_all_named() {
    let bytes = rewrite(|e| {
        e.retain(|(k, ..)| k != "decoder.layers.0.weight");
        e.push((
            "decoder.extra.weight".into(),
            "F32".into(),
            vec![1],
            vec![0; 4],
        ));
        let conv = e
            .iter_mut()
            .find(|(k, ..)| k == "encoder.layers.0.bias")
            .unwrap();
        conv.2 = vec![8, 2];
    });
    let m = message(load(bytes));
    assert!(m.contains("1 missing keys: decoder.layers.0.weight"), "{m}");
    assert!(m.contains("1 unexpected keys: decoder.extra.weight"), "{m}");
    assert!(
        m.contains("encoder.layers.0.bias is [8, 2], expected [16]"),
        "{m}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let bytes = rewrite(|e| {
        let t = e
            .iter_mut()
            .find(|(k, ..)| k == "encoder.layers.0.bias")
            .unwrap();
        t.1 = "I16".into();
    });
    let m = message(load(bytes));
    assert!(m.contains("encoder.layers.0.bias has dtype I16"), "{m}");
}

#[test]
fn config_errors_name_the_field() {
    let e = AutoencoderTinyConfig::from_json(r#"{"act_fn": "gelu"}"#).unwrap_err();
    assert!(
        e.to_string().contains("act_fn") && e.to_string().contains("gelu"),
        "{e}"
    );
    use latent_diffusion_web::models::unet_2d_condition::UNet2DConditionConfig;
    for (json, needle) in [
        (
            r#"{"down_block_types": ["SimpleCrossAttnDownBlock2D"]}"#,
            "SimpleCrossAttnDownBlock2D",
        ),
        (r#"{"class_embed_type": "timestep"}"#, "class_embed_type"),
        (r#"{"time_cond_proj_dim": 256}"#, "time_cond_proj_dim"),
        (
            r#"{"block_out_channels": [32, 48, 64, 64]}"#,
            "norm_num_groups",
        ),
        (r#"{"layers_per_block": [1, 2]}"#, "layers_per_block"),
        (r#"{"attention_head_dim": 7}"#, "heads"),
    ] {
        let e = UNet2DConditionConfig::from_json(json).unwrap_err();
        assert!(e.to_string().contains(needle), "{json}: {e}");
    }
}
