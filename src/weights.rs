//! safetensors → Burn modules, by the checkpoint's own key names, streamed.
//!
//! A weight file is never held whole. [`WeightReader`] takes it in chunks as
//! they arrive (a download, a Cache API body, a file read piece by piece):
//! the header first, checked on its own ([`Header`]), then each tensor, which
//! is converted to the compute dtype ([`WeightReader::with_dtype`]: f32, or
//! f16 where the device computes in f16) and put on the device as soon as its
//! last byte is in, its bytes then dropped. Peak host memory while loading is
//! the header plus one 8 MiB piece of the tensor being received (and its
//! conversion), whatever the file's size.
//!
//! A [`VarBuilder`] walks the result with a key prefix, the way the module
//! tree is nested (`down_blocks.0.resnets.1.conv1.weight`), and builds layers
//! from the stored tensors directly: nothing is randomly initialised. The same
//! walk runs against a [`Header`] alone ([`Header::check`]) to compare a config
//! with a file before any of its data is downloaded. Problems do not stop the
//! walk; they are collected and reported by name in one error, and a key that
//! is missing or misshapen gets a 1-element placeholder, so a config the file
//! contradicts never allocates anything of its own size. Models come only out
//! of [`WeightFile::build`], which returns the report's error instead of a
//! model with placeholders in it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, GroupNorm, LayerNorm, LayerNormConfig, PaddingConfig2d};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};

use crate::error::{Error, Result};
use crate::models::linear::Linear;

/// The most header bytes a file may declare (the safetensors crate's limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Tensors are converted and uploaded in pieces of this many bytes (a
/// multiple of every element size), so the host never holds a whole large
/// tensor: a GPU joins the pieces in its own memory.
const PIECE: usize = 8 << 20;

/// The most dimensions a stored tensor may have.
const MAX_RANK: usize = 8;

