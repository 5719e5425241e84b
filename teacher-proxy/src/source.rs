//! From a problem to a verified trace record: the pipeline every role shares (the
//! synthesis stage, the gRPC proxy, the connectivity check).
//!
//! For one (problem, sample index): build the request, look it up in the response cache,
//! otherwise ask the teacher and cache the answer at once (so a run killed a moment later
//! has still not wasted it), split reasoning from answer, extract the code, verify it, and
//! meter all of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tgrpo_dataset::{Problem, prompt};

use crate::cache::{CacheEntry, ResponseCache};
use crate::client::Teacher;
use crate::config::TeacherConfig;
use crate::error::{Result, TeacherError};
use crate::parse::{extract_code, split_thinking};
use crate::traces::TraceRecord;
use crate::verify::{Verification, Verifier};
use crate::wire::{ChatMessage, ChatRequest, ChatResponse, ChatTemplateKwargs, Usage};

/// A trace and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceOutcome {
    /// The verified record.
    pub record: TraceRecord,
    /// Served from the response cache (no teacher call).
    pub from_cache: bool,
    /// Requests sent to the teacher for it (0 when cached).
    pub attempts: u32,
}

/// Running totals of what the teacher was asked and answered: the meter of the one place
/// that talks to it.
#[derive(Debug, Default)]
struct Meter {
    teacher_requests: AtomicU64,
    retries: AtomicU64,
    cache_hits: AtomicU64,
    traces: AtomicU64,
    passed: AtomicU64,
    failures: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// A snapshot of the meter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterSnapshot {
    /// HTTP requests sent to the teacher, retries included.
    pub teacher_requests: u64,
    /// Of those, retries.
    pub retries: u64,
    /// Traces served from the cache.
    pub cache_hits: u64,
    /// Traces produced (cached or not).
    pub traces: u64,
    /// Of those, with code that passed its tests.
    pub passed: u64,
    /// Samples that produced no trace (teacher or executor error).
    pub failures: u64,
    /// Prompt tokens the teacher processed (cache hits excluded: they cost nothing).
    pub prompt_tokens: u64,
    /// Completion tokens the teacher generated (cache hits excluded).
    pub completion_tokens: u64,
}

impl MeterSnapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &MeterSnapshot) -> MeterSnapshot {
        MeterSnapshot {
            teacher_requests: self.teacher_requests - earlier.teacher_requests,
            retries: self.retries - earlier.retries,
            cache_hits: self.cache_hits - earlier.cache_hits,
            traces: self.traces - earlier.traces,
            passed: self.passed - earlier.passed,
            failures: self.failures - earlier.failures,
            prompt_tokens: self.prompt_tokens - earlier.prompt_tokens,
            completion_tokens: self.completion_tokens - earlier.completion_tokens,
        }
    }
}

/// Turns (problem, sample index) into verified trace records. Cheap to clone.
pub struct TraceSource<T, V> {
    inner: Arc<Inner<T, V>>,
}

impl<T, V> Clone for TraceSource<T, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T, V> {
    teacher: T,
    verifier: V,
    cache: Option<ResponseCache>,
    config: TeacherConfig,
    meter: Meter,
}

