//! The product layer: the one run config, the four stages a user runs (`data`,
//! `synthesis`, `train`, `eval`), and local single-node mode. It joins the service
//! crates; none of the math or the sandboxing lives here.
//!
//! # Layout
//! - [`config`]: [`TgrpoConfig`], every section of a run in one TOML file, with
//!   `TGRPO_*` environment overrides and unknown keys rejected by name.
//! - [`passk`]: the unbiased pass@k estimator.
//! - [`report`]: the SVG report written at the end of train and eval.

#![forbid(unsafe_code)]

pub mod bench_loop;
pub mod config;
pub mod data;
pub mod demo;
pub mod error;
pub mod eval;
pub mod link;
pub mod local;
pub mod model;
pub mod passk;
pub mod progress;
pub mod report;
pub mod synthesis;
pub mod train;

pub use config::{ConfigError, EnvSource, NoEnv, Override, ProcessEnv, TgrpoConfig};
pub use error::{PipelineError, Result};
pub use train::{StageOptions, TimedLoop, TrainReport, timed_train_loop, train, train_loop};
