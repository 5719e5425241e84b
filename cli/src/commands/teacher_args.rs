//! Flags that configure the teacher client, shared by `tgrpo synthesis`,
//! `tgrpo teacher-proxy` and `tgrpo check teacher`: an optional TOML file (its `[teacher]`
//! section, or the whole file when it has none), then each flag or `TGRPO_TEACHER_*`
//! variable given overrides one field. The API key comes only from the environment
//! (`TGRPO_TEACHER_API_KEY`, else `OPENAI_API_KEY`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tgrpo_teacher::{AnyTeacher, HttpTeacher, LocalTeacher, TeacherConfig};

/// Teacher client settings.
#[derive(Debug, Clone, Args)]
pub struct TeacherArgs {
    /// TOML file with a `[teacher]` section (fields of TeacherConfig; unknown keys are errors).
    #[arg(
        id = "teacher_config",
        long = "teacher-config",
        env = "TGRPO_TEACHER_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// The teacher's OpenAI-compatible chat completions URL [default: http://localhost:8129/v1/chat/completions].
    #[arg(long = "teacher-url", env = "TGRPO_TEACHER_URL")]
    pub url: Option<String>,

    /// Served model name [default: Qwen/Qwen3-32B-FP8].
    #[arg(
        id = "teacher_model",
        long = "teacher-model",
        env = "TGRPO_TEACHER_MODEL"
    )]
    pub model: Option<String>,

    /// Requests in flight at the teacher at most [default: 32].
    #[arg(long, env = "TGRPO_TEACHER_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,

    /// Per-request limit in seconds [default: 60].
    #[arg(long = "teacher-timeout-s", env = "TGRPO_TEACHER_TIMEOUT_S")]
    pub timeout_s: Option<f64>,

    /// Retries after the first attempt [default: 3].
    #[arg(long = "teacher-max-retries", env = "TGRPO_TEACHER_MAX_RETRIES")]
    pub max_retries: Option<u32>,

    /// Completion token budget, thinking included [default: 2048].
    #[arg(long = "teacher-max-tokens", env = "TGRPO_TEACHER_MAX_TOKENS")]
    pub max_tokens: Option<u32>,

    /// Directory of the response cache [default: data/teacher_cache].
    #[arg(long = "teacher-cache-dir", env = "TGRPO_TEACHER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Turn the response cache off (every run pays for every answer).
    #[arg(long = "no-teacher-cache", env = "TGRPO_TEACHER_NO_CACHE")]
    pub no_cache: bool,

    /// Use a local model instead of the HTTP teacher (an HF directory, a `.gguf` file, or
    /// `org/name[@revision]` from the hub cache): synthesis without a network.
    #[arg(long = "teacher-local-model", env = "TGRPO_TEACHER_LOCAL_MODEL")]
    pub local_model: Option<String>,

    /// Ask without `chat_template_kwargs.enable_thinking`.
    #[arg(long = "no-thinking", env = "TGRPO_TEACHER_NO_THINKING")]
    pub no_thinking: bool,
}

impl TeacherArgs {
    /// The validated config: file (or defaults), then the flags given.
    pub fn to_config(&self) -> anyhow::Result<TeacherConfig> {
        let base = match &self.config {
            Some(path) => read_config(path)?,
            None => TeacherConfig::default(),
        };
        self.to_config_over(base)
    }

    /// `base` (a run config's `[teacher]` section) with the flags given applied on top.
    pub fn to_config_over(&self, base: TeacherConfig) -> anyhow::Result<TeacherConfig> {
        let mut config = base;
        if let Some(url) = &self.url {
            config.api_url.clone_from(url);
        }
        if let Some(model) = &self.model {
            config.model_name.clone_from(model);
        }
        if let Some(limit) = self.max_concurrent_requests {
            config.max_concurrent_requests = limit;
        }
        if let Some(timeout_s) = self.timeout_s {
            config.timeout_s = timeout_s;
        }
        if let Some(retries) = self.max_retries {
            config.max_retries = retries;
        }
        if let Some(tokens) = self.max_tokens {
            config.max_tokens = tokens;
        }
        if let Some(dir) = &self.cache_dir {
            config.cache_dir = Some(dir.clone());
        }
        if self.no_cache {
            config.cache_dir = None;
        }
        if self.no_thinking {
            config.enable_thinking = false;
        }
        config.validate()?;
        Ok(config)
    }

    /// The teacher these flags pick: the local model when one is given, else the HTTP
    /// client for `config.api_url`.
    pub fn teacher(&self, config: &TeacherConfig) -> anyhow::Result<AnyTeacher> {
        Ok(match &self.local_model {
            Some(spec) => {
                AnyTeacher::Local(LocalTeacher::load(spec, config.model_name.clone(), 1)?)
            }
            None => AnyTeacher::Http(HttpTeacher::new(config, Self::api_key())?),
        })
    }

    /// The API key from the environment, if any.
    pub fn api_key() -> Option<String> {
        tgrpo_teacher::config::api_key_from_env(|name| std::env::var(name).ok())
    }
}

fn read_config(path: &PathBuf) -> anyhow::Result<TeacherConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read teacher config {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let section = match table.remove("teacher") {
        Some(toml::Value::Table(section)) => section,
        Some(_) => anyhow::bail!("{}: `teacher` is not a table", path.display()),
        None => table,
    };
    section
        .try_into()
        .with_context(|| format!("{}: invalid [teacher] section", path.display()))
}
