//! tgrpo-policy: the policy model every part of tgrpo that samples or learns goes through.
//!
//! A Qwen2/Llama-family decoder with LoRA adapters, written in candle, plus loading,
//! batched sampling, batched scoring, PEFT adapter I/O, the tokenizer and chat templates.
//! The public API is documented module by module as it lands.
#![deny(unsafe_code)]

pub mod chat;
pub mod tokenizer;
