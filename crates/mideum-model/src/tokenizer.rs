//! The model's tokenizer: Hugging Face `tokenizer.json` loaded with the `tokenizers` crate, or
//! the same tokenizer rebuilt from the `tokenizer.ggml.*` metadata of a GGUF file, so both
//! forms of a checkpoint produce identical ids.

use crate::error::{read_json, ModelError, Result};
use crate::gguf::GgufFile;
use serde_json::{json, Value};
use std::path::Path;

/// The Llama 3 pre-tokenizer split pattern (used by Mi:dm 2.0).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    /// The `tokenizers` tokenizer with special-token parsing off: it encodes their strings as
    /// plain text. [`Tokenizer::encode`] splits at them itself. (One copy instead of a second
    /// one with parsing on: the vocabulary and merge tables of a 131k-token vocabulary take
    /// tens of MB.)
    inner: tokenizers::Tokenizer,
    /// Strings of the special (control) tokens, longest first.
    specials: Vec<(String, u32)>,
    /// Special-token strings the chat template may refer to (`bos_token`, `eos_token`, …).
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// Whether encoding "with special tokens" prepends BOS.
    pub adds_bos: bool,
    /// Tokens known to the tokenizer, added tokens included. Computed once: the `tokenizers`
    /// crate answers `get_vocab_size(true)` by building a copy of the whole vocabulary map,
    /// which cost milliseconds on every streamed token when asked per decode.
    vocab_size: usize,
}

