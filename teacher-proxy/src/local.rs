//! A local teacher: a policy-crate model in this process, behind the same [`Teacher`]
//! interface as the HTTP client, so that synthesis (and the proxy) work offline, e.g. in
//! local mode with a small model, or in tests with a tiny random one.
//!
//! Requests are rendered with the model's own chat template and sampled with the
//! request's temperature, top_p and max_tokens (presence_penalty and
//! `chat_template_kwargs` have no local equivalent and are ignored). The answer is wrapped
//! as an OpenAI chat completion body, so caching, parsing (inline `<think>` tags) and
//! verification are exactly those of a remote teacher. Generation is CPU/GPU-bound: it
//! runs on the blocking pool, `max_concurrent` calls at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tgrpo_policy::chat::Message;
use tgrpo_policy::{
    FinishReason, GenerationRequest, LoadOptions, ModelSource, Policy, SamplingParams,
};
use tokio::sync::Semaphore;

use crate::client::{Teacher, TeacherReply};
use crate::error::{Result, TeacherError};
use crate::wire::ChatRequest;

/// A policy model answering chat requests in-process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalTeacher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policy: Policy,
    name: String,
    permits: Semaphore,
    generations: AtomicU64,
}

impl LocalTeacher {
    /// Loads a model (an HF directory, a GGUF file, or a hub repo available offline) on
    /// the CPU; `name` is what traces record as the teacher model.
    pub fn load(spec: &str, name: impl Into<String>, max_concurrent: usize) -> Result<Self> {
        let policy = Policy::load(&ModelSource::parse(spec), &LoadOptions::default())
            .map_err(|err| TeacherError::Local(format!("loading {spec}: {err}")))?;
        Ok(Self::new(policy, name, max_concurrent))
    }

    /// Wraps an already loaded policy (its base model, adapter off).
    pub fn new(policy: Policy, name: impl Into<String>, max_concurrent: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                name: name.into(),
                permits: Semaphore::new(max_concurrent.max(1)),
                generations: AtomicU64::new(0),
            }),
        }
    }

    /// Completions generated so far (cache hits never reach the teacher).
    pub fn generations(&self) -> u64 {
        self.inner.generations.load(Ordering::Relaxed)
    }
}

impl Teacher for LocalTeacher {
    fn describe(&self) -> String {
        format!("local:{}", self.inner.name)
    }

    async fn chat(&self, request: &ChatRequest) -> Result<TeacherReply> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let inner = self.inner.clone();
        let request = request.clone();
        let body = tokio::task::spawn_blocking(move || generate(&inner, &request))
            .await
            .map_err(|err| TeacherError::Local(format!("generation task failed: {err}")))??;
        self.inner.generations.fetch_add(1, Ordering::Relaxed);
        Ok(TeacherReply { body, attempts: 1 })
    }
}

fn generate(inner: &Inner, request: &ChatRequest) -> Result<serde_json::Value> {
    let local = |err: tgrpo_policy::PolicyError| TeacherError::Local(err.to_string());
    let messages: Vec<Message> = request
        .messages
        .iter()
        .map(|message| Message::new(message.role.clone(), message.content.clone()))
        .collect();
    let prompt = inner.policy.chat_prompt(&messages).map_err(local)?;
    let prompt_tokens = prompt.len() as u64;
    let params = SamplingParams {
        temperature: request.temperature,
        top_p: request.top_p,
        max_new_tokens: request.max_tokens as usize,
        // Like a server without a seed: every call samples afresh (the cache keeps it).
        seed: request.seed.unwrap_or_else(rand::random),
        ..SamplingParams::default()
    };
    let mut generations = inner
        .policy
        .generate_with(&[GenerationRequest { prompt, params }], None)
        .map_err(local)?;
    let generation = generations
        .pop()
        .ok_or_else(|| TeacherError::Local("the model returned no generation".to_owned()))?;
    let finish_reason = match generation.finish_reason {
        FinishReason::Length => "length",
        FinishReason::Eos | FinishReason::Stop(_) => "stop",
    };
    let completion_tokens = generation.tokens.len() as u64;
    Ok(serde_json::json!({
        "id": format!("local-{}", inner.generations.load(Ordering::Relaxed)),
        "object": "chat.completion",
        "model": inner.name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": generation.text},
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
}

/// Either teacher, so that a binary can pick one at run time and still use the generic
/// pipeline.
#[derive(Debug, Clone)]
pub enum AnyTeacher {
    /// A remote OpenAI-compatible server.
    Http(crate::client::HttpTeacher),
    /// A model in this process.
    Local(LocalTeacher),
}

impl Teacher for AnyTeacher {
    fn describe(&self) -> String {
        match self {
            AnyTeacher::Http(teacher) => teacher.describe(),
            AnyTeacher::Local(teacher) => teacher.describe(),
        }
    }

    async fn chat(&self, request: &ChatRequest) -> Result<TeacherReply> {
        match self {
            AnyTeacher::Http(teacher) => teacher.chat(request).await,
            AnyTeacher::Local(teacher) => teacher.chat(request).await,
        }
    }
}