/// Element types a weight file may store; each is converted on load to the
/// reader's dtype (f32 or f16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(Self::F32),
            "F16" => Some(Self::F16),
            "BF16" => Some(Self::BF16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

/// One tensor's entry in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub start: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A parsed and checked safetensors header: every tensor's dtype, shape and
/// byte range, the ranges contiguous from 0 and consistent with the shapes,
/// the whole consistent with the file's length when that is known.
#[derive(Debug, Clone)]
pub struct Header {
    /// The file's name in messages, e.g. `unet/diffusion_pytorch_model.safetensors`.
    pub name: String,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// 8 + the JSON's length: where the data section starts.
    pub data_start: u64,
    /// The data section's length (the last tensor's end).
    pub data_len: u64,
}

impl Header {
    /// The file's total length as the header describes it.
    pub fn file_len(&self) -> u64 {
        self.data_start + self.data_len
    }

    /// Parses the header at the start of `prefix`: `Ok(None)` while more bytes
    /// are needed. `file_len` (e.g. a Content-Length), when known, must match
    /// what the header describes.
    pub fn parse(name: &str, prefix: &[u8], file_len: Option<u64>) -> Result<Option<Self>> {
        let bad = |why: String| {
            Error::Weights(format!(
                "{name} is not a valid safetensors file ({why}); it may be truncated or not a \
                 safetensors file at all: download it again"
            ))
        };
        if prefix.first() == Some(&b'<') {
            return Err(Error::Weights(format!(
                "{name} is an HTML page, not a safetensors file: is the model folder URL right?"
            )));
        }
        let Some(len8) = prefix.get(..8) else {
            if file_len.is_some_and(|l| l < 8) {
                return Err(bad(format!("{} bytes", file_len.unwrap_or(0))));
            }
            return Ok(None);
        };
        let n = u64::from_le_bytes(len8.try_into().expect("8 bytes"));
        if n > MAX_HEADER_BYTES || file_len.is_some_and(|l| n > l - 8) {
            return Err(bad(format!(
                "its header claims {n} bytes{}",
                file_len.map_or(String::new(), |l| format!(" of a {l}-byte file"))
            )));
        }
        let Some(json) = prefix.get(8..8 + n as usize) else {
            return Ok(None);
        };
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
            .map_err(|e| bad(format!("the header is not a JSON object: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (key, v) in map {
            if key == "__metadata__" {
                continue;
            }
            #[derive(serde::Deserialize)]
            struct Entry {
                dtype: String,
                shape: Vec<u64>,
                data_offsets: [u64; 2],
            }
            let e: Entry = serde_json::from_value(v)
                .map_err(|e| bad(format!("the entry of {key} is malformed: {e}")))?;
            let dtype = Dtype::parse(&e.dtype).ok_or_else(|| {
                Error::Weights(format!(
                    "{name}: {key} has dtype {}; only F32, F16 and BF16 are supported",
                    e.dtype
                ))
            })?;
            if e.shape.len() > MAX_RANK {
                return Err(bad(format!("{key} has {} dimensions", e.shape.len())));
            }
            let elements = e
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|n| n.checked_mul(dtype.size()));
            let [start, end] = e.data_offsets;
            if elements != end.checked_sub(start) {
                return Err(bad(format!(
                    "{key}: shape {:?} of {} does not fit its byte range {start}..{end}",
                    e.shape, e.dtype
                )));
            }
            let shape = e
                .shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad(format!("{key} is too large for this platform")))?;
            tensors.insert(
                key,
                TensorInfo {
                    dtype,
                    shape,
                    start,
                    end,
                },
            );
        }
        // The data section must be exactly the tensors, back to back.
        let mut ranges: Vec<(u64, u64, &str)> = tensors
            .iter()
            .map(|(k, t)| (t.start, t.end, k.as_str()))
            .collect();
        ranges.sort();
        let mut at = 0;
        for (start, end, key) in ranges {
            if start != at {
                return Err(bad(format!(
                    "{key} starts at byte {start} of the data, expected {at} (overlapping or \
                     missing data)"
                )));
            }
            at = end;
        }
        let header = Self {
            name: name.to_string(),
            tensors,
            data_start: 8 + n,
            data_len: at,
        };
        if let Some(l) = file_len
            && l != header.file_len()
        {
            return Err(bad(format!(
                "its header describes {} bytes but the file has {l}",
                header.file_len()
            )));
        }
        Ok(Some(header))
    }

    /// The error for a file that ended after `received` bytes, inside its header.
    pub fn incomplete(name: &str, received: u64) -> Error {
        Error::Weights(format!(
            "{name} ({received} bytes) is not a valid safetensors file (its header is \
             incomplete); it may be truncated or not a safetensors file at all: download it again"
        ))
    }

    /// The headers of a sharded checkpoint's files as one, named `name`: every
    /// key with its shape and dtype (byte ranges stay each shard's), and as
    /// length the shards' total. A key in two shards is an error.
    pub fn merge(name: &str, headers: &[Header]) -> Result<Header> {
        let mut tensors = BTreeMap::new();
        let mut total = 0u64;
        for h in headers {
            total = total.saturating_add(h.file_len());
            for (k, t) in &h.tensors {
                if tensors.insert(k.clone(), t.clone()).is_some() {
                    return Err(Error::Weights(format!(
                        "{name}: {k} is in more than one shard (again in {}); the checkpoint is \
                         inconsistent",
                        h.name
                    )));
                }
            }
        }
        Ok(Header {
            name: name.to_string(),
            tensors,
            data_start: 0,
            data_len: total,
        })
    }

    /// Reads just the header of a file on disk (in 1 MiB pieces).
    #[cfg(not(target_family = "wasm"))]
    pub fn read(path: &std::path::Path, name: &str) -> Result<Header> {
        use std::io::Read;
        let io = |e: std::io::Error| Error::Weights(format!("{}: {e}", path.display()));
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let mut prefix = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if let Some(h) = Header::parse(name, &prefix, Some(len))? {
                return Ok(h);
            }
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Err(Header::incomplete(name, prefix.len() as u64));
            }
            prefix.extend_from_slice(&buf[..n]);
        }
    }

    /// Number of stored elements.
    pub fn num_elements(&self) -> u64 {
        self.tensors.values().map(TensorInfo::elements).sum()
    }

    /// The largest tensor whose key `skip` does not accept, as (name, elements).
    pub fn largest(&self, skip: impl Fn(&str) -> bool) -> Option<(&str, u64)> {
        self.tensors
            .iter()
            .filter(|(k, _)| !skip(k))
            .map(|(k, t)| (k.as_str(), t.elements()))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
    }

    /// Runs a model's loader against this header alone: every key it asks for
    /// is compared by name and shape, nothing is read and nothing of the
    /// config's size is allocated. Fails like [`WeightFile::build`] would.
    pub fn check<T>(
        &self,
        ignore: impl Fn(&str) -> bool,
        build: impl FnOnce(&VarBuilder) -> Result<T>,
    ) -> Result<()> {
        // Placeholders only: they live on the CPU whatever the model's device.
        let store = Store::new(self.clone(), None, &Device::flex());
        // A config the loader rejects outright is the error to report.
        build(&store.root())?;
        store.report(ignore)
    }
}

