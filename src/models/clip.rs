//! `CLIPTextModel` (transformers `models/clip/modeling_clip.py`) and the CLIP
//! byte-level BPE tokenizer (`tokenization_clip.py`), reading a diffusers
//! `text_encoder/` and `tokenizer/` folder.

use std::collections::HashMap;

use super::linear::Linear;
use crate::models::activations::{gelu, quick_gelu};
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use super::attention::scaled_dot_product;
use super::to_dtype;
use super::unicode_tables;
use crate::config::parse_config;
use crate::error::{Error, Result};
use crate::weights::{VarBuilder, embedding, layer_norm, linear};

/// `text_encoder/config.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CLIPTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for CLIPTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl CLIPTextConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let c: Self = parse_config(json, "text_encoder/config.json")?;
        let f = "text_encoder/config.json";
        crate::config::at_most(
            f,
            [
                ("hidden_size", c.hidden_size),
                ("num_attention_heads", c.num_attention_heads),
            ],
            8192,
        )?;
        crate::config::at_most(f, [("intermediate_size", c.intermediate_size)], 32768)?;
        crate::config::at_most(f, [("num_hidden_layers", c.num_hidden_layers)], 128)?;
        crate::config::at_most(
            f,
            [("max_position_embeddings", c.max_position_embeddings)],
            4096,
        )?;
        crate::config::at_most(f, [("vocab_size", c.vocab_size)], 1 << 20)?;
        if c.hidden_act != "quick_gelu" && c.hidden_act != "gelu" {
            return Err(Error::Config(format!(
                "text_encoder/config.json: hidden_act = {:?} is not supported: use quick_gelu or gelu",
                c.hidden_act
            )));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(Error::Config(format!(
                "text_encoder/config.json: hidden_size = {} is not divisible into num_attention_heads = {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        Ok(c)
    }
}

/// Pre-norm transformer layer: causal self-attention and an MLP.
#[derive(burn::module::Module, Debug)]
pub struct CLIPEncoderLayer {
    pub layer_norm1: LayerNorm,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// The CLIP text transformer; `forward` returns `last_hidden_state`, the
/// conditioning Stable Diffusion's UNet cross-attends to.
#[derive(burn::module::Module, Debug)]
pub struct CLIPTextModel {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
    pub layers: Vec<CLIPEncoderLayer>,
    pub final_layer_norm: LayerNorm,
    heads: usize,
    quick_gelu: bool,
}

impl CLIPTextModel {
    /// Loads from the file root. transformers 4 checkpoints prefix every key
    /// with `text_model.`; transformers 5 saves without it. Both are accepted.
    pub fn load(root: &VarBuilder, c: &CLIPTextConfig) -> Self {
        let vb = if root.contains("text_model.embeddings.token_embedding.weight") {
            root.pp("text_model")
        } else {
            root.clone()
        };
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let emb = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vb.pp("encoder").pp("layers").pp(i);
                let attn = l.pp("self_attn");
                let mlp = l.pp("mlp");
                CLIPEncoderLayer {
                    layer_norm1: layer_norm(&l.pp("layer_norm1"), h, eps),
                    q_proj: linear(&attn.pp("q_proj"), h, h, true),
                    k_proj: linear(&attn.pp("k_proj"), h, h, true),
                    v_proj: linear(&attn.pp("v_proj"), h, h, true),
                    out_proj: linear(&attn.pp("out_proj"), h, h, true),
                    layer_norm2: layer_norm(&l.pp("layer_norm2"), h, eps),
                    fc1: linear(&mlp.pp("fc1"), h, c.intermediate_size, true),
                    fc2: linear(&mlp.pp("fc2"), c.intermediate_size, h, true),
                }
            })
            .collect();
        Self {
            token_embedding: embedding(&emb.pp("token_embedding"), c.vocab_size, h),
            position_embedding: embedding(
                &emb.pp("position_embedding"),
                c.max_position_embeddings,
                h,
            ),
            layers,
            final_layer_norm: layer_norm(&vb.pp("final_layer_norm"), h, eps),
            heads: c.num_attention_heads,
            quick_gelu: c.hidden_act == "quick_gelu",
        }
    }

    /// The token table stays in host memory (see `WeightReader::keep_on_host`):
    /// only 77 of its rows are read per prompt, and at 49408 × 1024 it is the
    /// largest tensor of SD 2.x models, over many GPUs' binding limit.
    pub fn host_key(key: &str) -> bool {
        key.ends_with("token_embedding.weight")
    }

    /// Keys a checkpoint may carry that hold no weights (a position-id buffer).
    pub fn ignorable_key(key: &str) -> bool {
        key.ends_with("position_ids")
    }

    /// Where the token table is, and so where `forward`'s ids must be.
    pub fn token_device(&self) -> Device {
        self.token_embedding.weight.device()
    }

    /// `input_ids`: `[B, L]` token ids on [`Self::token_device`], L ≤
    /// max_position_embeddings. The result is on the other weights' device.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let device = self.position_embedding.weight.device();
        let l = input_ids.dims()[1];
        let pos = Tensor::<1, Int>::arange(0..l as i64, &device).reshape([1, l]);
        let tokens = self.token_embedding.forward(input_ids);
        // A host-side table (f16 when stored so): move the gathered rows as
        // f32 (a sync read of CPU data), then in the weights' dtype.
        let dtype = self.position_embedding.weight.val().dtype();
        let tokens = if tokens.device() == device {
            tokens
        } else {
            Tensor::from_data(tokens.into_data().convert::<f32>(), &device)
        };
        let mut x = to_dtype(tokens, dtype) + self.position_embedding.forward(pos);
        let mask = causal_mask(l, &device);
        for layer in &self.layers {
            let h = layer.layer_norm1.forward(x.clone());
            let a = scaled_dot_product(
                layer.q_proj.forward(h.clone()),
                layer.k_proj.forward(h.clone()),
                layer.v_proj.forward(h),
                self.heads,
                Some(mask.clone()),
            );
            x = x + layer.out_proj.forward(a);
            let h = layer.fc1.forward(layer.layer_norm2.forward(x.clone()));
            let h = if self.quick_gelu {
                quick_gelu(h)
            } else {
                gelu(h)
            };
            x = x + layer.fc2.forward(h);
        }
        to_dtype(self.final_layer_norm.forward(x), DType::F32)
    }
}

