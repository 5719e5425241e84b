//! The teacher proxy: the one component of tgrpo that talks to the teacher.
//!
//! The teacher (Qwen3-32B behind vLLM in production, any OpenAI-compatible server in
//! general) is the most expensive thing tgrpo touches. This crate meters it (bounded
//! concurrency, counted tokens and retries), caches it (a content-addressed response cache:
//! a rerun makes no teacher call), and checks it (each trace's code is scored against the
//! problem's tests before the learner may imitate it).
//!
//! # Layout
//! - [`config`]: `[teacher]`, the config section, with the seed's defaults.
//! - [`wire`]: the OpenAI chat-completions request and response types, and the cache key.
//! - [`backoff`]: exponential backoff with jitter, Retry-After parsing.
//! - [`client`]: the [`Teacher`] trait and [`HttpTeacher`], the HTTP client.
//! - [`local`]: [`LocalTeacher`], a policy-crate model behind the same interface (offline
//!   synthesis), and [`AnyTeacher`] to pick one at run time.
//! - [`reference`]: [`ReferenceTeacher`], an oracle that answers with each problem's
//!   reference solution (the CPU demo's stand-in for the real teacher).
//! - [`parse`]: splitting `<think>` / `reasoning_content` from the answer.
//! - [`cache`]: the on-disk response cache (atomic writes).
//! - [`verify`]: the [`Verifier`] trait: scoring a trace's code against its tests.
//! - [`source`]: [`TraceSource`], from (problem, sample) to a verified [`TraceRecord`].
//! - [`traces`]: the traces file (record format, resumable writer, [`load_traces`]).
//! - [`server`]: the gRPC service `tgrpo.teacher.v1.Teacher` (`tgrpo teacher-proxy`).
//! - [`synthesis`]: the synthesis stage ([`synthesize`]) with progress and summary.
//! - [`error`]: [`TeacherError`], the crate's one error type.
//! - [`metrics`]: the `tgrpo_teacher_*` Prometheus series (requests, retries, cache
//!   hits, failures, tokens, latency).

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cache;
pub mod client;
pub mod config;
pub mod error;
pub mod local;
pub mod metrics;
pub mod parse;
pub mod reference;
pub mod server;
pub mod source;
pub mod synthesis;
pub mod traces;
pub mod verify;
pub mod wire;

pub use cache::ResponseCache;
pub use client::{HttpTeacher, Teacher, TeacherReply};
pub use config::TeacherConfig;
pub use error::{Result, TeacherError};
pub use local::{AnyTeacher, LocalTeacher};
pub use reference::ReferenceTeacher;
pub use source::{MeterSnapshot, TraceOutcome, TraceSource};
pub use synthesis::{SampleFailure, SynthesisSummary, synthesize};
pub use traces::{TraceRecord, TraceWriter, load_traces};
pub use verify::{Unverified, Verification, Verifier};