/// The keys and shapes a model's loader asks for, in order, without any
/// file: the layout a checkpoint for that config must have (used to write
/// random-weight test folders of real model layouts).
pub fn plan<T>(build: impl FnOnce(&VarBuilder) -> Result<T>) -> Vec<(String, Vec<usize>)> {
    let header = Header {
        name: String::new(),
        tensors: BTreeMap::new(),
        data_start: 8,
        data_len: 0,
    };
    let store = Store::new(header, None, &Device::flex());
    let _ = build(&store.root());
    store.asked.take()
}

/// Takes a safetensors file chunk by chunk and puts each tensor on the device
/// as soon as it is complete. See the module docs.
pub struct WeightReader {
    name: String,
    device: Device,
    file_len: Option<u64>,
    /// Bytes of the header received so far (dropped once it is parsed).
    prefix: Vec<u8>,
    header: Option<Header>,
    /// Tensors in file order and the index of the one being received.
    order: Vec<(String, TensorInfo)>,
    next: usize,
    /// Bytes received in all.
    received: u64,
    /// Bytes of the tensor being received that are taken so far.
    taken: u64,
    /// Received bytes not yet converted (less than one piece), or all of a
    /// host tensor's bytes (kept as stored, no conversion).
    current: Vec<u8>,
    /// The tensor being received, converted piece by piece.
    pieces: Vec<Tensor<1>>,
    tensors: HashMap<String, Tensor<1>>,
    /// The most bytes this reader has held at once (header or one tensor).
    peak_buffered: usize,
    /// Tensors kept in host memory (Burn's CPU backend) instead of `device`.
    on_host: fn(&str) -> bool,
    /// The dtype device tensors get: F32 or F16.
    dtype: DType,
}

impl WeightReader {
    /// A reader for the file `name`; `file_len` is its length when known (a
    /// Content-Length), checked against the header as soon as that arrives.
    pub fn new(name: &str, device: &Device, file_len: Option<u64>) -> Self {
        Self {
            name: name.to_string(),
            device: device.clone(),
            file_len,
            prefix: Vec::new(),
            header: None,
            order: Vec::new(),
            next: 0,
            received: 0,
            taken: 0,
            current: Vec::new(),
            pieces: Vec::new(),
            tensors: HashMap::new(),
            peak_buffered: 0,
            on_host: |_| false,
            dtype: DType::F32,
        }
    }

