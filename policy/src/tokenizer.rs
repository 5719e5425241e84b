//! Tokenizer: from `tokenizer.json` (the `tokenizers` crate) or built from GGUF metadata.
//!
//! A lone `.gguf` file carries its tokenizer as metadata (`tokenizer.ggml.*`): the vocabulary,
//! the BPE merges, a type per token and the name of the pre-tokenizer. For the gpt2-style
//! byte-level BPE used by Qwen2, Llama 3 and SmolLM, [`ByteLevelBpe`] turns that metadata into
//! the same `tokenizers` pipeline the model's own `tokenizer.json` describes (normalizer,
//! split regex, byte-level mapping, added tokens), so both sources encode identically.
//!
//! [`StreamDecoder`] turns a growing list of sampled ids into text piece by piece without ever
//! emitting half of a multi-byte UTF-8 character, and finds stop strings in it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer, Vocab};
use tokenizers::normalizers::{NFC, NormalizerWrapper};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, TokenizerBuilder};

/// Tokens that end a turn or a document in the model families we run. A model's configured
/// EOS is often only one of them (Qwen2.5's generation config lists `<|im_end|>` and
/// `<|endoftext|>`; a GGUF records just one id), and sampling must stop on any of them.
pub const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
];

/// Why a tokenizer could not be loaded, built or used. Each variant names the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON config file is malformed.
    #[error("parsing {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// `tokenizer.json` could not be loaded by the tokenizers crate.
    #[error("loading tokenizer {path}: {message}")]
    Load { path: PathBuf, message: String },
    /// A GGUF header could not be read.
    #[error("reading gguf {path}: {message}")]
    Gguf { path: PathBuf, message: String },
    /// A `tokenizer.ggml.*` key is missing or has the wrong type.
    #[error("gguf tokenizer metadata `{key}`: {message}")]
    GgufMetadata { key: String, message: String },
    /// The GGUF tokenizer is not a byte-level BPE (`tokenizer.ggml.model` other than `gpt2`).
    #[error("gguf tokenizer model `{model}` is not supported (only `gpt2`, byte-level bpe)")]
    UnsupportedModel { model: String },
    /// The GGUF names a pre-tokenizer whose split regex we do not implement.
    #[error(
        "gguf pre-tokenizer `{pre}` is not supported (supported: qwen2, llama-bpe, smollm, starcoder, gpt2)"
    )]
    UnsupportedPreTokenizer { pre: String },
    /// Vocabulary, merges or special ids are inconsistent.
    #[error("building byte-level bpe tokenizer: {message}")]
    Build { message: String },
    /// Training a test tokenizer failed.
    #[error("training byte-level bpe tokenizer: {message}")]
    Train { message: String },
    /// Encoding failed.
    #[error("encoding text ({len} bytes): {message}")]
    Encode { len: usize, message: String },
    /// Decoding failed.
    #[error("decoding {count} token ids: {message}")]
    Decode { count: usize, message: String },
    /// Writing `tokenizer.json` failed.
    #[error("saving tokenizer to {path}: {message}")]
    Save { path: PathBuf, message: String },
}

/// Result alias of this module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// The pre-tokenizer (text → words split) of a byte-level BPE, as named by GGUF's
/// `tokenizer.ggml.pre`. The split regex must be the model's own: the same vocabulary
/// with another split gives other ids (e.g. Qwen2 splits numbers into single digits,
/// Llama 3 into runs of up to three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PreTokenizerKind {
    /// Qwen2 / Qwen2.5 (`qwen2`): NFC, then Qwen's regex (single digits, case-insensitive
    /// contractions, newline runs kept apart).
    Qwen2,
    /// Llama 3 (`llama-bpe`, `llama3`): the same regex with digit runs of 1–3, and merges
    /// ignored when a whole word is in the vocabulary.
    Llama3,
    /// SmolLM / StarCoder family (`smollm`, `starcoder`, `refact`, `codeshell`): every digit
    /// split off, then GPT-2's regex.
    SmolLm,
    /// Plain GPT-2 (`gpt2`, and the fallback when the key is absent): GPT-2's regex.
    Gpt2,
}

