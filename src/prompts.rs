//! What a model's prompts can say: `prompts.json`, an optional file at the
//! root of a model folder (ours ships one, made by
//! `tools/train/make_prompts.py` from the metadata its training used).
//!
//! - `examples`: prompts to offer as a start;
//! - `names`: what the model was trained to draw, for autocomplete;
//! - `words`: every word of its training prompts: a prompt with none of them
//!   is one the model cannot follow, and the page says so;
//! - `alike`: words it was never trained on → the trained word its text
//!   encoder reads them as (the same embedding row:
//!   `tools/train/word_neighbours.py` gives an unseen word the row of its
//!   nearest trained word by meaning), so the page can say that "shark" is
//!   read as "dolphin";
//! - `emoji`: emoji character → name, so "🐱" is read as "cat face" before it
//!   is tokenized (CLIP's vocabulary has no useful tokens for most emoji, and
//!   the model never saw them).
//!
//! diffusers has no such file and ignores it: the prompt a folder without it
//! sees is the one typed, and with it every prompt without emoji is too.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::models::clip::ClipTokenizer;
use crate::{Error, Result};

/// The file's path inside a model folder.
pub const PROMPTS_FILE: &str = "prompts.json";

// Bounds on what the file may hold (ours: 12 examples, 2445 names, 2081
// words, 27460 alike, 3786 emoji), so a hostile file cannot make us allocate
// without end.
const MAX_EXAMPLES: usize = 256;
const MAX_ENTRIES: usize = 100_000;
const MAX_ENTRY_CHARS: usize = 200;
/// The longest emoji sequence in Unicode 16 is 10 code points (a family with
/// skin tones, U+FE0F removed); keys past this are refused.
const MAX_EMOJI_CHARS: usize = 16;

/// The variation selector that asks for an emoji presentation: dropped from
/// keys and prompts alike, so "❤" and "❤️" read the same.
const VS16: char = '\u{FE0F}';

#[derive(Debug, Clone, Default)]
pub struct PromptVocabulary {
    pub examples: Vec<String>,
    pub names: Vec<String>,
    words: HashSet<String>,
    alike: HashMap<String, String>,
    emoji: HashMap<String, String>,
    /// Code points in the longest `emoji` key.
    longest: usize,
}

/// What a model will read of a prompt (see [`PromptVocabulary::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptCheck {
    /// The prompt as the text encoder reads it (emoji replaced by names).
    pub text: String,
    /// Tokens in `text`, without the start and end tokens.
    pub tokens: usize,
    /// The most tokens the text encoder reads; the rest is cut off.
    pub max_tokens: usize,
    /// Words of `text` that are not in the model's training prompts and not
    /// read as one that is; empty when the folder says nothing about its words.
    pub unknown_words: Vec<String>,
    /// Words of `text` the model was not trained on but reads as one it was
    /// (`alike`): (word, the word it is read as).
    pub read_as: Vec<(String, String)>,
    /// Whether at least one word is in the model's training prompts (always
    /// true when the folder says nothing about its words).
    pub has_known_word: bool,
}

impl PromptCheck {
    pub fn truncated(&self) -> bool {
        self.tokens > self.max_tokens
    }

    /// Sentences for the user, or none when the prompt is read as typed.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.truncated() {
            notes.push(format!(
                "the prompt is {} tokens long and the model reads only the first {} ({} with \
                 its start and end tokens): the rest is cut off",
                self.tokens,
                self.max_tokens,
                self.max_tokens + 2
            ));
        }
        if !self.read_as.is_empty() {
            let pairs: Vec<String> = self
                .read_as
                .iter()
                .take(8)
                .map(|(w, as_)| format!("\"{w}\" as \"{as_}\""))
                .collect();
            notes.push(format!(
                "words this model was never trained on are read as the nearest it was: {}{}",
                pairs.join(", "),
                if self.read_as.len() > 8 { ", …" } else { "" }
            ));
        }
        if !self.has_known_word {
            notes.push(
                "no word of the prompt is one this model was trained on, so expect an image \
                 unrelated to it: try one of the suggested names"
                    .into(),
            );
        }
        notes
    }
}

