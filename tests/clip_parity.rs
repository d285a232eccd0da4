//! CLIP tokenizer ids against transformers' `CLIPTokenizer`, and
//! `CLIPTextModel` against transformers with random tiny weights
//! (fixtures from `tools/make_clip_tokenizer.py` and `tools/make_clip_fixtures.py`).
//! Text model tolerance: max abs difference ≤ 1e-4.

use burn::tensor::{DType, Device, DeviceKind, Int, Tensor, TensorData};
use latent_diffusion_web::models::clip::{CLIPTextConfig, CLIPTextModel, ClipTokenizer};
use latent_diffusion_web::weights::WeightFile;
mod common;

fn fixture(path: &str) -> String {
    format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn tokenizer() -> ClipTokenizer {
    let read = |f: &str| std::fs::read_to_string(fixture(&format!("clip_tokenizer/{f}"))).unwrap();
    ClipTokenizer::new(
        &read("vocab.json"),
        &read("merges.txt"),
        Some(&read("tokenizer_config.json")),
    )
    .unwrap()
}

#[test]
fn tokenizer_matches_transformers() {
    let tok = tokenizer();
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("clip_tokenizer/expected.json")).unwrap(),
    )
    .unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(prompt), want, "prompt {prompt:?}");
    }
}

#[test]
fn tokenizer_rejects_broken_files() {
    assert!(
        ClipTokenizer::new("not json", "", None)
            .unwrap_err()
            .to_string()
            .contains("vocab.json")
    );
    let e = ClipTokenizer::new(r#"{"a": 0}"#, "#version: 0.2\na b\n", None).unwrap_err();
    assert!(e.to_string().contains("<|startoftext|>"), "{e}");
    let e = ClipTokenizer::new(r#"{"a": 0}"#, "#version: 0.2\nab\n", None).unwrap_err();
    assert!(e.to_string().contains("merges.txt line 1"), "{e}");
}

fn text_model(name: &str, device: &Device) {
    text_model_as(name, device, DType::F32, 1e-4);
}

/// The text model with its weights as `dtype`, its output within `tol` of
/// transformers' f32 output (and, in f16, of its own f16 output).
fn text_model_as(name: &str, device: &Device, dtype: DType, tol: f32) {
    let dir = fixture(&format!("models/{name}"));
    let config =
        CLIPTextConfig::from_json(&std::fs::read_to_string(format!("{dir}/config.json")).unwrap())
            .unwrap();
    let path = format!("{dir}/model.safetensors");
    let file = WeightFile::read(
        path.as_ref(),
        "model.safetensors",
        device,
        CLIPTextModel::host_key,
        dtype,
    )
    .unwrap();
    let model = file
        .build(CLIPTextModel::ignorable_key, |vb| {
            Ok(CLIPTextModel::load(vb, &config))
        })
        .unwrap();

    let io = common::f32_tensors(format!("{dir}/io.safetensors"));
    let f32s = |k: &str| -> Vec<f32> { io[k].1.clone() };
    let ids: Vec<i64> = f32s("input_ids").iter().map(|x| *x as i64).collect();
    let want = f32s("last_hidden_state");
    // On wgpu the token table stays on the host (CLIPTextModel::host_key).
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 16]), &model.token_device());
    let got = model.forward(ids).to_data().try_to_vec::<f32>().unwrap();
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("{name} {dtype:?}: max abs diff {max:e}");
    assert!(max <= tol, "{name} {dtype:?}: max abs diff {max:e}");
    if dtype == DType::F16 {
        let half = common::f32_tensors(format!("{dir}/io_f16.safetensors"));
        let to_half = (got.iter().zip(&half["last_hidden_state"].1))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{name} f16: max abs diff {to_half:e} to transformers' f16");
        assert!(
            to_half <= tol,
            "{name} f16: {to_half:e} from transformers' f16"
        );
    }
}

/// f16 weights and compute; transformers' own f16 output differs from its
/// f32 one by 2.3e-3 and 4.6e-3 here (outputs of scale 3).
#[test]
fn f16_text_models_match_transformers() {
    for name in ["clip_text_quick_gelu", "clip_text_gelu"] {
        text_model_as(name, &Device::flex(), DType::F16, 1.5e-2);
    }
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    text_model_as("clip_text_gelu", &gpu, DType::F16, 1.5e-2);
}

#[test]
fn text_model_quick_gelu_matches_transformers() {
    text_model("clip_text_quick_gelu", &Device::flex());
}

#[test]
fn text_model_gelu_matches_transformers() {
    text_model("clip_text_gelu", &Device::flex());
}

#[test]
fn wgpu_text_model_matches_transformers() {
    text_model(
        "clip_text_quick_gelu",
        &Device::wgpu(DeviceKind::DefaultDevice),
    );
}