    /// Stores the device tensors as `dtype`, F32 (the default) or F16: an f16
    /// file's bytes then go to the device as they are, and f32 or bf16 values
    /// are rounded to f16. Any other dtype is taken as F32.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = match dtype {
            DType::F16 => DType::F16,
            _ => DType::F32,
        };
        self
    }

    /// Keeps the tensors whose keys `on_host` accepts in host memory on Burn's
    /// CPU backend (e.g. a text encoder's token table, which is only ever
    /// gathered from and is often the one tensor over a GPU's binding limit).
    pub fn keep_on_host(mut self, on_host: fn(&str) -> bool) -> Self {
        self.on_host = on_host;
        self
    }

    /// The header, once its bytes are in.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// The most bytes of the file held at once so far: the header, or one
    /// piece of a tensor. Never the file, nor a whole large tensor.
    pub fn peak_buffered(&self) -> usize {
        self.peak_buffered
    }

    /// Feeds the next bytes of the file.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<()> {
        if let Some(l) = self.file_len
            && self.received + chunk.len() as u64 > l
        {
            return Err(Error::Weights(format!(
                "{}: more than the announced {l} bytes arrived",
                self.name
            )));
        }
        self.received += chunk.len() as u64;
        // Take only what the header needs: its length, then its JSON.
        while self.header.is_none() && !chunk.is_empty() {
            let want = if self.prefix.len() < 8 {
                8
            } else {
                let n = u64::from_le_bytes(self.prefix[..8].try_into().expect("8 bytes"));
                8 + n.min(MAX_HEADER_BYTES) as usize
            };
            let take = want.saturating_sub(self.prefix.len()).min(chunk.len());
            self.prefix.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            self.peak_buffered = self.peak_buffered.max(self.prefix.len());
            if let Some(h) = Header::parse(&self.name, &self.prefix, self.file_len)? {
                self.prefix = Vec::new();
                self.begin(h);
            }
        }
        while !chunk.is_empty() {
            let Some((_, info)) = self.order.get(self.next) else {
                return Err(Error::Weights(format!(
                    "{}: more bytes arrived than its header describes; the file is damaged",
                    self.name
                )));
            };
            let size = info.end - info.start;
            let take = (size - self.taken).min(chunk.len() as u64) as usize;
            let (mut data, rest) = chunk.split_at(take);
            chunk = rest;
            self.taken += take as u64;
            if (self.on_host)(&self.order[self.next].0) {
                // Host tensors keep their stored bytes: one buffer, no copy later.
                if self.current.is_empty() && self.file_len.is_some() {
                    self.current.reserve_exact(size as usize);
                }
                self.current.extend_from_slice(data);
                self.peak_buffered = self.peak_buffered.max(self.current.len());
                data = &[];
            }
            while !data.is_empty() {
                if self.current.is_empty() && data.len() >= PIECE {
                    // A whole piece in this chunk: converted without a copy.
                    self.convert_piece(&data[..PIECE]);
                    data = &data[PIECE..];
                    continue;
                }
                let n = (PIECE - self.current.len()).min(data.len());
                self.current.extend_from_slice(&data[..n]);
                data = &data[n..];
                self.peak_buffered = self.peak_buffered.max(self.current.len());
                if self.current.len() == PIECE {
                    let piece = std::mem::take(&mut self.current);
                    self.convert_piece(&piece);
                }
            }
            if self.taken == size {
                self.complete_tensor();
                self.complete_empty();
            }
        }
        Ok(())
    }

    /// The header is in: tensors are expected in file order from here on.
    fn begin(&mut self, header: Header) {
        let mut order: Vec<_> = header.tensors.clone().into_iter().collect();
        order.sort_by_key(|(_, t)| t.start);
        self.order = order;
        self.header = Some(header);
        self.complete_empty();
    }

    /// A reader for a file whose header was already read and checked (e.g. to
    /// choose the device): push the bytes after the header next.
    pub fn after_header(header: Header, device: &Device, file_len: Option<u64>) -> Self {
        let mut r = Self::new(&header.name, device, file_len);
        r.received = header.data_start;
        r.begin(header);
        r
    }

    /// Converts one piece of the current tensor to the reader's dtype and
    /// puts it on the device.
    fn convert_piece(&mut self, raw: &[u8]) {
        let info = &self.order[self.next].1;
        if self.dtype == DType::F16 {
            let bytes = match info.dtype {
                Dtype::F16 => raw.to_vec(),
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .flat_map(|b| {
                        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        half::f16::from_f32(v).to_le_bytes()
                    })
                    .collect(),
                Dtype::BF16 => raw
                    .chunks_exact(2)
                    .flat_map(|b| {
                        let v = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                        half::f16::from_f32(v).to_le_bytes()
                    })
                    .collect(),
            };
            let n = bytes.len() / 2;
            let data = TensorData::from_bytes_vec(bytes, [n], DType::F16);
            let options = TensorCreationOptions::new(self.device.clone()).with_dtype(DType::F16);
            self.pieces.push(Tensor::from_data(data, options));
            return;
        }
        let data = match info.dtype {
            Dtype::F32 => TensorData::new(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect::<Vec<_>>(),
                [raw.len() / 4],
            ),
            Dtype::F16 => TensorData::new(
                raw.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect::<Vec<_>>(),
                [raw.len() / 2],
            ),
            Dtype::BF16 => TensorData::new(
                raw.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect::<Vec<_>>(),
                [raw.len() / 2],
            ),
        };
        self.pieces.push(Tensor::from_data(data, &self.device));
    }

    /// The current tensor's last byte is in: joins its pieces and moves on.
    fn complete_tensor(&mut self) {
        let (key, info) = &self.order[self.next];
        if (self.on_host)(key) {
            // The stored bytes become the tensor as they are (f16 stays f16).
            let dtype = match info.dtype {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
            };
            let raw = std::mem::take(&mut self.current);
            let n = info.elements() as usize;
            let data = TensorData::from_bytes_vec(raw, [n], dtype);
            let options = TensorCreationOptions::new(Device::flex()).with_dtype(dtype);
            self.tensors
                .insert(key.clone(), Tensor::from_data(data, options));
            self.next += 1;
            self.taken = 0;
            return;
        }
        if !self.current.is_empty() {
            let piece = std::mem::take(&mut self.current);
            self.convert_piece(&piece);
        }
        let (key, info) = &self.order[self.next];
        let t = match self.pieces.len() {
            0 => Tensor::from_data(
                TensorData::from_bytes_vec(Vec::new(), [0], self.dtype),
                TensorCreationOptions::new(self.device.clone()).with_dtype(self.dtype),
            ),
            1 => self.pieces.pop().expect("one piece"),
            // Joined where the tensor lives (on a GPU: device memory).
            _ => Tensor::cat(std::mem::take(&mut self.pieces), 0),
        };
        debug_assert_eq!(t.dims()[0] as u64, info.elements());
        self.tensors.insert(key.clone(), t);
        self.next += 1;
        self.taken = 0;
    }

    /// Tensors with no elements are complete without bytes.
    fn complete_empty(&mut self) {
        while let Some((_, info)) = self.order.get(self.next) {
            if info.end > info.start {
                break;
            }
            self.complete_tensor();
        }
    }

    /// Ends the file: every tensor must have arrived.
    pub fn finish(self) -> Result<WeightFile> {
        let name = &self.name;
        let Some(header) = self.header else {
            return Err(Header::incomplete(name, self.received));
        };
        if self.next < self.order.len() {
            return Err(Error::Weights(format!(
                "{name} is truncated: {} of {} bytes arrived; download it again",
                self.received,
                header.file_len()
            )));
        }
        Ok(WeightFile {
            header,
            tensors: self.tensors,
            device: self.device,
        })
    }
}

