//! The `[executor]` configuration section: pool size, queue, limits of every sandbox,
//! reward defaults. `Default` is the production setting; `validate()` names the first
//! bad field.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ExecutorError;

/// Everything an executor (in-process pool or gRPC service) needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Sandbox slots, i.e. programs run at the same time; 0 means one per CPU core.
    pub slots: usize,
    /// Requests the gRPC service admits beyond the busy slots before answering
    /// `RESOURCE_EXHAUSTED`; bounds the memory a flood of clients can take.
    pub queue_capacity: usize,
    /// Wall-clock limit of an execution whose request names none.
    pub default_timeout_s: f64,
    /// Largest wall-clock limit a request may ask for.
    pub max_timeout_s: f64,
    /// The interpreter the sandboxes run (CPython >= 3.9).
    pub python: PathBuf,
    /// Runs programs WITHOUT namespaces, uid switch or a private root filesystem, for
    /// hosts that cannot give them. Verdicts stay unforgeable; the host does not.
    pub unsafe_no_sandbox: bool,
    /// First of the unprivileged uids the sandboxes run as: slot `i` runs programs as
    /// `uid_base + 2i` and tests as `uid_base + 2i + 1`. No other process on the host
    /// may use these uids (RLIMIT_NPROC and signal permissions are per uid).
    pub uid_base: u32,
    /// Per-execution resource limits.
    pub limits: SandboxLimits,
    /// Defaults of the scaled reward; a request may override each field.
    pub scaled_reward: ScaledRewardConfig,
    /// Largest program (and largest single test) accepted, in bytes.
    pub max_code_bytes: usize,
    /// Most tests a request may carry.
    pub max_tests: usize,
    /// How long a SIGTERM'd service keeps serving in-flight requests before it stops.
    pub drain_timeout_s: f64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            slots: 0,
            queue_capacity: 256,
            default_timeout_s: 10.0,
            max_timeout_s: 120.0,
            python: PathBuf::from("/usr/bin/python3"),
            unsafe_no_sandbox: false,
            uid_base: 50_000,
            limits: SandboxLimits::default(),
            scaled_reward: ScaledRewardConfig::default(),
            max_code_bytes: 1 << 20,
            max_tests: 1000,
            drain_timeout_s: 30.0,
        }
    }
}

/// Limits applied to every execution (rlimits of the program process, sizes of the
/// captured output and of the private work directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// RLIMIT_AS of the program: its address space.
    pub memory_bytes: u64,
    /// RLIMIT_AS of the trusted test process (it decodes what the program returns).
    pub tester_memory_bytes: u64,
    /// RLIMIT_CPU; 0 derives it from the wall-clock timeout (rounded up, plus one).
    pub cpu_seconds: u64,
    /// RLIMIT_FSIZE: largest file the program may write.
    pub file_size_bytes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_NPROC of the program's uid: processes and threads, the program included.
    pub processes: u64,
    /// Bytes kept of stdout and of stderr each; the rest is counted and dropped.
    pub output_bytes: usize,
    /// Size of the tmpfs that is the program's working directory (and /tmp).
    pub workdir_bytes: u64,
    /// Largest single message the program may send the tests (a return value).
    pub max_message_bytes: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 1 << 30,
            tester_memory_bytes: 2 << 30,
            cpu_seconds: 0,
            file_size_bytes: 16 << 20,
            open_files: 64,
            processes: 32,
            output_bytes: 64 << 10,
            workdir_bytes: 64 << 20,
            max_message_bytes: 16 << 20,
        }
    }
}

/// Parameters of the scaled reward (`REWARD_KIND_SCALED`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaledRewardConfig {
    /// Reward per fraction of tests passed.
    pub pass_weight: f64,
    /// Added when every test passed.
    pub all_pass_bonus: f64,
    /// The reward of a program that does not compile.
    pub syntax_error_penalty: f64,
    /// The reward of a program that ran out of time.
    pub timeout_penalty: f64,
}

impl Default for ScaledRewardConfig {
    fn default() -> Self {
        Self {
            pass_weight: 1.0,
            all_pass_bonus: 0.0,
            syntax_error_penalty: -1.0,
            timeout_penalty: -0.5,
        }
    }
}

fn bad(field: &str, reason: impl Into<String>) -> ExecutorError {
    ExecutorError::InvalidConfig {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn positive_finite(field: &str, value: f64) -> Result<(), ExecutorError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("must be a positive number, got {value}"),
        ))
    }
}

