//! Reading diffusers/transformers `*config.json` files into typed configs.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// Rejects a config value above `max`: nothing is ever sized from a number
/// that has not been bounded (a config claiming 10⁹ channels must not be
/// believed long enough to allocate anything).
pub fn at_most<'a>(
    file: &str,
    values: impl IntoIterator<Item = (&'a str, usize)>,
    max: usize,
) -> Result<()> {
    for (key, v) in values {
        if v > max {
            return Err(Error::config(format!(
                "{file}: {key} = {v} is beyond what any supported model uses (at most {max})"
            )));
        }
    }
    Ok(())
}

/// Parses `json` (the contents of `file`) into `T`. Unknown keys are ignored,
/// as diffusers does; a bad value is reported with its key, e.g.
/// `scheduler_config.json: beta_schedule = "cosine": unknown variant ...`.
pub fn parse_config<T: DeserializeOwned>(json: &str, file: &str) -> Result<T> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| Error::config(format!("{file} is not valid JSON: {e}")))?;
    T::deserialize(&value).map_err(|e| {
        // serde does not name the key it failed on; find it by trying each alone.
        let culprit = value.as_object().and_then(|map| {
            map.iter().find(|(k, v)| {
                let mut single = serde_json::Map::new();
                single.insert((*k).clone(), (*v).clone());
                T::deserialize(&Value::Object(single)).is_err()
            })
        });
        match culprit {
            Some((k, v)) => Error::config(format!("{file}: {k} = {v}: {e}")),
            None => Error::config(format!("{file}: {e}")),
        }
    })
}
