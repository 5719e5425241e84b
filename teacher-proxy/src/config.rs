//! `[teacher]`: the teacher proxy's section of the tgrpo config.
//!
//! Defaults are the seed's TeacherConfig (Qwen3-32B-FP8 behind vLLM, temperature 0.7,
//! top_p 0.8, presence_penalty 1.5, 2048 tokens, thinking on, 8 samples per problem,
//! 32 concurrent requests, 60 s timeout, 3 retries), plus the durability settings the seed
//! lacked (response cache, traces file). The API key is deliberately NOT a config field:
//! secrets do not belong in files that get committed; it comes from the environment
//! (see [`api_key_from_env`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TeacherError};

/// Environment variables holding the teacher's API key, in order of precedence.
pub const API_KEY_ENV_VARS: [&str; 2] = ["TGRPO_TEACHER_API_KEY", "OPENAI_API_KEY"];

/// Every setting of the teacher client, the synthesis stage and the proxy service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherConfig {
    /// The teacher's OpenAI-compatible chat completions endpoint.
    pub api_url: String,
    /// The `model` field of each request (what the server serves it as).
    pub model_name: String,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// OpenAI presence penalty; Qwen3 recommends 1.5 against endless thinking loops.
    pub presence_penalty: f64,
    /// Completion token budget, thinking included.
    pub max_tokens: u32,
    /// Sends `chat_template_kwargs: {"enable_thinking": true}` (Qwen3's thinking switch).
    pub enable_thinking: bool,
    /// Optional system message put before the problem.
    pub system_prompt: Option<String>,
    /// When set, each request carries `seed = seed + sample_index`, so servers that honour
    /// it (vLLM does) give reproducible samples. Unset in the seed.
    pub seed: Option<u64>,
    /// Samples requested per training problem by `tgrpo synthesis`.
    pub num_samples_per_problem: u32,
    /// Requests in flight at the teacher at most.
    pub max_concurrent_requests: usize,
    /// Limit on one request (connect + generate + read), in seconds.
    pub timeout_s: f64,
    /// Limit on establishing the TCP (and TLS) connection, in seconds.
    pub connect_timeout_s: f64,
    /// Retries after the first attempt, on connection errors, timeouts, 429, 5xx and
    /// malformed answers. Other 4xx are never retried.
    pub max_retries: u32,
    /// First backoff; each retry doubles it, with full jitter.
    pub backoff_initial_ms: u64,
    /// Cap on one backoff.
    pub backoff_max_ms: u64,
    /// Cap on a server's Retry-After, in seconds (a misconfigured server can ask for hours).
    pub max_retry_after_s: f64,
    /// Directory of the content-addressed response cache; `None` turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// The traces file the synthesis stage writes (and resumes).
    pub traces_path: PathBuf,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        Self {
            api_url: "http://localhost:8129/v1/chat/completions".to_owned(),
            model_name: "Qwen/Qwen3-32B-FP8".to_owned(),
            temperature: 0.7,
            top_p: 0.8,
            presence_penalty: 1.5,
            max_tokens: 2048,
            enable_thinking: true,
            system_prompt: None,
            seed: None,
            num_samples_per_problem: 8,
            max_concurrent_requests: 32,
            timeout_s: 60.0,
            connect_timeout_s: 10.0,
            max_retries: 3,
            backoff_initial_ms: 2_000,
            backoff_max_ms: 10_000,
            max_retry_after_s: 120.0,
            cache_dir: Some(PathBuf::from("data/teacher_cache")),
            traces_path: PathBuf::from("data/synthetic_traces.jsonl"),
        }
    }
}

impl TeacherConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &'static str, reason: impl Into<String>) -> Result<()> {
            Err(TeacherError::Config {
                field,
                reason: reason.into(),
            })
        }
        match reqwest::Url::parse(&self.api_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => {
                return bad(
                    "api_url",
                    format!("scheme {:?} is not http(s)", url.scheme()),
                );
            }
            Err(err) => return bad("api_url", format!("{:?} is not a URL: {err}", self.api_url)),
        }
        if self.model_name.trim().is_empty() {
            return bad("model_name", "must not be empty");
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return bad(
                "temperature",
                format!("{} is outside [0, 2]", self.temperature),
            );
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if !(self.presence_penalty.is_finite() && (-2.0..=2.0).contains(&self.presence_penalty)) {
            return bad(
                "presence_penalty",
                format!("{} is outside [-2, 2]", self.presence_penalty),
            );
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "must be at least 1");
        }
        if self.num_samples_per_problem == 0 {
            return bad("num_samples_per_problem", "must be at least 1");
        }
        if self.max_concurrent_requests == 0 {
            return bad("max_concurrent_requests", "must be at least 1");
        }
        for (field, seconds) in [
            ("timeout_s", self.timeout_s),
            ("connect_timeout_s", self.connect_timeout_s),
        ] {
            if !(seconds.is_finite() && seconds > 0.0) {
                return bad(
                    field,
                    format!("{seconds} is not a positive number of seconds"),
                );
            }
        }
        if !(self.max_retry_after_s.is_finite() && self.max_retry_after_s >= 0.0) {
            return bad(
                "max_retry_after_s",
                format!("{} is not a number of seconds", self.max_retry_after_s),
            );
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return bad(
                "backoff_max_ms",
                format!(
                    "{} is below backoff_initial_ms ({})",
                    self.backoff_max_ms, self.backoff_initial_ms
                ),
            );
        }
        if self.traces_path.as_os_str().is_empty() {
            return bad("traces_path", "must not be empty");
        }
        if self
            .cache_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            return bad(
                "cache_dir",
                "must not be empty (leave it out to turn the cache off)",
            );
        }
        Ok(())
    }

    /// The per-request limit as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }

    /// The connect limit as a [`Duration`].
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout_s)
    }
}

