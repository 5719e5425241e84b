//! Coding problems: the data every tgrpo stage shares.
//!
//! A [`Problem`] is one task with its tests, in one of the test formats the executor
//! understands. The modules load the public benchmarks into that shape and hold the small
//! pieces of text handling that several services must do identically:
//!
//! - [`mbpp`]: MBPP rows (the original `full` release and the `sanitized` variant), by
//!   task-id range into the standard splits, and the pooled, seeded 80/20 train/validation
//!   split of the data stage;
//! - [`hub`]: MBPP parquet files from the Hugging Face hub (or its offline cache);
//! - [`humaneval`]: the openai/human-eval JSONL format;
//! - [`jsonl`]: reading JSONL with errors that name the file and line, and atomic writes;
//! - [`prompt`]: the user message a policy or teacher is asked;
//! - [`extract`]: pulling the Python program out of a model's answer.
//!
//! Keeping prompt rendering and code extraction here means the teacher's traces, the
//! rollout workers' samples and the eval stage see the same prompt and cut the same code.

#![forbid(unsafe_code)]

pub mod extract;
pub mod hub;
pub mod humaneval;
pub mod jsonl;
pub mod mbpp;
mod problem;
pub mod prompt;

pub use problem::{Problem, TestFormat};

/// Errors of loading and writing problem files; each names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: std::path::PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// One line is not a valid record; the rest of the file is still readable.
    #[error("{path}:{line}: {message}")]
    Malformed {
        /// The file at fault.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A split was asked for with parameters that cannot work.
    #[error("invalid split: {0}")]
    InvalidSplit(String),
}

/// Result alias for this crate.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
