//! One sandbox slot's fork-server process: a `python3` running `python/harness.py`
//! (written to a root-only temporary directory when the pool starts)
//! that has set up the slot's namespaces and root filesystem, holds an initialised
//! interpreter with the stdlib imported, and forks a fresh tester and program for each
//! job. It never runs untrusted code itself.
//!
//! Control protocol on the zygote's stdin/stdout: length-prefixed frames (4-byte
//! big-endian length). The worker sends one JSON config frame, the zygote answers one
//! JSON status frame; then, per job, three frames in (a JSON header with the limits,
//! the program for U, the JSON job for T: the zygote only pumps the last two through
//! a buffer it zeroes, so no job lingers in the memory later programs are forked from)
//! and four frames out (the JSON outcome, T's result lines, the kept stdout bytes, the
//! kept stderr bytes).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::error::ExecutorError;

/// The harness, embedded so that the binary is self-contained.
pub(crate) const HARNESS: &str = include_str!("../../python/harness.py");

/// Largest control frame accepted from a zygote (the outcome JSON of a job with many
/// tests, or captured output, which the zygote already caps).
const MAX_CONTROL_FRAME: usize = 64 << 20;

/// What every zygote of a pool is started with.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ZygoteConfig {
    pub sandbox: bool,
    /// Hex of the raw BPF filter (see `seccomp`).
    pub seccomp: String,
    pub root_dir: String,
    pub sys_pivot_root: i64,
    pub u_uid: u32,
    pub t_uid: u32,
    /// The same for every execution: T and U apply them before their job arrives.
    pub limits: WireLimits,
}

/// The zygote's answer to its config.
#[derive(Debug, Deserialize)]
struct StartupReply {
    ok: bool,
    #[serde(default)]
    step: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    isolation: serde_json::Value,
}

/// A job in the zygote's wire format.
#[derive(Debug)]
pub(crate) struct WireJob<'a> {
    /// For the zygote (the only part it reads): the limits of this job.
    pub header: WireJobHeader,
    /// For U: the program, and nothing else.
    pub code: &'a str,
    /// For T: everything it needs (U never sees the tests or the setup code).
    pub tester: WireTesterJob<'a>,
}

/// The part of a job the zygote itself reads.
#[derive(Debug, Serialize)]
pub(crate) struct WireJobHeader {
    pub timeout_s: f64,
    /// RLIMIT_CPU of this job's program (lowered from the pool-wide maximum).
    pub cpu_seconds: u64,
}

/// The job as T sees it.
#[derive(Debug, Serialize)]
pub(crate) struct WireTesterJob<'a> {
    pub code: &'a str,
    pub tests: &'a [String],
    pub setup_code: &'a str,
    pub format: &'static str,
    pub entry_point: &'a str,
    pub max_message_bytes: u64,
}

/// Pool-wide limits in the zygote's wire format.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WireLimits {
    pub memory_bytes: u64,
    pub tester_memory_bytes: u64,
    /// The largest RLIMIT_CPU any job may get; each job lowers it to its own.
    pub cpu_seconds: u64,
    pub file_size_bytes: u64,
    pub open_files: u64,
    pub processes: u64,
    pub output_bytes: usize,
    pub workdir_bytes: u64,
}

