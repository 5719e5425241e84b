//! Flags that configure a local sandbox pool, shared by `tgrpo executor`, `tgrpo score`
//! and `tgrpo bench executor`. Defaults equal `ExecutorConfig::default()` (a test
//! checks it), so a flag left out means the production default.

use std::path::PathBuf;

use clap::Args;
use tgrpo_executor::ExecutorConfig;

/// How the sandboxes of a local pool run.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Sandbox slots (programs run at once); 0 = one per CPU core.
    #[arg(long, env = "TGRPO_EXECUTOR_SLOTS", default_value_t = 0)]
    pub slots: usize,

    /// Wall-clock limit of a program whose request names none, in seconds.
    #[arg(long, env = "TGRPO_EXECUTOR_DEFAULT_TIMEOUT_S", default_value_t = 10.0)]
    pub default_timeout_s: f64,

    /// Largest wall-clock limit a request may ask for, in seconds.
    #[arg(long, env = "TGRPO_EXECUTOR_MAX_TIMEOUT_S", default_value_t = 120.0)]
    pub max_timeout_s: f64,

    /// Address-space limit of each program, in MiB.
    #[arg(long, env = "TGRPO_EXECUTOR_MEMORY_LIMIT_MB", default_value_t = 1024)]
    pub memory_limit_mb: u64,

    /// Processes (and threads) a program may have at once.
    #[arg(long, env = "TGRPO_EXECUTOR_MAX_PROCESSES", default_value_t = 32)]
    pub max_processes: u64,

    /// Bytes of stdout and of stderr kept per program (the rest is counted, dropped).
    #[arg(
        long,
        env = "TGRPO_EXECUTOR_OUTPUT_LIMIT_BYTES",
        default_value_t = 65536
    )]
    pub output_limit_bytes: usize,

    /// First of the unprivileged uids programs and tests run as (two per slot); no
    /// other process on the host may use them.
    #[arg(long, env = "TGRPO_EXECUTOR_UID_BASE", default_value_t = 50_000)]
    pub uid_base: u32,

    /// The python interpreter of the sandboxes.
    #[arg(
        long,
        env = "TGRPO_EXECUTOR_PYTHON",
        default_value = "/usr/bin/python3"
    )]
    pub python: PathBuf,

    /// Run untrusted programs WITHOUT namespaces, uid switch or private root, for
    /// hosts that cannot give them. Verdicts stay unforgeable; the host is exposed.
    #[arg(
        long,
        env = "TGRPO_EXECUTOR_UNSAFE_NO_SANDBOX",
        default_value_t = false
    )]
    pub unsafe_no_sandbox: bool,
}

impl SandboxArgs {
    /// The executor configuration these flags describe.
    pub fn to_config(&self) -> ExecutorConfig {
        let mut config = ExecutorConfig {
            slots: self.slots,
            default_timeout_s: self.default_timeout_s,
            max_timeout_s: self.max_timeout_s,
            python: self.python.clone(),
            unsafe_no_sandbox: self.unsafe_no_sandbox,
            uid_base: self.uid_base,
            ..ExecutorConfig::default()
        };
        config.limits.memory_bytes = self.memory_limit_mb.saturating_mul(1 << 20);
        config.limits.processes = self.max_processes;
        config.limits.output_bytes = self.output_limit_bytes;
        config
    }
}

impl SandboxArgs {
    /// `base` (a run config's `[executor]` section) with the flags that were given a
    /// non-default value applied on top: with `--config FILE`, the file decides unless a
    /// flag says otherwise.
    pub fn over(&self, base: ExecutorConfig) -> ExecutorConfig {
        let flags = self.to_config();
        let defaults = ExecutorConfig::default();
        let mut config = base;
        macro_rules! take {
            ($($field:ident).+) => {
                if flags.$($field).+ != defaults.$($field).+ {
                    config.$($field).+ = flags.$($field).+.clone();
                }
            };
        }
        take!(slots);
        take!(default_timeout_s);
        take!(max_timeout_s);
        take!(python);
        take!(unsafe_no_sandbox);
        take!(uid_base);
        take!(limits.memory_bytes);
        take!(limits.processes);
        take!(limits.output_bytes);
        config
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        sandbox: SandboxArgs,
    }

    #[test]
    fn only_flags_given_override_a_config_section() {
        let base = ExecutorConfig {
            slots: 3,
            uid_base: 70_000,
            ..ExecutorConfig::default()
        };
        let parsed = Probe::try_parse_from(["probe"]).unwrap();
        assert_eq!(parsed.sandbox.over(base.clone()), base);
        let parsed = Probe::try_parse_from(["probe", "--slots", "5"]).unwrap();
        let merged = parsed.sandbox.over(base);
        assert_eq!((merged.slots, merged.uid_base), (5, 70_000));
    }

    #[test]
    fn defaults_match_the_production_config() {
        let parsed = Probe::try_parse_from(["probe"]).unwrap();
        assert_eq!(parsed.sandbox.to_config(), ExecutorConfig::default());
    }
}
