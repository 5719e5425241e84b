//! tgrpo-policy: the policy model every part of tgrpo that samples or learns goes through.
//!
//! A Qwen2/Llama-family decoder with LoRA adapters, written in candle, plus loading,
//! batched sampling, batched scoring, PEFT adapter I/O, the tokenizer and chat templates.
#![deny(unsafe_code)]

pub mod chat;
pub mod config;
pub mod dropout;
pub mod error;
pub mod loading;
pub mod lora;
pub mod model;
pub mod peft;
pub mod policy;
pub mod sampling;
pub mod scoring;
pub mod tiny;
pub mod tokenizer;

pub use config::{Family, HfConfig, ModelConfig, RopeScaling};
pub use dropout::{DropoutRng, DropoutRngState};
pub use error::{PolicyError, Result};
pub use loading::{HubSource, LoadOptions, ModelFiles, ModelSource, load_model};
pub use lora::{LoraAdapter, LoraConfig, LoraInit, LoraPair, LoraTarget, TrainableAdapter};
pub use model::{ForwardMode, Model};
pub use sampling::{FinishReason, Generation, GenerationRequest, SamplingParams, TextDecoder};
pub use scoring::{ScoreSequence, Scores};
pub use policy::{AdapterSlot, Policy};