/// `[1, 1, L, L]` with the smallest f32 above the diagonal (transformers'
/// `torch.finfo(dtype).min`), 0 elsewhere.
fn causal_mask(l: usize, device: &Device) -> Tensor<4> {
    let v: Vec<f32> = (0..l * l)
        .map(|i| if i % l > i / l { f32::MIN } else { 0.0 })
        .collect();
    Tensor::from_data(TensorData::new(v, [1, 1, l, l]), device)
}

/// The CLIP byte-level BPE tokenizer, behaving like transformers'
/// `CLIPTokenizer`: NFC, whitespace runs to one space, lowercase; split into
/// letters, single digits and punctuation runs; byte-level symbols; BPE with
/// `</w>` ending each word; `<|startoftext|>` … `<|endoftext|>`, padded.
#[derive(Debug)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_symbols: Vec<char>,
    bos: u32,
    eos: u32,
    pad: u32,
    /// Tokens per sequence, `<|startoftext|>` and `<|endoftext|>` included.
    pub max_length: usize,
}

impl ClipTokenizer {
    const BOS: &'static str = "<|startoftext|>";
    const EOS: &'static str = "<|endoftext|>";

    /// From `tokenizer/vocab.json`, `tokenizer/merges.txt` and, optionally,
    /// `tokenizer/tokenizer_config.json` (for `model_max_length`, `pad_token`).
    pub fn new(
        vocab_json: &str,
        merges_txt: &str,
        tokenizer_config_json: Option<&str>,
    ) -> Result<Self> {
        let vocab: HashMap<String, u32> = serde_json::from_str(vocab_json).map_err(|e| {
            Error::Config(format!("tokenizer/vocab.json is not a token → id map: {e}"))
        })?;
        let mut ranks = HashMap::new();
        for (i, line) in merges_txt
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.is_empty())
            .enumerate()
        {
            let bad = || {
                Error::Config(format!(
                    "tokenizer/merges.txt line {}: {line:?} is not two symbols",
                    i + 1
                ))
            };
            let (a, b) = line.split_once(' ').ok_or_else(bad)?;
            if a.is_empty() || b.is_empty() || b.contains(' ') {
                return Err(bad());
            }
            ranks.entry((a.to_string(), b.to_string())).or_insert(i);
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct TokConfig {
            model_max_length: Option<usize>,
            pad_token: Option<serde_json::Value>,
        }
        let cfg: TokConfig = match tokenizer_config_json {
            Some(j) => parse_config(j, "tokenizer/tokenizer_config.json")?,
            None => TokConfig::default(),
        };
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| Error::Config(format!("tokenizer/vocab.json has no {t:?} token")))
        };
        let pad_name = match &cfg.pad_token {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or(Self::EOS)
                .to_string(),
            _ => Self::EOS.to_string(),
        };
        let max_length = cfg
            .model_max_length
            .filter(|&m| (2..=4096).contains(&m))
            .unwrap_or(77);
        Ok(Self {
            bos: id(Self::BOS)?,
            eos: id(Self::EOS)?,
            pad: id(&pad_name)?,
            vocab,
            ranks,
            byte_symbols: bytes_to_unicode(),
            max_length,
        })
    }

    /// The highest id in the vocabulary (checked against the text encoder's `vocab_size`).
    pub fn max_id(&self) -> Option<u32> {
        self.vocab.values().max().copied()
    }

    /// Token ids without specials or padding.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let normalized: String = text.nfc().collect::<String>();
        let normalized = normalized
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let mut ids = Vec::new();
        for word in pre_tokenize(&normalized) {
            if let Some(&id) = (word == Self::BOS || word == Self::EOS).then(|| &self.vocab[word]) {
                ids.push(id);
                continue;
            }
            let symbols: String = word
                .bytes()
                .map(|b| self.byte_symbols[b as usize])
                .collect();
            for piece in self.bpe(&symbols) {
                ids.push(self.vocab.get(&piece).copied().unwrap_or(self.eos));
            }
        }
        ids
    }

    /// `[bos, tokens…, eos, pad…]` of exactly `max_length`, truncating long prompts.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos];
        ids.extend(self.tokenize(text).into_iter().take(self.max_length - 2));
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }

    fn bpe(&self, word: &str) -> Vec<String> {
        let chars: Vec<char> = word.chars().collect();
        let mut parts: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|r| (*r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let (a, b) = (parts[i].clone(), parts[i + 1].clone());
            // Merge every occurrence of the pair, left to right.
            let mut merged = Vec::with_capacity(parts.len());
            let mut j = 0;
            while j < parts.len() {
                if j + 1 < parts.len() && parts[j] == a && parts[j + 1] == b {
                    merged.push(format!("{a}{b}"));
                    j += 2;
                } else {
                    merged.push(parts[j].clone());
                    j += 1;
                }
            }
            parts = merged;
        }
        parts
    }
}

