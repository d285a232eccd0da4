//! The networks, one file per diffusers/transformers concept, with fields
//! named after the checkpoint keys they load from.

pub mod activations;
pub mod attention;
pub mod autoencoder_kl;
pub mod autoencoder_tiny;
pub mod clip;
pub mod conv;
pub mod embeddings;
pub mod flex_host;
pub mod linear;
pub mod normalization;
pub mod resnet;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
mod unicode_tables;

use burn::tensor::{DType, Tensor};
use serde::Deserialize;

/// `x` as `dtype`: a model casts its inputs to the dtype its weights are
/// stored in (f32, or f16 where the device computes in f16) and its outputs
/// back to f32, so schedulers and images always see f32.
pub fn to_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// A config value that diffusers accepts either once or per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone + std::fmt::Debug> OneOrMany<T> {
    /// One value per block, or an error naming `field` when a list has the wrong length.
    pub fn per_block(&self, field: &str, n: usize) -> crate::Result<Vec<T>> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); n]),
            Self::Many(v) if v.len() == n => Ok(v.clone()),
            Self::Many(v) => Err(crate::Error::Config(format!(
                "{field} = {v:?} has {} entries but there are {n} blocks",
                v.len()
            ))),
        }
    }
}