impl<T: Teacher, V: Verifier> TraceSource<T, V> {
    /// A source asking `teacher`, scoring with `verifier`, caching in `config.cache_dir`.
    pub fn new(config: &TeacherConfig, teacher: T, verifier: V) -> Result<Self> {
        config.validate()?;
        let cache = config
            .cache_dir
            .as_ref()
            .map(ResponseCache::open)
            .transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                teacher,
                verifier,
                cache,
                config: config.clone(),
                meter: Meter::default(),
            }),
        })
    }

    /// The teacher behind this source.
    pub fn teacher(&self) -> &T {
        &self.inner.teacher
    }

    /// The configuration in force.
    pub fn config(&self) -> &TeacherConfig {
        &self.inner.config
    }

    /// The request for sample `sample_index` of `problem`: the shared prompt rendering
    /// (`tgrpo_dataset::prompt::user_message`), after the optional system prompt.
    pub fn request_for(&self, problem: &Problem, sample_index: u32) -> ChatRequest {
        let config = &self.inner.config;
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = &config.system_prompt {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(prompt::user_message(problem)));
        ChatRequest {
            model: config.model_name.clone(),
            messages,
            temperature: config.temperature,
            top_p: config.top_p,
            presence_penalty: config.presence_penalty,
            max_tokens: config.max_tokens,
            stream: false,
            seed: config
                .seed
                .map(|seed| seed.wrapping_add(u64::from(sample_index))),
            chat_template_kwargs: config.enable_thinking.then_some(ChatTemplateKwargs {
                enable_thinking: true,
            }),
        }
    }

    /// The verified trace for sample `sample_index` of `problem`. Errors name the problem
    /// and sample.
    pub async fn trace(&self, problem: &Problem, sample_index: u32) -> Result<TraceOutcome> {
        crate::metrics::request();
        let result = self.trace_inner(problem, sample_index).await;
        let meter = &self.inner.meter;
        match &result {
            Ok(outcome) => {
                meter.traces.fetch_add(1, Ordering::Relaxed);
                if outcome.record.passed {
                    meter.passed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                crate::metrics::failure();
                meter.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result.map_err(|err| TeacherError::Sample {
            problem_id: problem.task_id.clone(),
            sample_index,
            source: Box::new(err),
        })
    }

    async fn trace_inner(&self, problem: &Problem, sample_index: u32) -> Result<TraceOutcome> {
        let inner = &*self.inner;
        let request = self.request_for(problem, sample_index);
        let key = request.cache_key(sample_index);
        let (body, from_cache, attempts) = match self.cached(&key).await {
            Some(body) => {
                inner.meter.cache_hits.fetch_add(1, Ordering::Relaxed);
                crate::metrics::cache_hit();
                (body, true, 0)
            }
            None => {
                let started = std::time::Instant::now();
                let reply = inner.teacher.chat(&request).await;
                let attempts = match &reply {
                    Ok(reply) => reply.attempts,
                    Err(err) => attempts_of(err),
                };
                crate::metrics::teacher_answered(attempts, started.elapsed());
                inner
                    .meter
                    .teacher_requests
                    .fetch_add(u64::from(attempts), Ordering::Relaxed);
                inner
                    .meter
                    .retries
                    .fetch_add(u64::from(attempts.saturating_sub(1)), Ordering::Relaxed);
                let reply = reply?;
                if let Some(cache) = &inner.cache {
                    let entry = CacheEntry {
                        key: key.clone(),
                        sample_index,
                        request: request.clone(),
                        response: reply.body.clone(),
                    };
                    // A cache that cannot be written costs money on the next run, but the
                    // answer in hand is still good: keep going.
                    if let Err(err) = cache.put(&entry).await {
                        tracing::warn!(%err, problem_id = %problem.task_id, "cannot cache a teacher answer");
                    }
                }
                (reply.body, false, reply.attempts)
            }
        };
        let response =
            ChatResponse::from_value(&body).map_err(|reason| TeacherError::MalformedResponse {
                endpoint: inner.teacher.describe(),
                attempts,
                reason,
            })?;
        let usage = response.usage.unwrap_or_default();
        if !from_cache {
            crate::metrics::tokens(usage.prompt_tokens, usage.completion_tokens);
            inner
                .meter
                .prompt_tokens
                .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
            inner
                .meter
                .completion_tokens
                .fetch_add(usage.completion_tokens, Ordering::Relaxed);
        }
        let record = self
            .record(problem, sample_index, request, key, &response, usage)
            .await?;
        Ok(TraceOutcome {
            record,
            from_cache,
            attempts,
        })
    }

    /// A cached answer that still parses as a completion.
    async fn cached(&self, key: &str) -> Option<serde_json::Value> {
        let entry = self.inner.cache.as_ref()?.get(key).await?;
        match ChatResponse::from_value(&entry.response) {
            Ok(_) => Some(entry.response),
            Err(reason) => {
                tracing::warn!(key, reason, "cached answer is not a completion; refetching");
                None
            }
        }
    }

    async fn record(
        &self,
        problem: &Problem,
        sample_index: u32,
        request: ChatRequest,
        request_hash: String,
        response: &ChatResponse,
        usage: Usage,
    ) -> Result<TraceRecord> {
        let choice = response.first();
        let message = &choice.message;
        let reasoning = message
            .reasoning_content
            .as_deref()
            .or(message.reasoning.as_deref());
        let split = split_thinking(message.content.as_deref(), reasoning);
        let code = extract_code(&split.answer, problem.entry_point.as_deref());
        let verification = match &code {
            Some(code) => self.inner.verifier.verify(problem, code).await?,
            None => Verification::no_code(),
        };
        Ok(TraceRecord {
            problem_id: problem.task_id.clone(),
            sample_index,
            messages: request.messages,
            thinking: split.thinking,
            answer: split.answer,
            code,
            raw_text: message.content.clone().unwrap_or_default(),
            finish_reason: choice.finish_reason.clone(),
            usage,
            teacher_model: response
                .model
                .clone()
                .unwrap_or_else(|| self.inner.config.model_name.clone()),
            request_hash,
            passed: verification.passed,
            reward: verification.reward,
            verdict: verification.verdict,
        })
    }

    /// The meter's current totals.
    pub fn meter(&self) -> MeterSnapshot {
        let meter = &self.inner.meter;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MeterSnapshot {
            teacher_requests: read(&meter.teacher_requests),
            retries: read(&meter.retries),
            cache_hits: read(&meter.cache_hits),
            traces: read(&meter.traces),
            passed: read(&meter.passed),
            failures: read(&meter.failures),
            prompt_tokens: read(&meter.prompt_tokens),
            completion_tokens: read(&meter.completion_tokens),
        }
    }
}

/// How many requests an error says were sent (1 when it does not say).
fn attempts_of(err: &TeacherError) -> u32 {
    match err.root() {
        TeacherError::Status { attempts, .. }
        | TeacherError::Transport { attempts, .. }
        | TeacherError::MalformedResponse { attempts, .. } => *attempts,
        _ => 1,
    }
}