/// Qwen2's split regex, verbatim from its `tokenizer.json` (case-insensitive contractions,
/// one digit per piece).
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split regex, verbatim from its `tokenizer.json` (digit runs of up to three).
pub const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizerKind {
    /// Maps GGUF's `tokenizer.ggml.pre` to a kind; `None` for names we do not implement.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "qwen2" => Some(Self::Qwen2),
            "llama-bpe" | "llama3" => Some(Self::Llama3),
            "smollm" | "starcoder" | "refact" | "codeshell" => Some(Self::SmolLm),
            "gpt2" | "default" => Some(Self::Gpt2),
            _ => None,
        }
    }

    /// The name GGUF writers use for this kind (written by [`ByteLevelBpe::gguf_metadata`]).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Llama3 => "llama-bpe",
            Self::SmolLm => "smollm",
            Self::Gpt2 => "gpt2",
        }
    }

    fn normalizer(self) -> Option<NormalizerWrapper> {
        match self {
            // Qwen2's tokenizer.json normalizes to NFC before splitting; the others do not
            // normalize at all.
            Self::Qwen2 => Some(NFC.into()),
            Self::Llama3 | Self::SmolLm | Self::Gpt2 => None,
        }
    }

    fn pre_tokenizer(self, add_prefix_space: bool) -> Result<PreTokenizerWrapper> {
        let regex_split = |regex: &str| {
            Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|err| TokenizerError::Build {
                message: format!("compiling the {self:?} split regex: {err}"),
            })
        };
        // With an explicit split first, the byte-level step only maps bytes to characters
        // (`use_regex = false`); otherwise it also applies GPT-2's regex.
        let pre: PreTokenizerWrapper = match self {
            Self::Qwen2 => Sequence::new(vec![
                regex_split(QWEN2_SPLIT_REGEX)?.into(),
                ByteLevel::new(add_prefix_space, false, false).into(),
            ])
            .into(),
            Self::Llama3 => Sequence::new(vec![
                regex_split(LLAMA3_SPLIT_REGEX)?.into(),
                ByteLevel::new(add_prefix_space, true, false).into(),
            ])
            .into(),
            Self::SmolLm => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(add_prefix_space, true, true).into(),
            ])
            .into(),
            Self::Gpt2 => ByteLevel::new(add_prefix_space, true, true).into(),
        };
        Ok(pre)
    }

    fn ignore_merges(self) -> bool {
        // Llama 3's tokenizer.json sets `ignore_merges`: a word found whole in the vocabulary is
        // one token even when the merges would not build it.
        matches!(self, Self::Llama3)
    }
}

/// GGUF's `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// An ordinary BPE token.
    Normal,
    /// The unknown token.
    Unknown,
    /// A special token (`<|im_start|>`): matched whole in text, skipped when decoding with
    /// `skip_special`.
    Control,
    /// An added, non-special token (Qwen's `<tool_call>`): matched whole in text, kept when
    /// decoding.
    UserDefined,
    /// Vocabulary padding (`[PAD151665]`): never produced.
    Unused,
    /// A raw byte token (sentencepiece byte fallback).
    Byte,
}

impl TokenType {
    /// From the GGUF integer; unknown values are treated as normal tokens.
    pub fn from_gguf(value: i64) -> Self {
        match value {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }

    /// The GGUF integer.
    pub fn to_gguf(self) -> i32 {
        match self {
            Self::Normal => 1,
            Self::Unknown => 2,
            Self::Control => 3,
            Self::UserDefined => 4,
            Self::Unused => 5,
            Self::Byte => 6,
        }
    }
}

/// Everything that defines a gpt2-style byte-level BPE tokenizer: what GGUF stores under
/// `tokenizer.ggml.*`. Build it from a GGUF ([`ByteLevelBpe::from_gguf`]) or train one
/// ([`ByteLevelBpe::train`], for tiny test models), then [`ByteLevelBpe::build`] a
/// [`Tokenizer`] or write it into a GGUF ([`ByteLevelBpe::gguf_metadata`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ByteLevelBpe {
    /// Token strings in byte-level form (`Ġworld`); the id is the index.
    pub tokens: Vec<String>,
    /// One type per token (same length as `tokens`).
    pub token_types: Vec<TokenType>,
    /// BPE merges, highest priority first.
    pub merges: Vec<(String, String)>,
    /// The split regex family.
    pub pre: PreTokenizerKind,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: prepend BOS when encoding with `add_special`.
    pub add_bos_token: bool,
    /// `tokenizer.ggml.add_eos_token`: append EOS when encoding with `add_special`.
    pub add_eos_token: bool,
    /// `tokenizer.ggml.add_space_prefix`: prepend a space to the text before splitting.
    pub add_space_prefix: bool,
}

