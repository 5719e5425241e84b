//! tgrpo-policy: the policy model every part of tgrpo that samples or learns goes through.
//!
//! A Qwen2/Llama-family decoder with LoRA adapters, written in candle: weight loading (HF
//! safetensors directory, Hugging Face hub, GGUF), batched sampling with a KV cache,
//! batched scoring (per-token log-probs and entropy), PEFT adapter I/O, the tokenizer and
//! chat templates.
//!
//! # Layout
//! - [`config`]: [`ModelConfig`] from HF `config.json` ([`HfConfig`]) or GGUF metadata.
//! - [`model`]: the decoder ([`Model`]); [`ForwardMode`] picks the fused inference kernels
//!   or the differentiable train path (candle 0.11's fused RMSNorm/RoPE/softmax have no
//!   backward).
//! - [`lora`]: [`LoraConfig`], [`LoraAdapter`] (immutable A/B tensors, passed per call;
//!   `None` = base model = the reference policy), [`TrainableAdapter`] (the same backed by
//!   `Var`s).
//! - [`dropout`]: [`DropoutRng`], seeded LoRA-dropout masks with a checkpointable state.
//! - [`scoring`]: [`Model::score`], right-padded batches → `(B, C)` log-probs/entropy/mask.
//! - [`sampling`]: [`Model::generate`], left-padded batched decoding with a KV cache.
//! - [`peft`]: PEFT directories (`adapter_model.safetensors` + `adapter_config.json`) and
//!   safetensors bytes (the broadcast payload).
//! - [`device`]: the config's device and dtype strings.
//! - [`loading`]: [`ModelSource`] (dir / hub / gguf), [`LoadOptions`] (device, dtype).
//! - [`policy`]: [`Policy`] = model + tokenizer + chat template + EOS ids + an
//!   [`AdapterSlot`] whose adapter is swapped atomically under concurrent samplers.
//! - [`tokenizer`], [`chat`]: tokenizer (tokenizer.json or GGUF metadata), chat templates.
//! - [`tiny`]: seeded tiny random models in HF format for tests and the CPU demo.
//! - [`shapes`]: production-shaped configs (Qwen2.5-1.5B, SmolLM2-135M) for benchmarks.
//! - [`bench`]: the sampling benchmark (`tgrpo bench sample`): tokens/s at several batch
//!   sizes next to candle-transformers' own model on the same weights.
//!
//! # The learner's calls
//! ```
//! use candle_core::{DType, Device};
//! use tgrpo_policy::{DropoutRng, Family, ForwardMode, LoraAdapter, LoraConfig, ScoreSequence, TrainableAdapter, tiny};
//!
//! # fn main() -> tgrpo_policy::Result<()> {
//! let model = tiny::model(Family::Qwen2, 0, &Device::Cpu, DType::F32)?;
//! let lora = LoraConfig { r: 8, alpha: 16.0, ..Default::default() };
//! let trainable = TrainableAdapter::new(model.config(), &lora, 1, &Device::Cpu, DType::F32)?;
//! let mut dropout = DropoutRng::new(42); // checkpoint `dropout.state()` for exact resume
//! let batch = [ScoreSequence { tokens: vec![5, 6, 7, 8, 9], score_from: 2 }];
//! // Policy log-probs (train mode: differentiable, LoRA dropout on) at the rollout
//! // temperature, so they are comparable with the sampler's behaviour log-probs.
//! let temperature = 0.7;
//! let scores = model.score(&batch, Some(trainable.adapter()), ForwardMode::Train { dropout: Some(&mut dropout) }, temperature, true)?;
//! // Reference log-probs: the same base weights with the adapter off.
//! let reference = model.score(&batch, None, ForwardMode::Inference, temperature, false)?;
//! let loss = (scores.logprobs - reference.logprobs.detach()).unwrap().sqr().unwrap().sum_all().unwrap();
//! let grads = loss.backward().unwrap();
//! for (peft_name, var) in trainable.vars() {
//!     assert!(grads.get(var.as_tensor()).is_some(), "{peft_name}");
//! }
//! // Publish: detached snapshot → PEFT-named safetensors bytes (config in the metadata).
//! let bytes = trainable.snapshot()?.to_safetensors_bytes("Qwen/Qwen2.5-Coder-1.5B-Instruct")?;
//! let received = LoraAdapter::from_safetensors_bytes(&bytes, model.config(), None, &Device::Cpu, DType::F32)?;
//! # let _ = received;
//! # Ok(())
//! # }
//! ```
//!
//! # Conventions
//! - Scoring pads on the right; position `j` of a [`Scores`] row is token
//!   `tokens[score_from + j]`. Sampling pads on the left internally; callers never see it.
//! - Behaviour log-probs are under the sampling distribution (after temperature, top-k,
//!   top-p); without truncation they equal [`Model::score`]'s at the same temperature.
//! - CPU runs f32; the `cuda` feature adds CUDA (load with `dtype: BF16` there).
#![deny(unsafe_code)]

pub mod bench;
pub mod chat;
pub mod config;
pub mod device;
pub mod dropout;
pub mod error;
mod frozen;
mod kernels;
pub mod loading;
pub mod lora;
pub mod model;
pub mod peft;
pub mod policy;
pub mod sampling;
pub mod scoring;
pub mod shapes;
pub mod tiny;
pub mod tokenizer;

pub use config::{Family, HfConfig, ModelConfig, RopeScaling};
pub use dropout::{DropoutRng, DropoutRngState};
pub use error::{PolicyError, Result};
pub use loading::{HubSource, LoadOptions, ModelFiles, ModelSource, load_model};
pub use lora::{LoraAdapter, LoraConfig, LoraInit, LoraPair, LoraTarget, TrainableAdapter};
pub use model::{ForwardMode, Model};
pub use policy::{AdapterSlot, Policy};
pub use sampling::{
    FinishReason, Generation, GenerationRequest, GenerationStats, SamplingParams, TextDecoder,
};
pub use scoring::{ScoreSequence, Scores};