fn token_string(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` plus the special-token names from `tokenizer_config.json` and
    /// `special_tokens_map.json` when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() {
            return Err(ModelError::Tokenizer(format!("{} not found", tj.display())));
        }
        let inner = tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tj.display())))?;
        let mut t = Tokenizer::wrap(inner);
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let p = dir.join(name);
            if p.exists() {
                let v = read_json(&p)?;
                t.bos_token = token_string(v.get("bos_token")).or(t.bos_token);
                t.eos_token = token_string(v.get("eos_token")).or(t.eos_token);
                t.pad_token = token_string(v.get("pad_token")).or(t.pad_token);
                t.unk_token = token_string(v.get("unk_token")).or(t.unk_token);
            }
        }
        t.adds_bos = t.detect_adds_bos();
        Ok(t)
    }

    /// Rebuilds a gpt2-style byte-level BPE tokenizer from GGUF metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
        let err = |m: String| ModelError::Tokenizer(format!("{}: {m}", g.path.display()));
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if model != "gpt2" {
            return Err(err(format!("tokenizer.ggml.model {model:?} is not supported (expected \"gpt2\" byte-level BPE)")));
        }
        let tokens: Vec<&str> = g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .ok_or_else(|| err("missing tokenizer.ggml.tokens".into()))?
            .iter()
            .map(|t| {
                t.as_str()
                    .ok_or_else(|| err("tokenizer.ggml.tokens holds a non-string".into()))
            })
            .collect::<Result<_>>()?;
        let types: Vec<u64> = match g
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            Some(a) => a.iter().map(|t| t.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let merges: Vec<&str> = g
            .get("tokenizer.ggml.merges")
            .and_then(|v| v.as_array())
            .ok_or_else(|| err("missing tokenizer.ggml.merges".into()))?
            .iter()
            .filter_map(|m| m.as_str())
            .collect();
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let (pre_tokenizer, ignore_merges) = match pre {
            "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
                true,
            ),
            "default" | "gpt2" => (
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
                false,
            ),
            other => {
                return Err(err(format!(
                    "pre-tokenizer {other:?} is not supported (expected llama-bpe or gpt2)"
                )))
            }
        };
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, (&tok, &ty)) in tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .enumerate()
        {
            vocab.insert(tok.to_string(), json!(id));
            if ty == 3 || ty == 4 {
                added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                                  "normalized": false, "special": ty == 3}));
            }
        }
        let id_of = |key: &str| g.get(key).and_then(|v| v.as_u64()).map(|v| v as usize);
        let name_of = |id: Option<usize>| id.and_then(|i| tokens.get(i)).map(|s| s.to_string());
        let bos_id = id_of("tokenizer.ggml.bos_token_id");
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(bos_id.is_some());
        let post = match (add_bos, name_of(bos_id)) {
            (true, Some(bos)) => json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}}}),
            _ => Value::Null,
        };
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added, "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
        });
        let inner: tokenizers::Tokenizer = spec.to_string().parse().map_err(|e| {
            err(format!(
                "cannot build the tokenizer from GGUF metadata: {e}"
            ))
        })?;
        Ok(Tokenizer {
            bos_token: name_of(bos_id),
            eos_token: name_of(id_of("tokenizer.ggml.eos_token_id")),
            pad_token: name_of(id_of("tokenizer.ggml.padding_token_id")),
            unk_token: name_of(id_of("tokenizer.ggml.unknown_token_id")),
            adds_bos: add_bos && bos_id.is_some(),
            ..Tokenizer::wrap(inner)
        })
    }

    fn wrap(mut inner: tokenizers::Tokenizer) -> Tokenizer {
        inner.set_encode_special_tokens(true);
        let mut specials: Vec<(String, u32)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (t.content, id))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let vocab_size = inner.get_vocab_size(true);
        Tokenizer {
            vocab_size,
            inner,
            specials,
            bos_token: None,
            eos_token: None,
            pad_token: None,
            unk_token: None,
            adds_bos: false,
        }
    }

    /// Special-token strings and ids, longest first.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        &self.specials
    }

    /// Token ids of `text` with special-token strings treated as ordinary text.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Token ids of `text` split at the special-token strings it contains: each of those
    /// becomes its id, and every piece between them is passed through `piece` and encoded as
    /// plain text. The leftmost special token wins, the longest one at the same position. This
    /// is how the `tokenizers` crate treats special tokens (it splits at them before running
    /// the model on the text between them), so `piece = identity` gives its ids.
    pub(crate) fn encode_split(
        &self,
        text: &str,
        piece: &dyn Fn(&str) -> String,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        loop {
            let next = self
                .specials
                .iter()
                .filter_map(|(t, id)| rest.find(t.as_str()).map(|p| (p, t.len(), *id)))
                .min_by_key(|&(p, len, _)| (p, std::cmp::Reverse(len)));
            let (head, special, tail) = match next {
                Some((p, len, id)) => (&rest[..p], Some(id), &rest[p + len..]),
                None => (rest, None, ""),
            };
            let head = piece(head);
            if !head.is_empty() {
                ids.extend(self.encode_plain(&head)?);
            }
            match special {
                Some(id) => ids.push(id),
                None => return Ok(ids),
            }
            rest = tail;
        }
    }

    fn detect_adds_bos(&self) -> bool {
        match (self.inner.encode("a", true), &self.bos_token) {
            (Ok(e), Some(b)) => e.get_ids().first().copied() == self.token_to_id(b),
            _ => false,
        }
    }

    /// Token ids of `text`. Special-token strings inside the text map to their ids, as
    /// `tokenizer.encode(text, add_special_tokens=...)` does in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let ids = self.encode_split(text, &str::to_string)?;
        if !add_special_tokens {
            return Ok(ids);
        }
        // The post-processor adds the special tokens (BOS for Llama-style templates).
        let tokens = ids
            .into_iter()
            .map(|id| tokenizers::Token::new(id, String::new(), (0, 0)))
            .collect();
        self.inner
            .post_process(tokenizers::Encoding::from_tokens(tokens, 0), None, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let n = self.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= n) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary (size {n})"
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Like `decode`, but ids the tokenizer does not know become nothing. Checkpoints often pad
    /// the embedding matrix past the tokenizer's vocabulary (Mi:dm: 131,392 rows), and a model
    /// can sample such an id; generation must not fail on it.
    pub fn decode_lenient(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let n = self.vocab_size() as u32;
        let known: Vec<u32> = ids.iter().copied().filter(|&i| i < n).collect();
        self.inner
            .decode(&known, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }
}

/// Turns a stream of token ids into text pieces without splitting multi-byte characters:
/// byte-level BPE tokens often carry part of a Hangul syllable, so a piece is emitted only once
/// the decoded text no longer ends in an incomplete character.
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special: bool,
}

impl StreamDecoder {
    pub fn new(skip_special: bool) -> StreamDecoder {
        StreamDecoder {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special,
        }
    }

    /// Adds one token; returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode_lenient(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode_lenient(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let piece = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back at the end of the stream (an incomplete character, if any).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode_lenient(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode_lenient(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(
            if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
                full[prefix.len()..].to_string()
            } else {
                String::new()
            },
        )
    }
}