/// What the zygote reports about one execution.
#[derive(Debug, Deserialize)]
pub(crate) struct WireOutcome {
    pub timed_out: bool,
    pub elapsed_ms: u64,
    pub program_status: Option<i32>,
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

/// Everything the zygote reports about one job.
pub(crate) struct ZygoteReply {
    pub outcome: WireOutcome,
    /// T's result lines, as T wrote them (JSON per line).
    pub results: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A running fork-server.
pub(crate) struct Zygote {
    pub slot: usize,
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// What the zygote's own set-up reported (namespaces, root filesystem).
    pub isolation: serde_json::Value,
}

impl Zygote {
    /// Starts a zygote and waits until its slot is set up.
    pub async fn start(
        slot: usize,
        python: &Path,
        harness: &Path,
        config: &ZygoteConfig,
    ) -> Result<Self, ExecutorError> {
        let mut child = Command::new(python)
            .args(["-I", "-S", "-B"])
            .arg(harness)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ExecutorError::Spawn {
                python: python.to_path_buf(),
                source,
            })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(forward_log(slot, stderr));
        let mut zygote = Self {
            slot,
            child,
            stdin,
            stdout,
            isolation: serde_json::Value::Null,
        };
        let config_json = serde_json::to_vec(config).expect("config serialises");
        let reply = async {
            write_frame(&mut zygote.stdin, &config_json).await?;
            read_frame(&mut zygote.stdout).await
        };
        // Python start-up plus imports plus mounts: seconds at most, even on a loaded
        // machine.
        let reply = tokio::time::timeout(Duration::from_secs(60), reply)
            .await
            .map_err(|_| ExecutorError::Slot {
                slot,
                reason: "the fork-server did not start within 60 s".into(),
            })?
            .map_err(|err| ExecutorError::Slot {
                slot,
                reason: format!("the fork-server failed to start: {err}"),
            })?;
        let reply: StartupReply =
            serde_json::from_slice(&reply).map_err(|err| ExecutorError::Slot {
                slot,
                reason: format!("bad start-up reply: {err}"),
            })?;
        if !reply.ok {
            return Err(ExecutorError::SandboxUnavailable {
                step: reply.step,
                reason: reply.error,
            });
        }
        zygote.isolation = reply.isolation;
        Ok(zygote)
    }

    /// Runs one job; an `Err` means the zygote itself is broken and must be replaced.
    pub async fn run(
        &mut self,
        job: &WireJob<'_>,
        guard: Duration,
    ) -> std::io::Result<ZygoteReply> {
        let header = serde_json::to_vec(&job.header).map_err(std::io::Error::other)?;
        let tester = serde_json::to_vec(&job.tester).map_err(std::io::Error::other)?;
        let exchange = async {
            write_frame(&mut self.stdin, &header).await?;
            write_frame(&mut self.stdin, job.code.as_bytes()).await?;
            write_frame(&mut self.stdin, &tester).await?;
            let outcome = read_frame(&mut self.stdout).await?;
            let results = read_frame(&mut self.stdout).await?;
            let stdout = read_frame(&mut self.stdout).await?;
            let stderr = read_frame(&mut self.stdout).await?;
            let outcome: WireOutcome =
                serde_json::from_slice(&outcome).map_err(std::io::Error::other)?;
            Ok(ZygoteReply {
                outcome,
                results,
                stdout,
                stderr,
            })
        };
        match tokio::time::timeout(guard, exchange).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the fork-server did not answer within the guard time",
            )),
        }
    }

    /// CPU time used so far by the fork-server and every execution it has reaped.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self.child.id()?;
        process_cpu_time(pid, true)
    }

    /// Stops the zygote now (its executions die with it: they hold a parent-death
    /// signal or are in a namespace whose init it kills). Used when it misbehaves;
    /// its unreaped children are then left to init.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops an idle zygote cleanly: closing its control channel makes it kill and reap
    /// its waiting execution and exit. Falls back to `kill` after a few seconds.
    pub async fn shutdown(self) {
        let Self {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// User plus system time of a process from `/proc/PID/stat` (and of its reaped
/// children when `with_children`). The kernel reports it in USER_HZ ticks, which is 100
/// on every Linux architecture.
pub(crate) fn process_cpu_time(pid: u32, with_children: bool) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |index: usize| fields.get(index).and_then(|v| v.parse::<u64>().ok());
    // utime, stime, cutime, cstime are fields 14-17, i.e. 11-14 after the name.
    let mut ticks = tick(11)? + tick(12)?;
    if with_children {
        ticks += tick(13)? + tick(14)?;
    }
    Some(Duration::from_millis(ticks * 10))
}

async fn forward_log(slot: usize, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::warn!(slot, message = %line, "sandbox fork-server");
    }
}

async fn write_frame(stdin: &mut ChildStdin, payload: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(payload.len()).map_err(std::io::Error::other)?;
    stdin.write_all(&length.to_be_bytes()).await?;
    stdin.write_all(payload).await?;
    stdin.flush().await
}

async fn read_frame(stdout: &mut ChildStdout) -> std::io::Result<Vec<u8>> {
    let mut header = [0_u8; 4];
    stdout.read_exact(&mut header).await?;
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_CONTROL_FRAME {
        return Err(std::io::Error::other(format!(
            "control frame of {length} bytes"
        )));
    }
    let mut body = vec![0_u8; length];
    stdout.read_exact(&mut body).await?;
    Ok(body)
}