/// A weight file whose tensors are all on the device, waiting to be built
/// into a model with [`WeightFile::build`].
pub struct WeightFile {
    header: Header,
    tensors: HashMap<String, Tensor<1>>,
    device: Device,
}

impl WeightFile {
    /// Reads a file held in memory (a convenience over [`WeightReader`]).
    pub fn from_bytes(name: &str, bytes: &[u8], device: &Device) -> Result<Self> {
        let mut r = WeightReader::new(name, device, Some(bytes.len() as u64));
        r.push(bytes)?;
        r.finish()
    }

    /// Reads a file from disk in 8 MiB pieces; the file is never in memory
    /// whole. Device tensors are stored as `dtype` (see [`WeightReader::with_dtype`]).
    #[cfg(not(target_family = "wasm"))]
    pub fn read(
        path: &std::path::Path,
        name: &str,
        device: &Device,
        on_host: fn(&str) -> bool,
        dtype: DType,
    ) -> Result<Self> {
        use std::io::Read;
        let io = |e: std::io::Error| Error::Weights(format!("{}: {e}", path.display()));
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let mut r = WeightReader::new(name, device, Some(len))
            .keep_on_host(on_host)
            .with_dtype(dtype);
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            r.push(&buf[..n])?;
        }
        r.finish()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// A sharded checkpoint's files as one file named `name` (see
    /// [`Header::merge`]).
    pub fn merge(name: &str, files: Vec<WeightFile>) -> Result<Self> {
        let headers: Vec<Header> = files.iter().map(|f| f.header.clone()).collect();
        let header = Header::merge(name, &headers)?;
        let mut device = None;
        let mut tensors = HashMap::new();
        for f in files {
            device.get_or_insert(f.device);
            tensors.extend(f.tensors);
        }
        Ok(Self {
            header,
            tensors,
            device: device.ok_or_else(|| Error::Weights(format!("{name}: no shards")))?,
        })
    }

    /// Builds a model from the file: `build` walks the keys with a
    /// [`VarBuilder`]; any key missing, misshapen or (unless `ignore` says so)
    /// left unused is an error naming them all. The tensors not used are freed.
    pub fn build<T>(
        self,
        ignore: impl Fn(&str) -> bool,
        build: impl FnOnce(&VarBuilder) -> Result<T>,
    ) -> Result<T> {
        let store = Store::new(self.header, Some(self.tensors), &self.device);
        let built = build(&store.root())?;
        store.report(ignore)?;
        Ok(built)
    }
}