/// Reads the teacher's API key from `TGRPO_TEACHER_API_KEY`, else `OPENAI_API_KEY`.
///
/// `lookup` is the environment (pass `|name| std::env::var(name).ok()`); taking it as a
/// function lets tests feed a map instead of mutating the process environment.
pub fn api_key_from_env(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    API_KEY_ENV_VARS
        .iter()
        .filter_map(|name| lookup(name))
        .map(|key| key.trim().to_owned())
        .find(|key| !key.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_and_valid() {
        let config = TeacherConfig::default();
        config.validate().unwrap();
        assert_eq!(config.model_name, "Qwen/Qwen3-32B-FP8");
        assert_eq!(config.temperature, 0.7);
        assert_eq!(config.top_p, 0.8);
        assert_eq!(config.presence_penalty, 1.5);
        assert_eq!(config.num_samples_per_problem, 8);
        assert_eq!(config.max_concurrent_requests, 32);
        assert!(config.enable_thinking);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = toml::from_str::<TeacherConfig>("model_name = \"m\"\ntemprature = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("temprature"), "{err}");
    }

    #[test]
    fn partial_toml_keeps_defaults() {
        let config: TeacherConfig =
            toml::from_str("max_concurrent_requests = 4\ncache_dir = \"/tmp/c\"\n").unwrap();
        assert_eq!(config.max_concurrent_requests, 4);
        assert_eq!(config.cache_dir, Some(PathBuf::from("/tmp/c")));
        assert_eq!(config.max_tokens, TeacherConfig::default().max_tokens);
    }

    #[test]
    fn validate_names_the_bad_field() {
        type Mutation = Box<dyn Fn(&mut TeacherConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("api_url", Box::new(|c| c.api_url = "not a url".into())),
            ("api_url", Box::new(|c| c.api_url = "ftp://host/x".into())),
            ("model_name", Box::new(|c| c.model_name = " ".into())),
            ("temperature", Box::new(|c| c.temperature = f64::NAN)),
            ("top_p", Box::new(|c| c.top_p = 0.0)),
            ("presence_penalty", Box::new(|c| c.presence_penalty = 3.0)),
            ("max_tokens", Box::new(|c| c.max_tokens = 0)),
            (
                "num_samples_per_problem",
                Box::new(|c| c.num_samples_per_problem = 0),
            ),
            (
                "max_concurrent_requests",
                Box::new(|c| c.max_concurrent_requests = 0),
            ),
            ("timeout_s", Box::new(|c| c.timeout_s = -1.0)),
            ("connect_timeout_s", Box::new(|c| c.connect_timeout_s = 0.0)),
            ("backoff_max_ms", Box::new(|c| c.backoff_max_ms = 1)),
            ("traces_path", Box::new(|c| c.traces_path = PathBuf::new())),
            (
                "cache_dir",
                Box::new(|c| c.cache_dir = Some(PathBuf::new())),
            ),
        ];
        for (field, mutate) in cases {
            let mut config = TeacherConfig::default();
            mutate(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
    }

    #[test]
    fn api_key_precedence_and_blank_values() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        assert_eq!(api_key_from_env(env(&[])), None);
        assert_eq!(
            api_key_from_env(env(&[("OPENAI_API_KEY", "sk-1")])),
            Some("sk-1".into())
        );
        assert_eq!(
            api_key_from_env(env(&[
                ("OPENAI_API_KEY", "sk-1"),
                ("TGRPO_TEACHER_API_KEY", "tg")
            ])),
            Some("tg".into())
        );
        assert_eq!(
            api_key_from_env(env(&[
                ("TGRPO_TEACHER_API_KEY", " "),
                ("OPENAI_API_KEY", "sk")
            ])),
            Some("sk".into())
        );
    }
}
