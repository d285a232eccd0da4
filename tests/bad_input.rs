//! The bad-input corpus (tests/fixtures/bad_input/corpus.json) through the
//! native path the CLI uses: a folder on disk loaded with
//! `StableDiffusion::load_dir`, options checked by `OptionsInput`, a run
//! started from RGBA bytes, the stage sums and the image checked. Every case
//! must end in an error whose message holds the case's fragment (or succeed
//! where it says `ok`), never a panic; after each, a good run must work.
//! The browser runs the same corpus (tests/browser/bad_input.test.mjs).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;
use latent_diffusion_web::image::{rgba_len, tensor_values_to_rgba};
use latent_diffusion_web::pipeline::{OptionsInput, StableDiffusion};
use serde_json::{Map, Value};
mod common;

/// The CPU path's per-buffer limit in the browser, so a size refused there is
/// refused here too (natively the limit is larger).
const BUFFER_LIMIT: u64 = 256 << 20;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The tiny folder's files, symlinks read through.
fn good_files() -> BTreeMap<String, Vec<u8>> {
    let dir = root().join("tests/fixtures/pipelines/tiny");
    let mut files = BTreeMap::new();
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let p = e.unwrap().path();
            let name = format!("{sub}/{}", p.file_name().unwrap().to_str().unwrap());
            files.insert(name, std::fs::read(&p).unwrap());
        }
    }
    let index = "model_index.json";
    files.insert(index.into(), std::fs::read(dir.join(index)).unwrap());
    files
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Applies a corpus edit to `file` (see the corpus's "about").
fn edit(files: &mut BTreeMap<String, Vec<u8>>, file: &str, edit: &Map<String, Value>) {
    let (op, arg) = edit.iter().next().expect("one edit per case");
    let old = files.get(file).cloned().unwrap_or_default();
    let new = match op.as_str() {
        "delete" => {
            files.remove(file);
            return;
        }
        "rename" => {
            files.remove(file);
            files.insert(arg.as_str().unwrap().to_string(), old);
            return;
        }
        "shard" => {
            // The file becomes `n` shards and an index beside it.
            files.remove(file);
            let (folder, name) = file.rsplit_once('/').unwrap();
            for (f, bytes) in common::shard(name, &old, arg.as_u64().unwrap() as usize) {
                files.insert(format!("{folder}/{f}"), bytes);
            }
            return;
        }
        "text" => arg.as_str().unwrap().as_bytes().to_vec(),
        "hex" => hex(arg.as_str().unwrap()),
        "copy_from" => files[arg.as_str().unwrap()].clone(),
        "truncate" => {
            let n = arg.as_i64().unwrap();
            let keep = if n < 0 {
                old.len() - (-n) as usize
            } else {
                n as usize
            };
            old[..keep].to_vec()
        }
        "patch" => {
            let (at, bytes) = (
                arg["at"].as_u64().unwrap() as usize,
                hex(arg["hex"].as_str().unwrap()),
            );
            let mut b = old;
            b[at..at + bytes.len()].copy_from_slice(&bytes);
            b
        }
        "set" => {
            let mut v: Value = serde_json::from_slice(&old).unwrap_or(Value::Object(Map::new()));
            for (k, x) in arg.as_object().unwrap() {
                v[k] = x.clone();
            }
            serde_json::to_vec(&v).unwrap()
        }
        "nested" => {
            let n = arg.as_u64().unwrap() as usize;
            format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()
        }
        "pad" => {
            let mut b = old;
            b.resize(arg.as_u64().unwrap() as usize, b' ');
            b
        }
        "header_replace" => {
            let [from, to] = [0, 1].map(|i| arg[i].as_str().unwrap().as_bytes().to_vec());
            assert_eq!(from.len(), to.len(), "header_replace keeps the length");
            let n = u64::from_le_bytes(old[..8].try_into().unwrap()) as usize;
            let mut b = old;
            let at = b[8..8 + n]
                .windows(from.len())
                .position(|w| w == from)
                .unwrap()
                + 8;
            b[at..at + to.len()].copy_from_slice(&to);
            b
        }
        "nan" => {
            let key = arg.as_str().unwrap();
            let n = u64::from_le_bytes(old[..8].try_into().unwrap()) as usize;
            let header: Value = serde_json::from_slice(&old[8..8 + n]).unwrap();
            let t = &header[key];
            let [a, z] = [0, 1].map(|i| t["data_offsets"][i].as_u64().unwrap() as usize + 8 + n);
            let nan: &[u8] = match t["dtype"].as_str().unwrap() {
                "F16" => &[0x00, 0x7e],
                "F32" => &[0x00, 0x00, 0xc0, 0x7f],
                d => panic!("nan edit of {d}"),
            };
            let mut b = old;
            for c in b[a..z].chunks_exact_mut(nan.len()) {
                c.copy_from_slice(nan);
            }
            b
        }
        other => panic!("unknown edit {other}"),
    };
    files.insert(file.to_string(), new);
}

fn write_folder(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    let _ = std::fs::remove_dir_all(dir);
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// RGBA bytes for an "image"/"mask" entry: "fit" (the run's size) or a length.
fn bytes(spec: &Value, w: usize, h: usize) -> Option<Vec<u8>> {
    match spec {
        Value::Null => None,
        Value::String(s) if s == "fit" => Some(vec![200; rgba_len(w, h).unwrap()]),
        Value::Number(n) => Some(vec![200; n.as_u64().unwrap() as usize]),
        other => panic!("bad image spec {other}"),
    }
}

/// A whole run the way the CLI makes one; the error's message if any.
fn run(dir: &Path, case: &Value, base: &Value) -> Result<(), String> {
    let e = |e: latent_diffusion_web::Error| e.to_string();
    let sd = Arc::new(StableDiffusion::load_dir(dir, &Device::flex()).map_err(e)?);
    sd.set_max_buffer_bytes(BUFFER_LIMIT);
    let mut options = base.clone();
    for (k, v) in case["options"].as_object().into_iter().flatten() {
        options[k] = v.clone();
    }
    if let Some(n) = case["repeat_prompt"].as_u64() {
        options["prompt"] = Value::String(options["prompt"].as_str().unwrap().repeat(n as usize));
    }
    let input: OptionsInput = serde_json::from_value(options).map_err(|e| e.to_string())?;
    let o = input.check().map_err(e)?;
    let (h, w) = o.size(&sd);
    let (image, mask) = (bytes(&case["image"], w, h), bytes(&case["mask"], w, h));
    let mut run = sd
        .start_rgba(&o, image.as_deref(), mask.as_deref())
        .map_err(e)?;
    while run.step().map_err(e)? {}
    run.check_finite().map_err(e)?;
    let image = run.finish();
    let [_, _, h, w] = image.dims();
    let values = image.into_data().try_to_vec::<f32>().unwrap();
    tensor_values_to_rgba(&values, w, h).map_err(e)?;
    Ok(())
}

#[test]
fn every_case_is_a_clear_error_and_the_next_run_works() {
    let corpus: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/bad_input/corpus.json")).unwrap(),
    )
    .unwrap();
    let base = &corpus["base_options"];
    let good = good_files();
    let tmp = std::env::temp_dir().join(format!("ldw-bad-input-{}", std::process::id()));
    let good_dir = tmp.join("good");
    write_folder(&good_dir, &good);
    // Panics are counted, not printed: the summary names them.
    std::panic::set_hook(Box::new(|_| {}));
    let (mut clear, mut ok, mut wrong) = (0, 0, Vec::new());
    let cases = corpus["cases"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let edits = match &case["edits"] {
            Value::Array(list) => list.clone(),
            _ if case["file"].is_string() => vec![case.clone()],
            _ => vec![],
        };
        let dir = if edits.is_empty() {
            good_dir.clone()
        } else {
            let mut files = good.clone();
            for e in &edits {
                edit(
                    &mut files,
                    e["file"].as_str().unwrap(),
                    e["edit"].as_object().unwrap(),
                );
            }
            let d = tmp.join("case");
            write_folder(&d, &files);
            d
        };
        let got = catch_unwind(AssertUnwindSafe(|| run(&dir, case, base)));
        match (got, case["error"].as_str()) {
            (Ok(Err(msg)), Some(want)) if msg.to_lowercase().contains(&want.to_lowercase()) => {
                println!("ok   {name}: {msg}");
                clear += 1;
            }
            (Ok(Ok(())), None) => {
                println!("ok   {name}: ran");
                ok += 1;
            }
            (Ok(got), want) => wrong.push(format!("{name}: got {got:?}, wanted {want:?}")),
            (Err(p), _) => wrong.push(format!(
                "{name}: PANIC {:?}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or(p.downcast_ref::<&str>().copied())
            )),
        }
        // The same process goes on working.
        let after = catch_unwind(AssertUnwindSafe(|| run(&good_dir, &Value::Null, base)));
        if !matches!(after, Ok(Ok(()))) {
            wrong.push(format!("{name}: the good run after it failed: {after:?}"));
        }
    }
    let _ = std::panic::take_hook();
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "{} cases: {clear} clear errors, {ok} good runs, {} wrong or panicked",
        cases.len(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The names the page's key check accepts are the ones serde reads.
#[test]
fn option_names_match_the_deserializer() {
    for name in OptionsInput::FIELDS {
        let v: Value = serde_json::from_str(&format!(r#"{{"{name}": null}}"#)).unwrap();
        serde_json::from_value::<OptionsInput>(v).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(serde_json::from_str::<OptionsInput>(r#"{"stpes": 1}"#).is_err());
}

/// Prints the largest sizes the shipped and tiny models accept under the
/// browser's limits (for the README), and checks they shrink with the limit.
#[test]
fn largest_sizes_follow_the_buffer_limit() {
    for dir in ["www/models/emoji-4step", "tests/fixtures/pipelines/tiny"] {
        let sd = StableDiffusion::load_dir(&root().join(dir), &Device::flex()).unwrap();
        let mut last = usize::MAX;
        for mib in [1024u64, 256, 128, 16] {
            sd.set_max_buffer_bytes(mib << 20);
            let side = sd.max_side(true);
            println!("{dir}: {mib} MiB per buffer → {side}×{side} (guided)");
            assert!(side <= last && side.is_multiple_of(sd.vae_scale_factor));
            let (need, _) = sd.largest_activation(side, side, true);
            assert!(need <= mib << 20);
            last = side;
        }
    }
}
