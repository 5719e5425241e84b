//! The `[rollout]` configuration section: who the worker is, where the learner and the
//! executors are, which model it samples with, and how it retries. `Default` is the
//! production setting; [`RolloutConfig::validate`] names the first bad field.
//!
//! What to sample (G, temperature, top-p, top-k, max new tokens) is *not* here: the learner
//! sends its `[grpo]` settings with every lease, so all workers sample the same way.

use std::time::Duration;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use tgrpo_executor::ClientConfig;
use tgrpo_policy::{LoadOptions, ModelSource};

use crate::backoff::BackoffConfig;
use crate::error::{Result, RolloutError};
use crate::learner::LearnerTimeouts;
use crate::sampling::{SamplerConfig, ScoringConfig};

/// Everything a rollout worker needs (`[rollout]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// The worker's name in the learner's logs and leases; empty means `HOSTNAME-PID`.
    pub worker_id: String,
    /// The learner's gRPC address (`host:port` or `http://host:port`).
    pub learner_endpoint: String,
    /// Remote executors (`host:port` each), balanced; empty scores in an in-process
    /// sandbox pool configured by the `[executor]` section.
    pub executor_endpoints: Vec<String>,
    /// Settings of the balancing executor client (remote executors only).
    pub executor_client: ClientConfig,
    /// Prompts asked for per lease; 0 takes the learner's per-lease maximum.
    pub max_prompts_per_lease: usize,
    /// Most sequences generated in one batch (prompts × G are split into such batches).
    pub max_batch_sequences: usize,
    /// Rewards: kind, scaled-reward parameters, per-execution time limit.
    pub scoring: ScoringConfig,
    /// Run seed of the sampling streams: a completion's seed derives from it, the item id
    /// and the completion's index, so a rerun samples the same completions.
    pub seed: u64,
    /// The base model: an HF directory, a `.gguf` file, or `org/name[@revision]` on the hub.
    pub model: String,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `auto` (f32 on CPU, bf16 on CUDA), `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// The run whose adapters the worker follows (the broadcast's run id).
    pub run_id: String,
    /// Backoff while the learner, the executors or NATS are away.
    pub backoff: BackoffConfig,
    /// Deadline of a TCP connect to the learner, in seconds.
    pub connect_timeout_s: f64,
    /// Deadline of a `NextPrompts` call, in seconds.
    pub request_timeout_s: f64,
    /// Deadline of a `SubmitGroups` call, in seconds (the learner holds it while its
    /// buffer is full).
    pub submit_timeout_s: f64,
    /// When a lease says the learner is at a newer adapter than the worker holds, wait up
    /// to this many seconds for the broadcast to deliver it before sampling (sampling with
    /// an old adapter risks groups dropped as stale). 0 never waits.
    pub adapter_wait_s: f64,
    /// On shutdown, how long a submission of already scored groups may still take.
    pub shutdown_grace_s: f64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            worker_id: String::new(),
            learner_endpoint: "http://127.0.0.1:50052".to_string(),
            executor_endpoints: Vec::new(),
            executor_client: ClientConfig::default(),
            max_prompts_per_lease: 0,
            max_batch_sequences: 64,
            scoring: ScoringConfig::default(),
            seed: 42,
            model: "Qwen/Qwen2.5-Coder-1.5B-Instruct".to_string(),
            device: "cpu".to_string(),
            dtype: "auto".to_string(),
            run_id: "tgrpo".to_string(),
            backoff: BackoffConfig::default(),
            connect_timeout_s: 5.0,
            request_timeout_s: 30.0,
            submit_timeout_s: 600.0,
            adapter_wait_s: 30.0,
            shutdown_grace_s: 5.0,
        }
    }
}

fn positive(field: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(RolloutError::config(
            format!("rollout.{field}"),
            format!("must be a positive number of seconds, got {value}"),
        ))
    }
}

impl RolloutConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.learner_endpoint.trim().is_empty() {
            return Err(RolloutError::config("rollout.learner_endpoint", "is empty"));
        }
        if let Some(endpoint) = self.executor_endpoints.iter().find(|e| e.trim().is_empty()) {
            return Err(RolloutError::config(
                "rollout.executor_endpoints",
                format!("holds an empty endpoint `{endpoint}`"),
            ));
        }
        self.executor_client
            .validate()
            .map_err(|err| RolloutError::config("rollout.executor_client", err.to_string()))?;
        if self.max_batch_sequences == 0 {
            return Err(RolloutError::config(
                "rollout.max_batch_sequences",
                "must be positive",
            ));
        }
        self.scoring.validate("rollout.scoring")?;
        if self.model.trim().is_empty() {
            return Err(RolloutError::config("rollout.model", "is empty"));
        }
        let on_cpu = parse_device_spec(&self.device)?.is_none();
        parse_dtype(&self.dtype, on_cpu)?;
        if self.run_id.trim().is_empty() {
            return Err(RolloutError::config("rollout.run_id", "is empty"));
        }
        self.backoff.validate("rollout.backoff")?;
        positive("connect_timeout_s", self.connect_timeout_s)?;
        positive("request_timeout_s", self.request_timeout_s)?;
        positive("submit_timeout_s", self.submit_timeout_s)?;
        if !(self.adapter_wait_s.is_finite() && self.adapter_wait_s >= 0.0) {
            return Err(RolloutError::config(
                "rollout.adapter_wait_s",
                format!(
                    "must be a number of seconds ≥ 0, got {}",
                    self.adapter_wait_s
                ),
            ));
        }
        positive("shutdown_grace_s", self.shutdown_grace_s)?;
        Ok(())
    }

    /// The worker id, or `HOSTNAME-PID` when none is configured.
    pub fn effective_worker_id(&self) -> String {
        if !self.worker_id.trim().is_empty() {
            return self.worker_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "worker".to_string());
        format!("{host}-{}", std::process::id())
    }

    /// Where the model comes from.
    pub fn model_source(&self) -> ModelSource {
        ModelSource::parse(&self.model)
    }

    /// Device and dtype of the weights: opens the device named by `device`.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let device = parse_device(&self.device)?;
        let dtype = parse_dtype(&self.dtype, device.is_cpu())?;
        Ok(LoadOptions { device, dtype })
    }

    /// The sampler settings this config describes.
    pub fn sampler_config(&self) -> SamplerConfig {
        SamplerConfig {
            max_batch_sequences: self.max_batch_sequences,
            scoring: self.scoring.clone(),
            score_retry: self.backoff.clone(),
            score_attempts: 0,
        }
    }

    /// Deadlines of the learner calls.
    pub fn learner_timeouts(&self) -> LearnerTimeouts {
        LearnerTimeouts {
            connect: Duration::from_secs_f64(self.connect_timeout_s),
            request: Duration::from_secs_f64(self.request_timeout_s),
            submit: Duration::from_secs_f64(self.submit_timeout_s),
        }
    }
}

/// Which device a `device` string names (`None`: the CPU); see
/// [`tgrpo_policy::device::parse_device_spec`].
pub fn parse_device_spec(text: &str) -> Result<Option<usize>> {
    tgrpo_policy::device::parse_device_spec(text)
        .map_err(|message| RolloutError::config("rollout.device", message))
}

/// Opens the device a `device` string names. A CUDA device in a build without the `cuda`
/// feature fails here, with candle's reason.
pub fn parse_device(text: &str) -> Result<Device> {
    tgrpo_policy::device::open_device(text)
        .map_err(|message| RolloutError::config("rollout.device", message))
}

/// `auto`, `f32`, `bf16` or `f16`; `auto` is f32 on the CPU and bf16 on a GPU.
pub fn parse_dtype(text: &str, on_cpu: bool) -> Result<DType> {
    tgrpo_policy::device::parse_dtype(text, on_cpu)
        .map_err(|message| RolloutError::config("rollout.dtype", message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RolloutConfig::default().validate().unwrap();
        let options = RolloutConfig::default().load_options().unwrap();
        assert!(options.device.is_cpu());
        assert_eq!(options.dtype, DType::F32);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: Vec<(RolloutConfig, &str)> = vec![
            (
                RolloutConfig {
                    learner_endpoint: " ".into(),
                    ..Default::default()
                },
                "rollout.learner_endpoint",
            ),
            (
                RolloutConfig {
                    executor_endpoints: vec!["a:1".into(), String::new()],
                    ..Default::default()
                },
                "rollout.executor_endpoints",
            ),
            (
                RolloutConfig {
                    max_batch_sequences: 0,
                    ..Default::default()
                },
                "rollout.max_batch_sequences",
            ),
            (
                RolloutConfig {
                    device: "tpu".into(),
                    ..Default::default()
                },
                "rollout.device",
            ),
            (
                RolloutConfig {
                    dtype: "int4".into(),
                    ..Default::default()
                },
                "rollout.dtype",
            ),
            (
                RolloutConfig {
                    model: String::new(),
                    ..Default::default()
                },
                "rollout.model",
            ),
            (
                RolloutConfig {
                    submit_timeout_s: 0.0,
                    ..Default::default()
                },
                "rollout.submit_timeout_s",
            ),
            (
                RolloutConfig {
                    adapter_wait_s: -1.0,
                    ..Default::default()
                },
                "rollout.adapter_wait_s",
            ),
            (
                RolloutConfig {
                    run_id: String::new(),
                    ..Default::default()
                },
                "rollout.run_id",
            ),
            (
                RolloutConfig {
                    scoring: ScoringConfig {
                        execution_timeout_s: Some(0.0),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "rollout.scoring.execution_timeout_s",
            ),
            (
                RolloutConfig {
                    backoff: BackoffConfig {
                        multiplier: 0.5,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "rollout.backoff.multiplier",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "expected {field} in: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err =
            toml::from_str::<RolloutConfig>("worker_id = \"w\"\nmax_batch = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_batch"), "{err}");
        let nested =
            toml::from_str::<RolloutConfig>("[scoring]\nreward = \"binary\"\n").unwrap_err();
        assert!(nested.to_string().contains("reward"), "{nested}");
    }

    #[test]
    fn a_partial_toml_keeps_the_other_defaults() {
        let config: RolloutConfig = toml::from_str(
            "learner_endpoint = \"learner:50052\"\nexecutor_endpoints = [\"e1:50051\", \"e2:50051\"]\n[scoring]\nreward_kind = \"scaled\"\nexecution_timeout_s = 5.0\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.executor_endpoints.len(), 2);
        assert_eq!(
            config.scoring.reward_kind,
            crate::sampling::RewardKind::Scaled
        );
        assert_eq!(
            config.max_batch_sequences,
            RolloutConfig::default().max_batch_sequences
        );
    }

    #[test]
    fn worker_id_defaults_to_host_and_pid() {
        let id = RolloutConfig::default().effective_worker_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        let named = RolloutConfig {
            worker_id: "w7".into(),
            ..Default::default()
        };
        assert_eq!(named.effective_worker_id(), "w7");
    }

    #[test]
    fn devices_and_dtypes_parse() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert_eq!(parse_device_spec("cuda").unwrap(), Some(0));
        assert_eq!(parse_device_spec("cuda:3").unwrap(), Some(3));
        assert!(
            parse_device_spec("cuda:x")
                .unwrap_err()
                .to_string()
                .contains("cuda:x")
        );
        assert_eq!(parse_dtype("bf16", true).unwrap(), DType::BF16);
        assert_eq!(parse_dtype("auto", true).unwrap(), DType::F32);
        assert_eq!(parse_dtype("auto", false).unwrap(), DType::BF16);
        // Validation parses without opening the device.
        let gpu = RolloutConfig {
            device: "cuda:1".into(),
            ..Default::default()
        };
        gpu.validate().unwrap();
    }
}
