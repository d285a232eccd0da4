//! safetensors bytes → Burn modules, by the checkpoint's own key names.
//!
//! [`WeightFile`] parses and validates a file held in memory (the browser has
//! no filesystem). A [`VarBuilder`] walks it with a key prefix, the way the
//! module tree is nested (`down_blocks.0.resnets.1.conv1.weight`), and builds
//! layers from the stored tensors directly: nothing is randomly initialised.
//! Problems do not stop the walk; they are collected so that
//! [`WeightFile::finish`] can report every missing key, unexpected key and
//! shape mismatch by name in one error. f32, f16 and bf16 are accepted and
//! converted to f32 as each tensor is uploaded; `finish` drops the bytes, so
//! no second copy of the weights outlives loading.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, GroupNorm, LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata};

use crate::error::{Error, Result};

/// A parsed safetensors file and the bookkeeping of one load.
pub struct WeightFile {
    name: String,
    bytes: RefCell<Vec<u8>>,
    data_start: usize,
    metadata: Metadata,
    device: Device,
    used: RefCell<BTreeSet<String>>,
    missing: RefCell<Vec<String>>,
    mismatched: RefCell<Vec<String>>,
}

impl WeightFile {
    /// Parses `bytes` (named `name` in messages, e.g. `unet/diffusion_pytorch_model.safetensors`).
    /// A truncated, padded or non-safetensors buffer is an error here.
    pub fn from_bytes(name: &str, bytes: Vec<u8>, device: &Device) -> Result<Rc<Self>> {
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            Error::Weights(format!(
                "{name} ({} bytes) is not a valid safetensors file ({e:?}); it may be truncated \
                 or not a safetensors file at all: download it again",
                bytes.len()
            ))
        })?;
        Ok(Rc::new(Self {
            name: name.to_string(),
            bytes: RefCell::new(bytes),
            data_start: 8 + header_len,
            metadata,
            device: device.clone(),
            used: RefCell::default(),
            missing: RefCell::default(),
            mismatched: RefCell::default(),
        }))
    }

    /// The root of the key tree.
    pub fn root(self: &Rc<Self>) -> VarBuilder {
        VarBuilder {
            file: Rc::clone(self),
            prefix: String::new(),
        }
    }

    /// Every tensor name in the file.
    pub fn keys(&self) -> BTreeSet<String> {
        self.metadata.tensors().into_keys().collect()
    }

    /// Number of f32 values stored in the file, for checking that a model's
    /// parameter count matches its checkpoint.
    pub fn num_elements(&self) -> usize {
        self.metadata
            .tensors()
            .values()
            .map(|i| i.shape.iter().product::<usize>())
            .sum()
    }

    /// Bytes of the file still held (0 after [`Self::finish`]).
    pub fn resident_bytes(&self) -> usize {
        self.bytes.borrow().len()
    }

    /// Ends the load and frees the file's bytes: the weights now live only in
    /// the model's tensors. Fails, naming them, if any key was missing, had
    /// the wrong shape or dtype, or was never used (keys for which `ignore`
    /// returns true may stay unused, e.g. non-persistent buffers).
    pub fn finish(&self, ignore: impl Fn(&str) -> bool) -> Result<()> {
        *self.bytes.borrow_mut() = Vec::new();
        let used = self.used.borrow();
        let unexpected: Vec<String> = self
            .keys()
            .into_iter()
            .filter(|k| !used.contains(k) && !ignore(k))
            .collect();
        let missing = self.missing.borrow();
        let mismatched = self.mismatched.borrow();
        if missing.is_empty() && mismatched.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let list = |what: &str, v: &[String]| {
            if v.is_empty() {
                return String::new();
            }
            let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
            let more = if v.len() > 8 {
                format!(" and {} more", v.len() - 8)
            } else {
                String::new()
            };
            format!("; {} {what}: {}{more}", v.len(), shown.join(", "))
        };
        Err(Error::Weights(format!(
            "{} does not match the model config{}{}{}",
            self.name,
            list("missing keys", &missing),
            list("shape mismatches", &mismatched),
            list("unexpected keys", &unexpected),
        )))
    }

    fn load<const D: usize>(&self, key: &str, shape: [usize; D]) -> Tensor<D> {
        let placeholder = || Tensor::zeros(shape, &self.device);
        let Some(info) = self.metadata.info(key) else {
            self.missing.borrow_mut().push(key.to_string());
            return placeholder();
        };
        self.used.borrow_mut().insert(key.to_string());
        if info.shape != shape {
            self.mismatched
                .borrow_mut()
                .push(format!("{key} is {:?}, expected {shape:?}", info.shape));
            return placeholder();
        }
        let (start, end) = info.data_offsets;
        let bytes = self.bytes.borrow();
        let Some(raw) = bytes.get(self.data_start + start..self.data_start + end) else {
            self.missing
                .borrow_mut()
                .push(format!("{key} (loaded after finish)"));
            return placeholder();
        };
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                self.mismatched.borrow_mut().push(format!(
                    "{key} has dtype {other:?}; only F32, F16 and BF16 are supported"
                ));
                return placeholder();
            }
        };
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }
}

