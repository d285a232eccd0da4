//! Shared by the parity tests: reading the f32 reference tensors that the
//! fixture scripts under tools/ write as safetensors.

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