/// What a [`VarBuilder`] reads from: a header alone (a check) or a whole file.
struct Store {
    header: Header,
    tensors: Option<RefCell<HashMap<String, Tensor<1>>>>,
    device: Device,
    used: RefCell<BTreeSet<String>>,
    missing: RefCell<Vec<String>>,
    mismatched: RefCell<Vec<String>>,
    /// Every key asked for, with its shape, in order.
    asked: RefCell<Vec<(String, Vec<usize>)>>,
}

impl Store {
    fn new(
        header: Header,
        tensors: Option<HashMap<String, Tensor<1>>>,
        device: &Device,
    ) -> Rc<Self> {
        Rc::new(Self {
            header,
            tensors: tensors.map(RefCell::new),
            device: device.clone(),
            used: RefCell::default(),
            missing: RefCell::default(),
            mismatched: RefCell::default(),
            asked: RefCell::default(),
        })
    }

    fn root(self: &Rc<Self>) -> VarBuilder {
        VarBuilder {
            store: Rc::clone(self),
            prefix: String::new(),
        }
    }

    /// Every problem of the walk, by name, as one error.
    fn report(&self, ignore: impl Fn(&str) -> bool) -> Result<()> {
        if let Some(t) = &self.tensors {
            t.borrow_mut().clear();
        }
        let used = self.used.borrow();
        let unexpected: Vec<String> = self
            .header
            .tensors
            .keys()
            .filter(|k| !used.contains(*k) && !ignore(k))
            .cloned()
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
            self.header.name,
            list("missing keys", &missing),
            list("shape mismatches", &mismatched),
            list("unexpected keys", &unexpected),
        )))
    }

    fn load<const D: usize>(&self, key: &str, shape: [usize; D]) -> Tensor<D> {
        // A stand-in that is never used: the walk's report fails the build.
        let placeholder = || Tensor::zeros([1; D], &self.device);
        self.asked
            .borrow_mut()
            .push((key.to_string(), shape.to_vec()));
        let Some(info) = self.header.tensors.get(key) else {
            self.missing.borrow_mut().push(key.to_string());
            return placeholder();
        };
        if !self.used.borrow_mut().insert(key.to_string()) {
            self.mismatched
                .borrow_mut()
                .push(format!("{key} is used twice"));
            return placeholder();
        }
        if info.shape != shape {
            self.mismatched
                .borrow_mut()
                .push(format!("{key} is {:?}, expected {shape:?}", info.shape));
            return placeholder();
        }
        match &self.tensors {
            None => placeholder(),
            Some(t) => match t.borrow_mut().remove(key) {
                Some(t) => t.reshape(shape),
                None => {
                    self.missing
                        .borrow_mut()
                        .push(format!("{key} (not loaded)"));
                    placeholder()
                }
            },
        }
    }
}

/// A position in the key tree: `vb.pp("down_blocks").pp(0).pp("resnets")`.
#[derive(Clone)]
pub struct VarBuilder {
    store: Rc<Store>,
    prefix: String,
}

impl VarBuilder {
    /// The builder for the child `name` (a field name or a list index).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self {
            store: Rc::clone(&self.store),
            prefix: self.key(&name.to_string()),
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
        self.store.header.tensors.contains_key(&self.key(name))
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.store.device
    }

    /// The tensor `name` under this prefix, which must have `shape`.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Tensor<D> {
        self.store.load(&self.key(name), shape)
    }

    fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Param<Tensor<D>> {
        Param::from_tensor(self.tensor(name, shape))
    }
}
/// `nn.Linear(d_in, d_out, bias)`, its weight `[d_out, d_in]` as stored.
pub fn linear(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Linear {
    Linear {
        weight: vb.param("weight", [d_out, d_in]),
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
    // Built at size 1 (epsilon is private to Burn), then given the stored weights.
    let mut ln = LayerNormConfig::new(1).with_epsilon(eps).init(vb.device());
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

/// Bytes the float parameters of `module` take where they are stored, in
/// their own dtypes (f16 weights count 2 bytes each).
pub fn parameter_bytes<M: burn::module::Module>(module: &M) -> u64 {
    struct Sum(u64);
    impl burn::module::ModuleVisitor for Sum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            self.0 += (t.shape().num_elements() * t.dtype().size()) as u64;
        }
    }
    let mut sum = Sum(0);
    module.visit(&mut sum);
    sum.0
}