/// What [`PromptVocabulary::known`] finds of a text's words.
struct Known {
    unknown: Vec<String>,
    read_as: Vec<(String, String)>,
    any: bool,
}

impl Known {
    /// Nothing unknown: what a model that lists no words gets.
    fn everything() -> Self {
        Self {
            unknown: Vec::new(),
            read_as: Vec::new(),
            any: true,
        }
    }
}

/// The words of a text as the vocabulary lists them: lower-case letters and digits.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl PromptVocabulary {
    pub fn from_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            examples: Vec<String>,
            #[serde(default)]
            names: Vec<String>,
            #[serde(default)]
            words: Vec<String>,
            #[serde(default)]
            alike: HashMap<String, String>,
            #[serde(default)]
            emoji: HashMap<String, String>,
        }
        let f: File = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("{PROMPTS_FILE}: {e}")))?;
        let bad = |what: String| Err(Error::Config(format!("{PROMPTS_FILE}: {what}")));
        if f.examples.len() > MAX_EXAMPLES {
            return bad(format!(
                "{} examples, more than {MAX_EXAMPLES}",
                f.examples.len()
            ));
        }
        for (list, n) in [
            ("names", f.names.len()),
            ("words", f.words.len()),
            ("alike", f.alike.len()),
            ("emoji", f.emoji.len()),
        ] {
            if n > MAX_ENTRIES {
                return bad(format!("{n} {list}, more than {MAX_ENTRIES}"));
            }
        }
        let strings = f.examples.iter().chain(&f.names).chain(&f.words);
        if let Some(s) = strings
            .chain(f.alike.iter().flat_map(|(k, v)| [k, v]))
            .chain(f.emoji.values())
            .find(|s| s.chars().count() > MAX_ENTRY_CHARS)
        {
            return bad(format!(
                "an entry is longer than {MAX_ENTRY_CHARS} characters: {:?}…",
                s.chars().take(40).collect::<String>()
            ));
        }
        let mut emoji = HashMap::with_capacity(f.emoji.len());
        let mut longest = 0;
        for (key, name) in f.emoji {
            let key: String = key.chars().filter(|&c| c != VS16).collect();
            let n = key.chars().count();
            // An all-ASCII key would rewrite plain text ("5" in "5 cats").
            if n == 0 || n > MAX_EMOJI_CHARS || key.is_ascii() {
                return bad(format!(
                    "emoji key {key:?} is not an emoji sequence of 1 to {MAX_EMOJI_CHARS} symbols"
                ));
            }
            longest = longest.max(n);
            emoji.insert(key, name);
        }
        Ok(Self {
            examples: f.examples,
            names: f.names,
            words: f.words.iter().flat_map(|w| words(w)).collect(),
            alike: f.alike,
            emoji,
            longest,
        })
    }

    /// The prompt with every emoji the file knows replaced by its name (the
    /// longest sequence first, so a family is not read as its members).
    pub fn read(&self, prompt: &str) -> String {
        if self.emoji.is_empty() {
            return prompt.to_string();
        }
        let chars: Vec<char> = prompt.chars().filter(|&c| c != VS16).collect();
        let mut out = String::with_capacity(prompt.len());
        let mut i = 0;
        while i < chars.len() {
            let found = (1..=self.longest.min(chars.len() - i)).rev().find_map(|n| {
                let key: String = chars[i..i + n].iter().collect();
                self.emoji.get(&key).map(|name| (n, name))
            });
            match found {
                Some((n, name)) => {
                    // Names are separated from each other and from the text.
                    if !out.is_empty() && !out.ends_with([' ', ',']) {
                        out.push_str(", ");
                    }
                    out.push_str(name);
                    if chars.get(i + n).is_some_and(|c| !c.is_whitespace()) {
                        out.push_str(", ");
                    }
                    i += n;
                }
                None => {
                    out.push(chars[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// The prompt as a model with this vocabulary (or none) reads it.
    pub fn read_or_typed(vocabulary: Option<&Self>, prompt: &str) -> String {
        vocabulary.map_or_else(|| prompt.to_string(), |v| v.read(prompt))
    }

    /// Words of `text` (already [`Self::read`]) not in the training prompts
    /// and not read as one that is, those read as one (with it), and whether
    /// any word is in the training prompts. Without a word list, nothing is
    /// unknown.
    fn known(&self, text: &str) -> Known {
        let mut k = Known::everything();
        if self.words.is_empty() {
            return k;
        }
        k.any = text.trim().is_empty();
        for w in words(text) {
            if self.words.contains(&w) {
                k.any = true;
            } else if let Some(as_) = self.alike.get(&w) {
                if !k.read_as.iter().any(|(r, _)| *r == w) {
                    k.read_as.push((w, as_.clone()));
                }
            } else if !k.unknown.contains(&w) {
                k.unknown.push(w);
            }
        }
        k
    }

    /// What a model with this vocabulary (or none) and `tokenizer` will read
    /// of `prompt`.
    pub fn check(
        vocabulary: Option<&Self>,
        tokenizer: &ClipTokenizer,
        prompt: &str,
    ) -> PromptCheck {
        Self::check_with(
            vocabulary,
            prompt,
            |text| tokenizer.tokenize(text).len(),
            tokenizer.max_length - 2,
        )
    }

    /// [`Self::check`], given a count of tokens (`count(text)`) and the most
    /// tokens read.
    fn check_with(
        vocabulary: Option<&Self>,
        prompt: &str,
        count: impl Fn(&str) -> usize,
        max_tokens: usize,
    ) -> PromptCheck {
        let text = Self::read_or_typed(vocabulary, prompt);
        let k = vocabulary.map_or_else(Known::everything, |v| v.known(&text));
        PromptCheck {
            tokens: count(&text),
            max_tokens,
            text,
            unknown_words: k.unknown,
            read_as: k.read_as,
            has_known_word: k.any,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> PromptVocabulary {
        PromptVocabulary::from_json(
            r#"{"examples":["red heart"],"names":["cat face","red heart"],
                "words":["cat","face","red","heart","family"],
                "alike":{"kitty":"cat","lake":"sea"},
                "emoji":{"🐱":"cat face","❤️":"red heart","👨‍👩‍👧":"family: man, woman, girl","👨":"man"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn emoji_are_read_as_their_names() {
        let v = vocab();
        assert_eq!(v.read("🐱"), "cat face");
        // With or without the variation selector.
        assert_eq!(v.read("❤️"), "red heart");
        assert_eq!(v.read("❤"), "red heart");
        assert_eq!(v.read("🐱❤️"), "cat face, red heart");
        assert_eq!(v.read("a 🐱 and a ❤"), "a cat face and a red heart");
        assert_eq!(v.read("big🐱"), "big, cat face");
        // The longest sequence wins over its first member.
        assert_eq!(v.read("👨‍👩‍👧"), "family: man, woman, girl");
        assert_eq!(v.read("👨"), "man");
        // Unknown symbols and plain text stay as typed.
        assert_eq!(v.read("🦄 unicorn"), "🦄 unicorn");
        assert_eq!(v.read("Red Heart"), "Red Heart");
    }

    #[test]
    fn check_reports_unknown_words_and_truncation() {
        let v = vocab();
        let count = |t: &str| t.split_whitespace().count();
        let c = PromptVocabulary::check_with(Some(&v), "🐱", count, 75);
        assert_eq!(c.text, "cat face");
        assert!(c.has_known_word && c.unknown_words.is_empty() && !c.truncated());
        assert!(c.notes().is_empty());
        let c = PromptVocabulary::check_with(Some(&v), "a photo of a Mountain lake", count, 75);
        assert!(!c.has_known_word);
        assert_eq!(c.unknown_words, ["a", "photo", "of", "mountain"]);
        assert_eq!(c.read_as, [("lake".to_string(), "sea".to_string())]);
        let notes = c.notes();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].ends_with(r#"nearest it was: "lake" as "sea""#),
            "{notes:?}"
        );
        assert!(notes[1].starts_with("no word of the prompt"), "{notes:?}");
        // A word read as a trained one is not a trained word itself, and is
        // listed once.
        let c = PromptVocabulary::check_with(Some(&v), "kitty, Kitty", count, 75);
        assert!(!c.has_known_word && c.unknown_words.is_empty());
        assert_eq!(c.read_as, [("kitty".to_string(), "cat".to_string())]);
        let c = PromptVocabulary::check_with(Some(&v), "red kitty", count, 75);
        assert!(c.has_known_word && c.notes().len() == 1);
        let long = "red ".repeat(80);
        let c = PromptVocabulary::check_with(Some(&v), &long, count, 75);
        assert!(c.truncated() && c.has_known_word);
        assert!(c.notes()[0].contains("80 tokens"), "{:?}", c.notes());
        // No file: the prompt as typed, nothing unknown.
        let c = PromptVocabulary::check_with(None, "🐱 x", count, 75);
        assert_eq!((c.text.as_str(), c.has_known_word), ("🐱 x", true));
    }

    #[test]
    fn bad_files_are_errors() {
        for (json, want) in [
            ("{", "prompts.json"),
            (r#"{"emoji":{"abc":"x"}}"#, "not an emoji sequence"),
            (r#"{"emoji":{"":"x"}}"#, "not an emoji sequence"),
            (r#"{"emoji":{"5":"x"}}"#, "not an emoji sequence"),
            (r#"{"other":1}"#, "unknown field"),
            (r#"{"names":"x"}"#, "invalid type"),
        ] {
            let e = PromptVocabulary::from_json(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        let many = format!(
            r#"{{"examples":[{}]}}"#,
            vec!["\"x\""; MAX_EXAMPLES + 1].join(",")
        );
        let e = PromptVocabulary::from_json(&many).unwrap_err().to_string();
        assert!(e.contains("examples, more than"), "{e}");
        let long = format!(r#"{{"names":["{}"]}}"#, "x".repeat(MAX_ENTRY_CHARS + 1));
        let e = PromptVocabulary::from_json(&long).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
        let long = format!(
            r#"{{"alike":{{"x":"{}"}}}}"#,
            "y".repeat(MAX_ENTRY_CHARS + 1)
        );
        let e = PromptVocabulary::from_json(&long).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
    }

    #[test]
    fn the_shipped_file_reads() {
        let text = include_str!("../www/models/emoji-4step/prompts.json");
        let v = PromptVocabulary::from_json(text).unwrap();
        assert!(v.examples.iter().any(|e| e == "red heart"));
        assert!(v.names.iter().any(|n| n == "cat face"));
        assert_eq!(v.read("🐱"), "cat face");
        assert_eq!(v.read("🍕🚀"), "slice of pizza, rocket");
        // A keycap is an emoji; the digit alone is not.
        assert_eq!(v.read("5\u{fe0f}\u{20e3} 5"), "keycap 5 5");
        for e in &v.examples {
            assert!(v.known(e).any, "example {e:?} has no known word");
        }
        // Every word read as another is read as one the model was trained on.
        assert!(v.alike.len() > 20_000, "{} alike", v.alike.len());
        for (w, as_) in &v.alike {
            assert!(
                !v.words.contains(w) && v.words.contains(as_),
                "{w} -> {as_}"
            );
        }
        let k = v.known("a shark");
        assert!(k.any && k.unknown.is_empty() && k.read_as[0].0 == "shark");
    }
}