impl ExecutorConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ExecutorError> {
        positive_finite("executor.default_timeout_s", self.default_timeout_s)?;
        positive_finite("executor.max_timeout_s", self.max_timeout_s)?;
        positive_finite("executor.drain_timeout_s", self.drain_timeout_s)?;
        if self.default_timeout_s > self.max_timeout_s {
            return Err(bad(
                "executor.default_timeout_s",
                format!(
                    "{} exceeds executor.max_timeout_s {}",
                    self.default_timeout_s, self.max_timeout_s
                ),
            ));
        }
        if self.slots > 1024 {
            return Err(bad("executor.slots", "at most 1024"));
        }
        let slots = self.effective_slots() as u64;
        if u64::from(self.uid_base) == 0
            || u64::from(self.uid_base) + 2 * slots >= u64::from(u32::MAX)
        {
            return Err(bad(
                "executor.uid_base",
                "must be non-zero and leave room for two uids per slot",
            ));
        }
        if self.python.as_os_str().is_empty() {
            return Err(bad("executor.python", "must name an interpreter"));
        }
        if self.max_code_bytes == 0 {
            return Err(bad("executor.max_code_bytes", "must be positive"));
        }
        if self.max_tests == 0 {
            return Err(bad("executor.max_tests", "must be positive"));
        }
        self.limits.validate()?;
        self.scaled_reward.validate("executor.scaled_reward")?;
        Ok(())
    }

    /// The number of slots after resolving 0 to the number of cores.
    pub fn effective_slots(&self) -> usize {
        if self.slots > 0 {
            self.slots
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Default wall-clock limit as a `Duration`.
    pub fn default_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.default_timeout_s)
    }

    /// Drain period as a `Duration`.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_s)
    }
}

impl SandboxLimits {
    /// Checks every limit; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ExecutorError> {
        let at_least = |field: &str, value: u64, min: u64| {
            if value < min {
                Err(bad(field, format!("must be at least {min}, got {value}")))
            } else {
                Ok(())
            }
        };
        // Python itself needs some room: below these it cannot even start.
        at_least("executor.limits.memory_bytes", self.memory_bytes, 64 << 20)?;
        at_least(
            "executor.limits.tester_memory_bytes",
            self.tester_memory_bytes,
            64 << 20,
        )?;
        at_least("executor.limits.file_size_bytes", self.file_size_bytes, 1)?;
        at_least("executor.limits.open_files", self.open_files, 16)?;
        at_least("executor.limits.processes", self.processes, 1)?;
        at_least(
            "executor.limits.workdir_bytes",
            self.workdir_bytes,
            64 << 10,
        )?;
        at_least(
            "executor.limits.max_message_bytes",
            self.max_message_bytes,
            4 << 10,
        )?;
        if self.output_bytes == 0 {
            return Err(bad("executor.limits.output_bytes", "must be positive"));
        }
        Ok(())
    }

    /// RLIMIT_CPU for an execution with this wall-clock limit.
    pub fn cpu_seconds_for(&self, timeout: Duration) -> u64 {
        if self.cpu_seconds > 0 {
            self.cpu_seconds
        } else {
            timeout.as_secs_f64().ceil() as u64 + 1
        }
    }
}

impl ScaledRewardConfig {
    /// Every weight must be a finite number.
    pub fn validate(&self, section: &str) -> Result<(), ExecutorError> {
        for (name, value) in [
            ("pass_weight", self.pass_weight),
            ("all_pass_bonus", self.all_pass_bonus),
            ("syntax_error_penalty", self.syntax_error_penalty),
            ("timeout_penalty", self.timeout_penalty),
        ] {
            if !value.is_finite() {
                return Err(bad(
                    &format!("{section}.{name}"),
                    format!("must be finite, got {value}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ExecutorConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let config = ExecutorConfig {
            default_timeout_s: 200.0,
            ..ExecutorConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("executor.default_timeout_s"), "{err}");

        let mut config = ExecutorConfig::default();
        config.limits.memory_bytes = 1000;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("executor.limits.memory_bytes"), "{err}");

        let mut config = ExecutorConfig::default();
        config.scaled_reward.timeout_penalty = f64::NAN;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("executor.scaled_reward.timeout_penalty"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<ExecutorConfig>(r#"{"slotz": 3}"#).unwrap_err();
        assert!(err.to_string().contains("slotz"), "{err}");
        let parsed: ExecutorConfig = serde_json::from_str(r#"{"slots": 3}"#).unwrap();
        assert_eq!(parsed.slots, 3);
        assert_eq!(
            parsed.queue_capacity,
            ExecutorConfig::default().queue_capacity
        );
    }

    #[test]
    fn cpu_limit_follows_the_timeout() {
        let limits = SandboxLimits::default();
        assert_eq!(limits.cpu_seconds_for(Duration::from_millis(2500)), 4);
        let fixed = SandboxLimits {
            cpu_seconds: 7,
            ..SandboxLimits::default()
        };
        assert_eq!(fixed.cpu_seconds_for(Duration::from_secs(100)), 7);
    }
}