/// The words of `text` as transformers' CLIP pattern finds them,
/// `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`,
/// scanned by hand: the same alternatives tried in the same order at each
/// position, whitespace between matches skipped. (A regex engine would bring
/// every Unicode property table into the wasm: 0.28 MB of its gzip size.)
fn pre_tokenize(text: &str) -> impl Iterator<Item = &str> {
    const FIXED: [&str; 9] = [
        ClipTokenizer::BOS,
        ClipTokenizer::EOS,
        "'s",
        "'t",
        "'re",
        "'ve",
        "'m",
        "'ll",
        "'d",
    ];
    let letter = |c: char| in_table(unicode_tables::LETTER, c);
    let number = |c: char| in_table(unicode_tables::NUMBER, c);
    let mut rest = text;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(char::is_whitespace);
        let first = rest.chars().next()?;
        let len = if let Some(f) = FIXED.iter().find(|f| rest.starts_with(**f)) {
            f.len()
        } else if letter(first) {
            rest.find(|c| !letter(c)).unwrap_or(rest.len())
        } else if number(first) {
            first.len_utf8()
        } else {
            rest.find(|c: char| c.is_whitespace() || letter(c) || number(c))
                .unwrap_or(rest.len())
        };
        let (word, tail) = rest.split_at(len);
        rest = tail;
        Some(word)
    })
}

