//! The crate's error type: every failure names the input it came from (file, field, tensor,
//! request index), so a bad checkpoint or request is diagnosable from the message alone.

use std::path::PathBuf;

/// Everything that can go wrong in the policy crate.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A tensor operation failed; `context` says which step of which computation.
    #[error("{context}: {source}")]
    Candle {
        /// What was being computed (e.g. "layer 3 attention", "loading model.norm.weight").
        context: String,
        /// The candle error.
        #[source]
        source: candle_core::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config.json, adapter_config.json, a shard index) is malformed.
    #[error("{path}: invalid json: {source}")]
    Json {
        /// The file (or a description of the in-memory source).
        path: PathBuf,
        /// The serde error (it carries line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A config value is missing, out of range or unsupported.
    #[error("{source_name}: field `{field}`: {message}")]
    Config {
        /// The config's origin (a file path, "gguf metadata", "LoraConfig").
        source_name: String,
        /// The offending field, with its checkpoint spelling.
        field: String,
        /// Why it is rejected.
        message: String,
    },
    /// A checkpoint lacks a tensor or has it with the wrong shape.
    #[error("{source_name}: tensor `{tensor}`: {message}")]
    Weights {
        /// The checkpoint (file or directory).
        source_name: String,
        /// The tensor name as stored.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },
    /// Hugging Face hub access failed (network, or a file missing from the offline cache).
    #[error("hub {repo}@{revision}: {message}")]
    Hub {
        /// The repository id.
        repo: String,
        /// The pinned revision.
        revision: String,
        /// What went wrong.
        message: String,
    },
    /// A sampling or scoring request is invalid.
    #[error("request {index}: {message}")]
    Request {
        /// Index of the request in the batch.
        index: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The tokenizer failed to encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Loading or using the tokenizer failed (names the file).
    #[error(transparent)]
    TokenizerFile(#[from] crate::tokenizer::TokenizerError),
    /// Loading or rendering the chat template failed (names the template's origin).
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, PolicyError>;

/// Attaches a context string to candle results, so a shape error says where it happened.
pub(crate) trait CandleContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| PolicyError::Candle {
            context: context(),
            source,
        })
    }
}

impl PolicyError {
    /// Shorthand for a config error.
    pub(crate) fn config(
        source_name: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Config {
            source_name: source_name.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a weights error.
    pub(crate) fn weights(
        source_name: impl Into<String>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Weights {
            source_name: source_name.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }

    /// Shorthand for an I/O error.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
