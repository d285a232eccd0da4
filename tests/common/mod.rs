//! Shared by the parity tests: reading the f32 reference tensors that the
//! fixture scripts under tools/ write as safetensors; writing sharded
//! checkpoints. Each test crate uses some of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;

/// Every tensor of an f32 safetensors file as name → (shape, values).
pub fn f32_tensors(path: impl AsRef<Path>) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (k, (v.shape().to_vec(), vals))
        })
        .collect()
}

/// A safetensors file `name` split into `n` shards by key order, as diffusers
/// saves a large checkpoint: `(file name, bytes)` for each shard
/// (`<stem>-0000i-of-0000n.safetensors`) and for the index (`<name>.index.json`).
pub fn shard(name: &str, bytes: &[u8], n: usize) -> Vec<(String, Vec<u8>)> {
    let stem = name.trim_end_matches(".safetensors");
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let data = &bytes[8 + len..];
    let keys: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    let mut map = serde_json::Map::new();
    let mut out = Vec::new();
    for (i, chunk) in keys.chunks(keys.len().div_ceil(n)).enumerate() {
        let file = format!("{stem}-{:05}-of-{n:05}.safetensors", i + 1);
        let mut h = serde_json::Map::new();
        let mut body = Vec::new();
        for k in chunk {
            let t = &header[*k];
            let off = t["data_offsets"].as_array().unwrap();
            let (s, e) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            let start = body.len();
            body.extend_from_slice(&data[s..e]);
            let mut t = t.clone();
            t["data_offsets"] = serde_json::json!([start, body.len()]);
            h.insert((*k).clone(), t);
            map.insert((*k).clone(), file.clone().into());
        }
        let json = serde_json::to_vec(&h).unwrap();
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(&json);
        f.extend_from_slice(&body);
        out.push((file, f));
    }
    let index = serde_json::json!({ "metadata": { "total_size": bytes.len() }, "weight_map": map });
    out.push((
        format!("{name}.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    ));
    out
}
