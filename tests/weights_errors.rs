//! Bad weight files get a typed error naming the problem; good ones load the
//! same in any chunking, without the file ever being held whole.

use burn::tensor::Device;
use latent_diffusion_web::Error;
use latent_diffusion_web::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use latent_diffusion_web::weights::{WeightFile, WeightReader};

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
fn rewrite(edit: impl FnOnce(&mut Vec<Entry>)) -> Vec<u8> {
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

type Entry = (String, String, Vec<usize>, Vec<u8>);

/// The (name, dtype, shape, bytes) entry of `key` in a [`rewrite`] list.
fn entry<'a>(entries: &'a mut [Entry], key: &str) -> &'a mut Entry {
    entries.iter_mut().find(|(k, ..)| k == key).unwrap()
}

fn load(bytes: Vec<u8>) -> Result<AutoencoderTiny, Error> {
    let file = WeightFile::from_bytes(
        "vae/diffusion_pytorch_model.safetensors",
        &bytes,
        &Device::flex(),
    )?;
    file.build(|_| false, |vb| Ok(AutoencoderTiny::load(vb, &config())))
}

/// Streams `bytes` in chunks of `size` with no announced length.
fn stream(bytes: &[u8], size: usize) -> Result<(WeightFile, usize), Error> {
    let mut r = WeightReader::new("vae", &Device::flex(), None);
    for c in bytes.chunks(size) {
        r.push(c)?;
    }
    let peak = r.peak_buffered();
    Ok((r.finish()?, peak))
}

fn params(m: AutoencoderTiny) -> Vec<f32> {
    use burn::module::Module;
    let mut out = Vec::new();
    struct Collect<'a>(&'a mut Vec<f32>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::Tensor<D>>) {
            self.0
                .extend(p.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    m.visit(&mut Collect(&mut out));
    out
}

fn message(r: Result<AutoencoderTiny, Error>) -> String {
    let e = r.expect_err("expected an error");
    assert!(matches!(e, Error::Weights(_)), "{e:?}");
    e.to_string()
}

#[test]
fn any_chunking_loads_the_same_model_holding_at_most_one_tensor() {
    let bytes = good_bytes();
    let whole = params(load(bytes.clone()).unwrap());
    let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let (file, _) = stream(&bytes, bytes.len()).unwrap();
    let largest = file.header().largest(|_| false).unwrap().1 as usize * 4;
    for size in [1, 7, 4096] {
        let (file, peak) = stream(&bytes, size).unwrap();
        let model = file
            .build(|_| false, |vb| Ok(AutoencoderTiny::load(vb, &config())))
            .unwrap();
        assert_eq!(params(model), whole, "chunks of {size}");
        assert!(
            peak <= header_len.max(largest),
            "chunks of {size}: held {peak} bytes at once, more than the header ({header_len}) \
             or the largest tensor ({largest})"
        );
    }
}

#[test]
fn cut_off_stream_and_oversized_claims() {
    let bytes = good_bytes();
    // A stream that stops early, without a known length.
    let e = stream(&bytes[..bytes.len() - 100], 4096)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("truncated") && e.contains("download it again"),
        "{e}"
    );
    // Stopped inside the header.
    let e = stream(&bytes[..20], 4096).err().unwrap().to_string();
    assert!(e.contains("header is incomplete"), "{e}");
    // More bytes than the header describes.
    let mut long = bytes.clone();
    long.extend([0; 16]);
    let e = stream(&long, 4096).err().unwrap().to_string();
    assert!(
        e.contains("more bytes arrived than its header describes"),
        "{e}"
    );
    // A header length beyond any sane header, and one beyond the announced length.
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = stream(&huge, 4096).err().unwrap().to_string();
    assert!(e.contains("header claims 1099511627776 bytes"), "{e}");
    let mut r = WeightReader::new("vae", &Device::flex(), Some(64));
    let e = r.push(&bytes[..8]).unwrap_err().to_string();
    assert!(e.contains("of a 64-byte file"), "{e}");
    // A header whose tensors claim more data than the announced length: caught
    // from the header, before any tensor byte is taken.
    let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut r = WeightReader::new("vae", &Device::flex(), Some(bytes.len() as u64 - 2));
    let e = r.push(&bytes[..header_len]).unwrap_err().to_string();
    assert!(
        e.contains("describes") && e.contains("but the file has"),
        "{e}"
    );
}

#[test]
fn overlapping_or_inconsistent_ranges() {
    let bytes = rewrite(|e| {
        let t = entry(e, "encoder.layers.0.bias");
        t.2 = vec![1_000_000_000, 1_000_000_000];
    });
    let m = message(load(bytes));
    assert!(m.contains("does not fit its byte range"), "{m}");
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
    assert!(
        m.contains("is an HTML page") && m.contains("model folder URL"),
        "{m}"
    );
    let m = message(load(b"{\"error\": \"Entry not found\"}".to_vec()));
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
        let conv = entry(e, "encoder.layers.0.bias");
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
        let t = entry(e, "encoder.layers.0.bias");
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
        (r#"{"time_cond_proj_dim": 2}"#, "time_cond_proj_dim"),
        (r#"{"time_cond_proj_dim": 100000}"#, "time_cond_proj_dim"),
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