/// A position in the key tree: `vb.pp("down_blocks").pp(0).pp("resnets")`.
#[derive(Clone)]
pub struct VarBuilder {
    file: Rc<WeightFile>,
    prefix: String,
}

impl VarBuilder {
    /// The builder for the child `name` (a field name or a list index).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            file: Rc::clone(&self.file),
            prefix,
        }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether `name` exists under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.file.metadata.info(&self.key(name)).is_some()
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.file.device
    }

    /// The tensor `name` under this prefix, which must have `shape`.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Tensor<D> {
        self.file.load(&self.key(name), shape)
    }

    fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Param<Tensor<D>> {
        Param::from_tensor(self.tensor(name, shape))
    }
}

/// `nn.Linear(d_in, d_out, bias)`: PyTorch stores `[out, in]`, Burn `[in, out]`.
pub fn linear(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Linear {
    let w = vb.tensor("weight", [d_out, d_in]).transpose();
    Linear {
        weight: Param::from_tensor(w),
        bias: bias.then(|| vb.param("bias", [d_out])),
    }
}

/// `nn.Conv2d(c_in, c_out, k, stride, padding)` with a bias.
pub fn conv2d(
    vb: &VarBuilder,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Conv2d {
    conv2d_padded(vb, c_in, c_out, kernel, stride, [padding; 4], true)
}

/// `nn.Conv2d` with explicit (top, left, bottom, right) padding and optional bias.
pub fn conv2d_padded(
    vb: &VarBuilder,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    [top, left, bottom, right]: [usize; 4],
    bias: bool,
) -> Conv2d {
    Conv2d {
        weight: vb.param("weight", [c_out, c_in, kernel, kernel]),
        bias: bias.then(|| vb.param("bias", [c_out])),
        stride: [stride, stride],
        kernel_size: [kernel, kernel],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(top, left, bottom, right),
    }
}

/// `nn.GroupNorm(groups, channels, eps, affine=True)`.
pub fn group_norm(vb: &VarBuilder, groups: usize, channels: usize, eps: f64) -> GroupNorm {
    GroupNorm {
        gamma: Some(vb.param("weight", [channels])),
        beta: Some(vb.param("bias", [channels])),
        num_groups: groups,
        num_channels: channels,
        epsilon: eps,
        affine: true,
    }
}

/// `nn.LayerNorm(dim, eps)` with weight and bias.
pub fn layer_norm(vb: &VarBuilder, dim: usize, eps: f64) -> LayerNorm {
    let mut ln = LayerNormConfig::new(dim)
        .with_epsilon(eps)
        .init(vb.device());
    ln.gamma = vb.param("weight", [dim]);
    ln.beta = Some(vb.param("bias", [dim]));
    ln
}

/// `nn.Embedding(n, dim)`.
pub fn embedding(vb: &VarBuilder, n: usize, dim: usize) -> Embedding {
    Embedding {
        weight: vb.param("weight", [n, dim]),
    }
}