/// Whether `c` lies in one of `table`'s sorted, disjoint inclusive ranges.
fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    let i = table.partition_point(|&(_, hi)| hi < c);
    table.get(i).is_some_and(|&(lo, _)| lo <= c)
}

/// GPT-2's reversible byte → printable character table.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = vec!['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid")
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_syntax::hir::{Class, HirKind};

    /// The ranges of a Unicode class as regex-syntax reads it.
    fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
        let hir = regex_syntax::Parser::new().parse(pattern).unwrap();
        let HirKind::Class(Class::Unicode(class)) = hir.kind() else {
            panic!("{pattern} is not a Unicode class")
        };
        class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect()
    }

    /// `unicode_tables.rs` is exactly what this writes from regex-syntax's
    /// `\p{L}` and `\p{N}` (the classes the regex crate matched before).
    /// To regenerate it: `UNICODE_TABLES=src/models/unicode_tables.rs cargo
    /// test --lib unicode_tables`.
    #[test]
    fn unicode_tables_are_regex_syntax_classes() {
        let mut text = String::from(
            "//! `\\p{L}` and `\\p{N}` as inclusive code point ranges, for the CLIP\n\
             //! pre-tokenizer. Generated from regex-syntax's Unicode tables by the\n\
             //! test `models::clip::tests::unicode_tables_are_regex_syntax_classes`.\n",
        );
        for (name, pattern) in [("LETTER", r"\p{L}"), ("NUMBER", r"\p{N}")] {
            text += &format!("\n#[rustfmt::skip]\npub const {name}: &[(u32, u32)] = &[\n");
            for line in class_ranges(pattern).chunks(6) {
                let pairs: Vec<String> = line
                    .iter()
                    .map(|(a, b)| format!("(0x{a:05X}, 0x{b:05X})"))
                    .collect();
                text += &format!("    {},\n", pairs.join(", "));
            }
            text += "];\n";
        }
        if let Ok(path) = std::env::var("UNICODE_TABLES") {
            std::fs::write(path, &text).unwrap();
        }
        assert!(
            text == include_str!("unicode_tables.rs"),
            "unicode_tables.rs is stale; see this test's comment"
        );
    }

    /// The scanner finds the same words as the regex it replaces, on text
    /// built from every kind of character the alternatives distinguish.
    #[test]
    fn pre_tokenize_matches_the_regex() {
        let pattern = regex::Regex::new(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .unwrap();
        // Letters (cased, titlecase, modifier, other, one outside the BMP),
        // numbers (digits, letter-like, fractions, and U+11DE0: a number to
        // Rust's Unicode 17 `char::is_numeric`, not to regex-syntax's 16), a
        // combining mark, a circled letter (alphabetic, not a letter),
        // spaces, the contractions' letters, punctuation, emoji, joiners.
        let chars = "azéß日ǅʰ\u{1e900}\u{16f0}1٣Ⅻ½\u{11de0}\u{301}ⓐ \t\u{3000}\u{85}'strevmld!🍕\u{200d}\u{fe0f}_";
        let pieces: Vec<String> = chars
            .chars()
            .map(String::from)
            .chain(["<|startoftext|>", "<|endoftext|>", "<|", "|>"].map(String::from))
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..20_000 {
            let mut text = String::new();
            for _ in 0..case % 24 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text += &pieces[(state % pieces.len() as u64) as usize];
            }
            let want: Vec<&str> = pattern.find_iter(&text).map(|m| m.as_str()).collect();
            let got: Vec<&str> = pre_tokenize(&text).collect();
            assert_eq!(got, want, "{text:?}");
        }
    }
}