impl ByteLevelBpe {
    /// Reads the tokenizer metadata of a GGUF file. Only `tokenizer.ggml.model = "gpt2"` is
    /// supported; a missing `tokenizer.ggml.pre` falls back to GPT-2's split (with a warning),
    /// an unknown one is an error, since a wrong split silently changes the ids.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let metadata = &content.metadata;
        let model = gguf_string(metadata, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel {
                model: model.to_string(),
            });
        }
        let pre = match metadata.get("tokenizer.ggml.pre") {
            None => {
                tracing::warn!("gguf has no tokenizer.ggml.pre; using gpt2's split regex");
                PreTokenizerKind::Gpt2
            }
            Some(_) => {
                let name = gguf_string(metadata, "tokenizer.ggml.pre")?;
                PreTokenizerKind::from_gguf_name(name).ok_or_else(|| {
                    TokenizerError::UnsupportedPreTokenizer {
                        pre: name.to_string(),
                    }
                })?
            }
        };
        let tokens = gguf_array(metadata, "tokenizer.ggml.tokens")?
            .iter()
            .enumerate()
            .map(|(index, value)| {
                value
                    .to_string()
                    .cloned()
                    .map_err(|_| TokenizerError::GgufMetadata {
                        key: "tokenizer.ggml.tokens".into(),
                        message: format!("element {index} is not a string"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let token_types = match metadata.get("tokenizer.ggml.token_type") {
            None => vec![TokenType::Normal; tokens.len()],
            Some(_) => gguf_array(metadata, "tokenizer.ggml.token_type")?
                .iter()
                .enumerate()
                .map(|(index, value)| {
                    gguf_int(value).map(TokenType::from_gguf).ok_or_else(|| {
                        TokenizerError::GgufMetadata {
                            key: "tokenizer.ggml.token_type".into(),
                            message: format!("element {index} is not an integer"),
                        }
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let merges = match metadata.get("tokenizer.ggml.merges") {
            None => Vec::new(),
            Some(_) => gguf_array(metadata, "tokenizer.ggml.merges")?
                .iter()
                .enumerate()
                .map(|(index, value)| {
                    let merge = value
                        .to_string()
                        .ok()
                        .and_then(|merge| merge.split_once(' '));
                    merge
                        .map(|(left, right)| (left.to_string(), right.to_string()))
                        .ok_or_else(|| TokenizerError::GgufMetadata {
                            key: "tokenizer.ggml.merges".into(),
                            message: format!("element {index} is not a string `LEFT RIGHT`"),
                        })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(Self {
            tokens,
            token_types,
            merges,
            pre,
            bos_token_id: gguf_optional_id(metadata, "tokenizer.ggml.bos_token_id")?,
            eos_token_id: gguf_optional_id(metadata, "tokenizer.ggml.eos_token_id")?,
            pad_token_id: gguf_optional_id(metadata, "tokenizer.ggml.padding_token_id")?,
            add_bos_token: gguf_optional_bool(metadata, "tokenizer.ggml.add_bos_token")?
                .unwrap_or(false),
            add_eos_token: gguf_optional_bool(metadata, "tokenizer.ggml.add_eos_token")?
                .unwrap_or(false),
            add_space_prefix: gguf_optional_bool(metadata, "tokenizer.ggml.add_space_prefix")?
                .unwrap_or(false),
        })
    }

    /// Trains a small byte-level BPE on `corpus` (deterministic), for tiny test models and
    /// tests. `special_tokens` become control tokens with the first ids (0, 1, …); the
    /// result has no BOS, and EOS/pad set to the first special token when there is one.
    pub fn train(
        corpus: &[&str],
        vocab_size: usize,
        special_tokens: &[&str],
        pre: PreTokenizerKind,
    ) -> Result<Self> {
        let train_error = |message: String| TokenizerError::Train { message };
        let mut trainable = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default())
        .with_normalizer(pre.normalizer())
        .with_pre_tokenizer(Some(pre.pre_tokenizer(false)?))
        .build()
        .map_err(|err| train_error(err.to_string()))?;
        let mut trainer = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .show_progress(false)
            .min_frequency(1)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect::<HashSet<char>>())
            .special_tokens(
                special_tokens
                    .iter()
                    .map(|token| AddedToken::from(*token, true))
                    .collect(),
            )
            .build();
        trainable
            .train(&mut trainer, corpus.iter())
            .map_err(|err| train_error(err.to_string()))?;
        let model = trainable.get_model();
        let mut by_id: Vec<(u32, String)> = model
            .get_vocab()
            .into_iter()
            .map(|(token, id)| (id, token))
            .collect();
        by_id.sort();
        if by_id
            .iter()
            .enumerate()
            .any(|(index, (id, _))| *id as usize != index)
        {
            return Err(train_error(
                "trained vocabulary ids are not contiguous".into(),
            ));
        }
        // The trained merges are only reachable through the model's serialized form.
        let serialized = serde_json::to_value(model).map_err(|err| train_error(err.to_string()))?;
        let merges = serialized["merges"]
            .as_array()
            .ok_or_else(|| train_error("trained model has no merges list".into()))?
            .iter()
            .map(|merge| match merge {
                serde_json::Value::Array(pair) if pair.len() == 2 => {
                    Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string()))
                }
                serde_json::Value::String(merge) => merge
                    .split_once(' ')
                    .map(|(left, right)| (left.to_string(), right.to_string())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| train_error("trained merges are malformed".into()))?;
        let tokens: Vec<String> = by_id.into_iter().map(|(_, token)| token).collect();
        let token_types = tokens
            .iter()
            .map(|token| {
                if special_tokens.contains(&token.as_str()) {
                    TokenType::Control
                } else {
                    TokenType::Normal
                }
            })
            .collect();
        let first_special = special_tokens
            .first()
            .and_then(|special| tokens.iter().position(|token| token == special))
            .map(|id| id as u32);
        Ok(Self {
            tokens,
            token_types,
            merges,
            pre,
            bos_token_id: None,
            eos_token_id: first_special,
            pad_token_id: first_special,
            add_bos_token: false,
            add_eos_token: false,
            add_space_prefix: false,
        })
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokens
            .iter()
            .position(|candidate| candidate == token)
            .map(|id| id as u32)
    }

    /// The `tokenizer.ggml.*` metadata entries describing this tokenizer, for writing a GGUF
    /// file with [`gguf_file::write`] (tests and tiny models).
    pub fn gguf_metadata(&self) -> Vec<(String, gguf_file::Value)> {
        use gguf_file::Value;
        let mut entries = vec![
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.pre".to_string(),
                Value::String(self.pre.gguf_name().into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(self.tokens.iter().cloned().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(
                    self.token_types
                        .iter()
                        .map(|kind| Value::I32(kind.to_gguf()))
                        .collect(),
                ),
            ),
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(
                    self.merges
                        .iter()
                        .map(|(left, right)| Value::String(format!("{left} {right}")))
                        .collect(),
                ),
            ),
            (
                "tokenizer.ggml.add_bos_token".to_string(),
                Value::Bool(self.add_bos_token),
            ),
            (
                "tokenizer.ggml.add_eos_token".to_string(),
                Value::Bool(self.add_eos_token),
            ),
            (
                "tokenizer.ggml.add_space_prefix".to_string(),
                Value::Bool(self.add_space_prefix),
            ),
        ];
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos_token_id),
            ("tokenizer.ggml.eos_token_id", self.eos_token_id),
            ("tokenizer.ggml.padding_token_id", self.pad_token_id),
        ] {
            if let Some(id) = id {
                entries.push((key.to_string(), Value::U32(id)));
            }
        }
        entries
    }

    /// Builds the tokenizer: BPE over the vocabulary and merges, the kind's normalizer and
    /// split, byte-level decoding, control tokens as special added tokens and user-defined
    /// tokens as non-special added tokens (both matched whole in text, as `tokenizer.json`'s
    /// `added_tokens` are).
    pub fn build(&self) -> Result<Tokenizer> {
        let build_error = |message: String| TokenizerError::Build { message };
        if self.token_types.len() != self.tokens.len() {
            return Err(build_error(format!(
                "{} token types for {} tokens",
                self.token_types.len(),
                self.tokens.len()
            )));
        }
        let token_count = self.tokens.len();
        for (name, id) in [
            ("bos", self.bos_token_id),
            ("eos", self.eos_token_id),
            ("padding", self.pad_token_id),
        ] {
            if let Some(id) = id
                && id as usize >= token_count
            {
                return Err(build_error(format!(
                    "{name} token id {id} is outside the {token_count} tokens"
                )));
            }
        }
        let mut vocab = Vocab::default();
        let mut duplicates = 0usize;
        for (id, token) in self.tokens.iter().enumerate() {
            // Keep the first id of a repeated string, as llama.cpp's token-to-id map does.
            if vocab.contains_key(token) {
                duplicates += 1;
            } else {
                vocab.insert(token.clone(), id as u32);
            }
        }
        if duplicates > 0 {
            tracing::warn!(
                duplicates,
                "byte-level bpe vocabulary repeats token strings; keeping the first id"
            );
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merges.clone())
            .ignore_merges(self.pre.ignore_merges())
            .build()
            .map_err(|err| build_error(err.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        // The normalizer goes in before the added tokens: their match patterns are normalized.
        inner.with_normalizer(self.pre.normalizer());
        inner.with_pre_tokenizer(Some(self.pre.pre_tokenizer(self.add_space_prefix)?));
        inner.with_decoder(Some(ByteLevel::default()));
        let token_text = |id: Option<u32>| id.map(|id| self.tokens[id as usize].clone());
        let bos = token_text(self.bos_token_id).filter(|_| self.add_bos_token);
        let eos = token_text(self.eos_token_id).filter(|_| self.add_eos_token);
        if bos.is_some() || eos.is_some() {
            let mut single = Vec::new();
            let mut pair = Vec::new();
            let mut specials = Vec::new();
            if let (Some(bos), Some(id)) = (&bos, self.bos_token_id) {
                single.push(bos.clone());
                specials.push((bos.clone(), id));
            }
            single.push("$A".to_string());
            pair.extend(single.iter().cloned());
            if let (Some(eos), Some(id)) = (&eos, self.eos_token_id) {
                single.push(eos.clone());
                pair.push(eos.clone());
                specials.push((eos.clone(), id));
            }
            if let Some(bos) = &bos {
                pair.push(format!("{bos}:1"));
            }
            pair.push("$B:1".to_string());
            if let Some(eos) = &eos {
                pair.push(format!("{eos}:1"));
            }
            let template = TemplateProcessing::builder()
                .try_single(single)
                .and_then(|builder| builder.try_pair(pair))
                .map_err(|err| build_error(format!("bos/eos template: {err}")))?
                .special_tokens(specials)
                .build()
                .map_err(|err| build_error(format!("bos/eos template: {err}")))?;
            inner.with_post_processor(Some(template));
        } else {
            inner.with_post_processor(Some(ByteLevel::new(false, false, false)));
        }
        let added = |wanted: TokenType, special: bool| {
            self.tokens
                .iter()
                .zip(&self.token_types)
                .filter(|(_, kind)| **kind == wanted)
                .map(|(token, _)| AddedToken::from(token.clone(), special).normalized(false))
                .collect::<Vec<_>>()
        };
        inner.add_special_tokens(&added(TokenType::Control, true));
        inner.add_tokens(&added(TokenType::UserDefined, false));
        let mut tokenizer = Tokenizer {
            inner,
            eos_token_ids: Vec::new(),
            bos_token_id: self.bos_token_id,
            pad_token_id: self.pad_token_id,
        };
        tokenizer.eos_token_ids = tokenizer.collect_eos_ids(self.eos_token_id.into_iter());
        Ok(tokenizer)
    }
}

/// A text tokenizer with the ids sampling stops on. Cheap to clone (the vocabulary is shared
/// inside the `tokenizers` crate's model), `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_token_ids: Vec<u32>,
    bos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_token_ids", &self.eos_token_ids)
            .field("bos_token_id", &self.bos_token_id)
            .field("pad_token_id", &self.pad_token_id)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` alone. EOS ids are the end-of-turn tokens in
    /// [`END_OF_TURN_TOKENS`] that the vocabulary has; use [`Tokenizer::from_hf_dir`] to also
    /// honour the model's configs.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|err| TokenizerError::Load {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        let mut tokenizer = Self {
            inner,
            eos_token_ids: Vec::new(),
            bos_token_id: None,
            pad_token_id: None,
        };
        tokenizer.eos_token_ids = tokenizer.collect_eos_ids(std::iter::empty());
        Ok(tokenizer)
    }

    /// Loads a Hugging Face model directory: `tokenizer.json` (required), and where present
    /// `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`), `generation_config.json`
    /// and `config.json` (`eos_token_id` as a number or a list, `bos_token_id`, `pad_token_id`).
    /// EOS ids: generation config, then config, then the tokenizer config's `eos_token`, then
    /// [`END_OF_TURN_TOKENS`] present in the vocabulary, without repeats.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut tokenizer = Self::from_file(dir.join("tokenizer.json"))?;
        let tokenizer_config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
        let generation_config = read_json_if_present(&dir.join("generation_config.json"))?;
        let model_config = read_json_if_present(&dir.join("config.json"))?;
        let configs = [&generation_config, &model_config];
        let token_from_tokenizer_config = |key: &str| {
            tokenizer_config
                .as_ref()
                .and_then(|config| token_content(config.get(key)?))
                .and_then(|token| tokenizer.token_to_id(&token))
        };
        let mut eos_ids: Vec<u32> = configs
            .iter()
            .filter_map(|config| config.as_ref())
            .flat_map(|config| config.get("eos_token_id").map(ids_in).unwrap_or_default())
            .collect();
        eos_ids.extend(token_from_tokenizer_config("eos_token"));
        let first_id = |key: &str| {
            configs
                .iter()
                .filter_map(|config| config.as_ref())
                .find_map(|config| config.get(key).map(ids_in)?.first().copied())
        };
        let bos_token_id =
            token_from_tokenizer_config("bos_token").or_else(|| first_id("bos_token_id"));
        let pad_token_id =
            token_from_tokenizer_config("pad_token").or_else(|| first_id("pad_token_id"));
        tokenizer.bos_token_id = bos_token_id;
        tokenizer.pad_token_id = pad_token_id;
        tokenizer.eos_token_ids = tokenizer.collect_eos_ids(eos_ids.into_iter());
        Ok(tokenizer)
    }

    /// Builds the tokenizer from a GGUF file's metadata (see [`ByteLevelBpe::from_gguf`]).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        ByteLevelBpe::from_gguf(content)?.build()
    }

    /// Reads a GGUF file's header and builds its tokenizer (tensor data is not read).
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = std::fs::File::open(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(|err| TokenizerError::Gguf {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        Self::from_gguf(&content)
    }

    /// Wraps an already-built `tokenizers` tokenizer with explicit EOS ids (plus the
    /// end-of-turn tokens it has).
    pub fn from_inner(inner: tokenizers::Tokenizer, eos_token_ids: &[u32]) -> Self {
        let mut tokenizer = Self {
            inner,
            eos_token_ids: Vec::new(),
            bos_token_id: None,
            pad_token_id: None,
        };
        tokenizer.eos_token_ids = tokenizer.collect_eos_ids(eos_token_ids.iter().copied());
        tokenizer
    }

    /// Text → ids. `add_special` adds what the model's post-processor adds (BOS for Llama 3;
    /// nothing for Qwen2). Special tokens written in the text (`<|im_start|>`) always become
    /// their single id, so a rendered chat prompt is encoded with `add_special = false`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding =
            self.inner
                .encode_fast(text, add_special)
                .map_err(|err| TokenizerError::Encode {
                    len: text.len(),
                    message: err.to_string(),
                })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Ids → text. `skip_special` drops special (control) tokens such as `<|im_end|>`.
    /// Byte sequences that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|err| TokenizerError::Decode {
                count: ids.len(),
                message: err.to_string(),
            })
    }

    /// A fresh incremental decoder for one generated sequence (see [`StreamDecoder`]).
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(skip_special)
    }

    /// Ids that end generation: the model's EOS id(s) and every end-of-turn token it has.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Whether sampling `id` ends the sequence.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// Replaces the EOS ids (e.g. from a config the caller parsed); end-of-turn tokens the
    /// vocabulary has are still added.
    pub fn with_eos_token_ids(mut self, ids: &[u32]) -> Self {
        self.eos_token_ids = self.collect_eos_ids(ids.iter().copied());
        self
    }

    /// The id used to pad batches: the configured pad token, else the first EOS id, else 0.
    /// Padded positions are masked, so its value never reaches the model's math.
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id
            .or_else(|| self.eos_token_ids.first().copied())
            .unwrap_or(0)
    }

    /// The BOS id, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// Number of ids the tokenizer knows, added tokens included. It can be smaller than the
    /// model's embedding rows (Qwen2.5 pads its embedding to 151,936).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (byte-level form for normal tokens, e.g. `Ġworld`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` (bos/eos/pad tokens, and
    /// `chat_template` when given) into `dir`, so [`Tokenizer::from_hf_dir`] and
    /// [`crate::chat::ChatTemplate::from_hf_dir`] load them back (tiny test models).
    pub fn save_hf_dir(&self, dir: impl AsRef<Path>, chat_template: Option<&str>) -> Result<()> {
        let dir = dir.as_ref();
        let tokenizer_path = dir.join("tokenizer.json");
        self.inner
            .save(&tokenizer_path, false)
            .map_err(|err| TokenizerError::Save {
                path: tokenizer_path.clone(),
                message: err.to_string(),
            })?;
        let token_text = |id: Option<u32>| id.and_then(|id| self.id_to_token(id));
        let config = serde_json::json!({
            "bos_token": token_text(self.bos_token_id),
            "eos_token": token_text(self.eos_token_ids.first().copied()),
            "pad_token": token_text(self.pad_token_id),
            "chat_template": chat_template,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        let config_path = dir.join("tokenizer_config.json");
        let text =
            serde_json::to_string_pretty(&config).map_err(|source| TokenizerError::Json {
                path: config_path.clone(),
                source,
            })?;
        std::fs::write(&config_path, text).map_err(|source| TokenizerError::Io {
            path: config_path,
            source,
        })
    }

    /// `configured` ids first, then the end-of-turn tokens the vocabulary has as special
    /// tokens, without repeats.
    fn collect_eos_ids(&self, configured: impl Iterator<Item = u32>) -> Vec<u32> {
        let special_ids: HashSet<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        let end_of_turn = END_OF_TURN_TOKENS
            .iter()
            .filter_map(|token| self.inner.token_to_id(token))
            .filter(|id| special_ids.contains(id));
        let mut ids = Vec::new();
        for id in configured.chain(end_of_turn) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

/// Where a stop string was found in a [`StreamDecoder`]'s text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopMatch {
    /// Index into the stop-string list given to [`StreamDecoder::find_stop`].
    pub stop_index: usize,
    /// Byte offset in [`StreamDecoder::text`] where the stop string starts: the completion
    /// text is `text()[..byte_offset]`.
    pub byte_offset: usize,
}

/// Incremental detokenizer for one generated sequence.
///
/// Decoding each new id alone breaks multi-byte characters (a Chinese character or an
/// emoji is often 2–3 byte-level tokens) and loses context-dependent spacing, so this keeps
/// a small window of ids: it decodes the window with and without the newest id and emits the
/// difference only when the decoded text does not end in an incomplete character (U+FFFD).
/// Every emitted piece is whole UTF-8; the pieces plus [`StreamDecoder::finish`] concatenate
/// to `decode(all ids)`. Holds no borrow of the tokenizer, so a batch can keep one per row.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the window decoded for context (already emitted tokens).
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
    skip_special: bool,
    text: String,
    /// Bytes of `text` already searched for stop strings.
    stop_checked: usize,
}

impl StreamDecoder {
    /// An empty decoder; `skip_special` as in [`Tokenizer::decode`].
    pub fn new(skip_special: bool) -> Self {
        Self {
            skip_special,
            ..Self::default()
        }
    }

    /// Adds one sampled id; returns the text it completes (possibly empty while a character
    /// is still incomplete).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<&str> {
        self.ids.push(id);
        let prefix_text = tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let window_text = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        let complete = window_text.len() > prefix_text.len()
            && !window_text.ends_with(char::REPLACEMENT_CHARACTER)
            && window_text.starts_with(&prefix_text);
        if !complete {
            return Ok("");
        }
        let start = self.text.len();
        self.text.push_str(&window_text[prefix_text.len()..]);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(&self.text[start..])
    }

    /// Flushes what is still held back at the end of generation (an incomplete character
    /// becomes U+FFFD, as in a full decode) and returns it.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<&str> {
        let start = self.text.len();
        if self.read_offset < self.ids.len() {
            let full = tokenizer.decode(&self.ids, self.skip_special)?;
            match full.strip_prefix(self.text.as_str()) {
                Some(rest) => self.text.push_str(rest),
                None => {
                    // Only reachable with decoders whose output depends on later tokens in
                    // ways the window missed; the full decode is the truth.
                    tracing::warn!(
                        "stream decoder text diverged from the full decode; using the full decode"
                    );
                    self.text = full;
                    self.stop_checked = 0;
                    return Ok(&self.text);
                }
            }
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        Ok(&self.text[start..])
    }

    /// Text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Looks for the earliest stop string that ends in the text emitted since the last call
    /// (it may start in earlier text: stop strings split across pieces are found). Empty stop
    /// strings are ignored. The completion is `text()[..byte_offset]` of the match.
    pub fn find_stop<S: AsRef<str>>(&mut self, stops: &[S]) -> Option<StopMatch> {
        let already_checked = self.stop_checked;
        self.stop_checked = self.text.len();
        stops
            .iter()
            .enumerate()
            .filter(|(_, stop)| !stop.as_ref().is_empty())
            .filter_map(|(stop_index, stop)| {
                let stop = stop.as_ref();
                // A match is new when it ends in the unchecked text; start early enough to
                // catch one that begins in text already checked.
                let mut search_from = already_checked.saturating_sub(stop.len() - 1);
                while !self.text.is_char_boundary(search_from) {
                    search_from -= 1;
                }
                self.text[search_from..]
                    .match_indices(stop)
                    .map(|(at, _)| search_from + at)
                    .find(|&start| start + stop.len() > already_checked)
                    .map(|byte_offset| StopMatch {
                        stop_index,
                        byte_offset,
                    })
            })
            .min_by_key(|found| (found.byte_offset, found.stop_index))
    }
}

fn gguf_value<'a>(
    metadata: &'a HashMap<String, gguf_file::Value>,
    key: &str,
) -> Result<&'a gguf_file::Value> {
    metadata
        .get(key)
        .ok_or_else(|| TokenizerError::GgufMetadata {
            key: key.to_string(),
            message: "missing".into(),
        })
}

fn gguf_string<'a>(metadata: &'a HashMap<String, gguf_file::Value>, key: &str) -> Result<&'a str> {
    gguf_value(metadata, key)?
        .to_string()
        .map(String::as_str)
        .map_err(|_| TokenizerError::GgufMetadata {
            key: key.to_string(),
            message: "not a string".into(),
        })
}

fn gguf_array<'a>(
    metadata: &'a HashMap<String, gguf_file::Value>,
    key: &str,
) -> Result<&'a Vec<gguf_file::Value>> {
    gguf_value(metadata, key)?
        .to_vec()
        .map_err(|_| TokenizerError::GgufMetadata {
            key: key.to_string(),
            message: "not an array".into(),
        })
}

/// Any GGUF integer type as i64 (writers differ: token types are i32, ids u32 or i32).
pub(crate) fn gguf_int(value: &gguf_file::Value) -> Option<i64> {
    use gguf_file::Value;
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

fn gguf_optional_id(
    metadata: &HashMap<String, gguf_file::Value>,
    key: &str,
) -> Result<Option<u32>> {
    let Some(value) = metadata.get(key) else {
        return Ok(None);
    };
    gguf_int(value)
        .and_then(|id| u32::try_from(id).ok())
        .map(Some)
        .ok_or_else(|| TokenizerError::GgufMetadata {
            key: key.to_string(),
            message: "not a non-negative integer".into(),
        })
}

fn gguf_optional_bool(
    metadata: &HashMap<String, gguf_file::Value>,
    key: &str,
) -> Result<Option<bool>> {
    match metadata.get(key) {
        None => Ok(None),
        Some(gguf_file::Value::Bool(flag)) => Ok(Some(*flag)),
        Some(other) => gguf_int(other).map(|flag| Some(flag != 0)).ok_or_else(|| {
            TokenizerError::GgufMetadata {
                key: key.to_string(),
                message: "not a boolean".into(),
            }
        }),
    }
}

/// Reads a JSON file if it exists; a present but unreadable or malformed file is an error
/// (silently ignoring it would change the EOS ids).
pub(crate) fn read_json_if_present(path: &Path) -> Result<Option<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// A token in `tokenizer_config.json`: a plain string or an AddedToken object `{"content": …}`.
pub(crate) fn token_content(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(token) => Some(token.clone()),
        serde_json::Value::Object(object) => object.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `eos_token_id` in HF configs: a number or a list of numbers.
fn ids_in(value: &serde_json::Value) -> Vec<u32> {
    match value {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|item| item.as_u64())
            .map(|id| id as u32)
            .collect(),
        other => other.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
    }
}
