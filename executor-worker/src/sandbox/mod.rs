//! The warm sandbox pool: one fork-server ([`zygote`]) per slot, a semaphore that lets
//! at most `slots` executions run, and the start-up self-check that refuses to run
//! untrusted code when the host does not give the isolation asked for.

mod zygote;

pub(crate) use zygote::process_cpu_time;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::{ExecutorConfig, SandboxLimits};
use crate::error::ExecutorError;
use crate::seccomp;

use zygote::{
    WireJob, WireJobHeader, WireLimits, WireTesterJob, Zygote, ZygoteConfig, ZygoteReply,
};

/// How the tests of a job are written (mirrors the proto's `TestFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFormat {
    /// Setup code, then each test is one statement (usually an `assert`).
    Mbpp,
    /// Each test is a program defining `check(candidate)`; it is called with the
    /// program's `entry_point`.
    HumanEval,
    /// Each test is an arbitrary program run against the program's names.
    Generic,
}

impl JobFormat {
    fn wire(self) -> &'static str {
        match self {
            Self::Mbpp => "mbpp",
            Self::HumanEval => "humaneval",
            Self::Generic => "generic",
        }
    }
}

/// One program and its tests, ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The untrusted program.
    pub code: String,
    /// Test statements or programs, per `format`.
    pub tests: Vec<String>,
    /// Trusted code run (in the test process) after the program, before the tests.
    pub setup_code: String,
    /// How `tests` are written.
    pub format: JobFormat,
    /// HumanEval: the name `check` is called with.
    pub entry_point: String,
    /// Wall-clock limit of the whole execution.
    pub timeout: Duration,
}

/// The result of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStatus {
    /// Ran without an exception.
    Passed,
    /// Raised `AssertionError`.
    Failed,
    /// Raised anything else (the program's exception, a protocol violation, ...).
    Error,
    /// Never ran: the program or the time ended first.
    NotRun,
}

/// One test's status and the first line of its exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    /// What happened.
    pub status: TestStatus,
    /// First line of the exception, if any.
    pub message: String,
}

/// Everything the trusted side learned about one execution.
#[derive(Debug, Clone)]
pub struct ExecutionOutcome {
    /// One record per test, in test order.
    pub tests: Vec<TestRecord>,
    /// The program does not compile: the first line of the `SyntaxError`.
    pub syntax_error: Option<String>,
    /// The program (or the setup code) raised before any test could run.
    pub program_error: Option<String>,
    /// The test process reported every test (it did not die or run out of time).
    pub finished: bool,
    /// The wall-clock or CPU limit ended the execution.
    pub timed_out: bool,
    /// Time from fork to the last result.
    pub elapsed: Duration,
    /// Captured stdout (program and tests), capped.
    pub stdout: Vec<u8>,
    /// Captured stderr, capped.
    pub stderr: Vec<u8>,
    /// Bytes of stdout beyond the cap.
    pub stdout_dropped: u64,
    /// Bytes of stderr beyond the cap.
    pub stderr_dropped: u64,
}

impl ExecutionOutcome {
    /// Number of tests that passed.
    pub fn passed(&self) -> usize {
        self.tests
            .iter()
            .filter(|test| test.status == TestStatus::Passed)
            .count()
    }
}

/// What the sandbox gives each execution on this host, measured from inside one by the
/// start-up self-check.
#[derive(Debug, Clone, PartialEq)]
pub struct IsolationReport {
    /// False only with `unsafe_no_sandbox`.
    pub sandboxed: bool,
    /// Namespaces created once per slot (by its fork-server).
    pub slot_namespaces: Vec<String>,
    /// Namespaces created for every execution.
    pub execution_namespaces: Vec<String>,
    /// Network interfaces visible in a slot's network namespace.
    pub interfaces: Vec<String>,
    /// The program's pid inside its pid namespace (1 when it is the namespace's init).
    pub program_pid: i64,
    /// The uid the program ran as in the self-check (slot `i`: `uid_base + 2i`).
    pub program_uid: i64,
    /// The uid the tests ran as in the self-check (the program's plus one).
    pub tester_uid: i64,
    /// `PR_GET_SECCOMP` inside the program (2 = filter).
    pub seccomp_mode: i64,
    /// What the seccomp filters deny.
    pub seccomp_rules: String,
    /// `ptrace` from the program: the errno it got.
    pub ptrace_errno: i64,
    /// An IPv4 socket from the program: the error it got.
    pub inet_socket: String,
    /// Writing under /usr from the program: the error it got.
    pub usr_write: String,
    /// Number of environment variables the program sees.
    pub environment_size: i64,
    /// Entries of the program's root directory.
    pub root_entries: Vec<String>,
    /// Soft rlimits inside the program.
    pub rlimits: BTreeMap<String, i64>,
}

impl fmt::Display for IsolationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.sandboxed {
            writeln!(
                f,
                "UNSAFE: no namespaces, no uid switch, no private root (--unsafe-no-sandbox)"
            )?;
        }
        writeln!(
            f,
            "namespaces per slot: {}; per execution: {}",
            join_or_none(&self.slot_namespaces),
            join_or_none(&self.execution_namespaces)
        )?;
        writeln!(
            f,
            "network interfaces in a slot: {}",
            join_or_none(&self.interfaces)
        )?;
        writeln!(
            f,
            "program: pid {} in its namespace, uid {} (tests: uid {}), {} environment variables",
            self.program_pid, self.program_uid, self.tester_uid, self.environment_size
        )?;
        writeln!(
            f,
            "seccomp mode {} ({}); ptrace -> errno {}; AF_INET socket -> {}",
            self.seccomp_mode, self.seccomp_rules, self.ptrace_errno, self.inet_socket
        )?;
        writeln!(
            f,
            "root: [{}]; writing /usr -> {}",
            self.root_entries.join(", "),
            self.usr_write
        )?;
        let limits: Vec<String> = self
            .rlimits
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        write!(f, "rlimits: {}", limits.join(", "))
    }
}

fn join_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// The probe run inside a sandbox at start-up; it prints one JSON line.
const PROBE_PROGRAM: &str = r#"
import ctypes, json, os, resource, socket
def probe_ran():
    return True
report = {"pid": os.getpid(), "uid": os.getuid(), "environ": len(os.environ)}
libc = ctypes.CDLL(None, use_errno=True)
report["seccomp_mode"] = libc.prctl(21, 0, 0, 0, 0)
libc.ptrace(16, 999999, 0, 0)
report["ptrace_errno"] = ctypes.get_errno()
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    report["inet_socket"] = "created"
except OSError as err:
    report["inet_socket"] = err.strerror or str(err)
try:
    open("/usr/tgrpo-probe", "w").close()
    report["usr_write"] = "written"
except OSError as err:
    report["usr_write"] = err.strerror or str(err)
report["rlimits"] = {name: resource.getrlimit(getattr(resource, name))[0] for name in
    ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC")}
report["root"] = sorted(os.listdir("/"))
print("TGRPO-PROBE " + json.dumps(report))
"#;

#[derive(Debug, Deserialize)]
struct ProbeReport {
    pid: i64,
    uid: i64,
    environ: i64,
    seccomp_mode: i64,
    ptrace_errno: i64,
    inet_socket: String,
    usr_write: String,
    rlimits: BTreeMap<String, i64>,
    root: Vec<String>,
}

/// A slot: its index (which fixes its uids) and its fork-server, when running.
struct Slot {
    index: usize,
    zygote: Option<Zygote>,
}

struct PoolInner {
    idle: Mutex<Vec<Slot>>,
    permits: Arc<Semaphore>,
    python: PathBuf,
    harness: PathBuf,
    /// Holds `harness`; removed with the pool.
    _harness_dir: tempfile::TempDir,
    zygote_config: ZygoteConfig,
    uid_base: u32,
    limits: SandboxLimits,
    /// Mount point of each slot's private root; stays empty on the host.
    _root_dir: tempfile::TempDir,
}

/// A pool of warm sandboxes. Cheap to clone; executions run on a spawned task, so a
/// caller that stops waiting never leaves a slot half-used.
#[derive(Clone)]
pub struct SandboxPool {
    inner: Arc<PoolInner>,
    isolation: Arc<IsolationReport>,
    slots: usize,
}

impl fmt::Debug for SandboxPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxPool")
            .field("slots", &self.slots)
            .field("sandboxed", &self.isolation.sandboxed)
            .finish()
    }
}

impl SandboxPool {
    /// Starts one fork-server per slot and runs the isolation self-check. Fails (with
    /// [`ExecutorError::SandboxUnavailable`]) when the host cannot give the sandbox,
    /// unless `config.unsafe_no_sandbox` is set.
    pub async fn start(config: &ExecutorConfig) -> Result<Self, ExecutorError> {
        config.validate()?;
        let slots = config.effective_slots();
        let sandbox = !config.unsafe_no_sandbox;
        if sandbox {
            check_host_prerequisites()?;
        }
        let root_dir = tempfile::Builder::new()
            .prefix("tgrpo-sandbox-root-")
            .tempdir()
            .map_err(|source| ExecutorError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        // The fork-servers run the harness from a file (readable in `ps`, unlike a
        // `-c` argument) in a directory only this user can write.
        let harness_dir = tempfile::Builder::new()
            .prefix("tgrpo-harness-")
            .tempdir()
            .map_err(|source| ExecutorError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let harness = harness_dir.path().join("harness.py");
        std::fs::write(&harness, zygote::HARNESS).map_err(|source| ExecutorError::Io {
            path: harness.clone(),
            source,
        })?;
        let zygote_config = ZygoteConfig {
            sandbox,
            seccomp: seccomp::program_hex()?,
            root_dir: root_dir.path().to_string_lossy().into_owned(),
            sys_pivot_root: libc::SYS_pivot_root,
            u_uid: config.uid_base,
            t_uid: config.uid_base + 1,
            limits: WireLimits {
                memory_bytes: config.limits.memory_bytes,
                tester_memory_bytes: config.limits.tester_memory_bytes,
                cpu_seconds: config
                    .limits
                    .cpu_seconds_for(Duration::from_secs_f64(config.max_timeout_s.max(30.0))),
                file_size_bytes: config.limits.file_size_bytes,
                open_files: config.limits.open_files,
                processes: config.limits.processes,
                output_bytes: config.limits.output_bytes,
                workdir_bytes: config.limits.workdir_bytes,
            },
        };
        let starts = (0..slots).map(|index| {
            let slot_config = slot_config(&zygote_config, config.uid_base, index);
            let python = config.python.clone();
            let harness = harness.clone();
            async move { Zygote::start(index, &python, &harness, &slot_config).await }
        });
        let zygotes = futures::future::try_join_all(starts).await?;
        let slot_isolation = zygotes
            .first()
            .map(|zygote| zygote.isolation.clone())
            .unwrap_or_default();
        let idle = zygotes
            .into_iter()
            .map(|zygote| Slot {
                index: zygote.slot,
                zygote: Some(zygote),
            })
            .collect();
        let inner = Arc::new(PoolInner {
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(slots)),
            python: config.python.clone(),
            harness,
            _harness_dir: harness_dir,
            zygote_config,
            uid_base: config.uid_base,
            limits: config.limits.clone(),
            _root_dir: root_dir,
        });
        let isolation = probe(&inner, &slot_isolation, sandbox, config).await?;
        tracing::info!(
            slots,
            sandboxed = sandbox,
            "sandbox pool ready\n{isolation}"
        );
        Ok(Self {
            inner,
            isolation: Arc::new(isolation),
            slots,
        })
    }

    /// Number of executions that can run at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// CPU time used so far by the idle fork-servers and every execution they have
    /// finished (for benchmarks: call it while the pool is idle).
    pub fn sandbox_cpu_time(&self) -> Duration {
        lock(&self.inner.idle)
            .iter()
            .filter_map(|slot| slot.zygote.as_ref().and_then(Zygote::cpu_time))
            .sum()
    }

    /// What the self-check measured inside a sandbox.
    pub fn isolation(&self) -> &IsolationReport {
        &self.isolation
    }

    /// Runs one job, waiting for a free slot.
    pub async fn execute(&self, job: Job) -> Result<ExecutionOutcome, ExecutorError> {
        let queued = crate::metrics::GaugeGuard::queued();
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ExecutorError::PoolClosed)?;
        drop(queued);
        let running = crate::metrics::GaugeGuard::running();
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let _permit = permit;
            let _running = running;
            inner.run(&job).await
        });
        task.await.map_err(|err| ExecutorError::Slot {
            slot: usize::MAX,
            reason: format!("execution task failed: {err}"),
        })?
    }

    /// Refuses new executions and stops the idle fork-servers; running executions
    /// finish first (their tasks hold the pool).
    pub async fn close(&self) {
        self.inner.permits.close();
        let idle: Vec<Slot> = std::mem::take(&mut *lock(&self.inner.idle));
        let stops = idle
            .into_iter()
            .filter_map(|slot| slot.zygote)
            .map(Zygote::shutdown);
        futures::future::join_all(stops).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the slot list inconsistent (it is
    // only pushed to and popped from), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn slot_config(base: &ZygoteConfig, uid_base: u32, index: usize) -> ZygoteConfig {
    let mut config = base.clone();
    let offset = 2 * index as u32;
    config.u_uid = uid_base + offset;
    config.t_uid = uid_base + offset + 1;
    config
}

impl PoolInner {
    fn take_slot(&self) -> Slot {
        lock(&self.idle)
            .pop()
            .expect("a permit guarantees an idle slot")
    }

    async fn run(&self, job: &Job) -> Result<ExecutionOutcome, ExecutorError> {
        let mut slot = self.take_slot();
        let result = self.run_on(&mut slot, job).await;
        lock(&self.idle).push(slot);
        result
    }

    async fn run_on(&self, slot: &mut Slot, job: &Job) -> Result<ExecutionOutcome, ExecutorError> {
        // A fork-server that breaks is an infrastructure failure, not the program's
        // doing (it cannot reach the fork-server): replace it and retry once.
        let mut last_error = String::new();
        for _attempt in 0..2 {
            let mut zygote = match slot.zygote.take() {
                Some(zygote) => zygote,
                None => {
                    let config = slot_config(&self.zygote_config, self.uid_base, slot.index);
                    Zygote::start(slot.index, &self.python, &self.harness, &config).await?
                }
            };
            let wire = wire_job(job, &self.limits);
            // The zygote enforces the timeout itself; this guard only catches a hung
            // fork-server.
            let guard = job.timeout + Duration::from_secs(15);
            match zygote.run(&wire, guard).await {
                Ok(reply) => {
                    slot.zygote = Some(zygote);
                    return Ok(parse_outcome(job, reply));
                }
                Err(err) => {
                    tracing::error!(slot = slot.index, %err, "sandbox fork-server failed; restarting it");
                    last_error = err.to_string();
                    zygote.kill().await;
                }
            }
        }
        Err(ExecutorError::Slot {
            slot: slot.index,
            reason: last_error,
        })
    }
}

fn wire_job<'a>(job: &'a Job, limits: &SandboxLimits) -> WireJob<'a> {
    WireJob {
        header: WireJobHeader {
            timeout_s: job.timeout.as_secs_f64(),
            cpu_seconds: limits.cpu_seconds_for(job.timeout),
        },
        code: &job.code,
        tester: WireTesterJob {
            code: &job.code,
            tests: &job.tests,
            setup_code: &job.setup_code,
            format: job.format.wire(),
            entry_point: &job.entry_point,
            max_message_bytes: limits.max_message_bytes,
        },
    }
}

/// Turns the test process's records into per-test results. Only T writes records
/// (the program has no access to that pipe), so they are trusted; the parsing is still
/// strict because T may have been cut off mid-line.
fn parse_outcome(job: &Job, reply: ZygoteReply) -> ExecutionOutcome {
    let ZygoteReply {
        outcome: wire,
        results,
        stdout,
        stderr,
    } = reply;
    // One JSON object per line; a last line cut off by a kill is skipped.
    let records: Vec<serde_json::Value> = results
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    let not_run = TestRecord {
        status: TestStatus::NotRun,
        message: String::new(),
    };
    let mut tests = vec![not_run; job.tests.len()];
    let mut syntax_error = None;
    let mut program_error = None;
    let mut finished = false;
    for record in &records {
        let Some(record) = record.as_object() else {
            continue;
        };
        if let Some(message) = record.get("syntax").and_then(|v| v.as_str()) {
            syntax_error = Some(message.to_string());
        }
        if let Some(message) = record.get("program").and_then(|v| v.as_str()) {
            program_error = Some(message.to_string());
        }
        if record.contains_key("done") {
            finished = true;
        }
        let Some(index) = record.get("t").and_then(|v| v.as_u64()) else {
            continue;
        };
        let Some(slot) = tests.get_mut(index as usize) else {
            continue;
        };
        let status = match record.get("o").and_then(|v| v.as_str()) {
            Some("p") => TestStatus::Passed,
            Some("f") => TestStatus::Failed,
            Some("e") => TestStatus::Error,
            _ => TestStatus::NotRun,
        };
        let message = record
            .get("m")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        *slot = TestRecord { status, message };
    }
    // RLIMIT_CPU ends the program with SIGXCPU: that is running out of time too.
    let cpu_limit_hit = wire
        .program_status
        .is_some_and(|status| status & 0x7f == libc::SIGXCPU);
    let timed_out = (wire.timed_out && !finished) || (cpu_limit_hit && !all_passed(&tests));
    ExecutionOutcome {
        tests,
        syntax_error,
        program_error,
        finished,
        timed_out,
        elapsed: Duration::from_millis(wire.elapsed_ms),
        stdout,
        stderr,
        stdout_dropped: wire.stdout_dropped,
        stderr_dropped: wire.stderr_dropped,
    }
}

fn all_passed(tests: &[TestRecord]) -> bool {
    tests.iter().all(|test| test.status == TestStatus::Passed)
}

/// Cheap checks before starting anything: the fork-servers would fail anyway, but
/// with a less obvious message.
fn check_host_prerequisites() -> Result<(), ExecutorError> {
    // The effective uid, read from /proc (libc::geteuid would need `unsafe`).
    let status = std::fs::read_to_string("/proc/self/status").map_err(|source| {
        ExecutorError::SandboxUnavailable {
            step: "reading /proc/self/status".into(),
            reason: source.to_string(),
        }
    })?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok());
    if euid != Some(0) {
        return Err(ExecutorError::SandboxUnavailable {
            step: "privileges".into(),
            reason: format!(
                "the executor runs as uid {} but needs root to create namespaces, mount \
                 the sandbox root and switch programs to unprivileged uids",
                euid.map_or_else(|| "?".to_string(), |id| id.to_string())
            ),
        });
    }
    for namespace in ["pid", "mnt", "net", "ipc", "uts"] {
        let path = format!("/proc/self/ns/{namespace}");
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(ExecutorError::SandboxUnavailable {
                step: "namespaces".into(),
                reason: format!("{path} is missing: the kernel lacks {namespace} namespaces"),
            });
        }
    }
    Ok(())
}

/// Runs the probe program on the pool and checks that a sandbox is what it claims.
async fn probe(
    inner: &Arc<PoolInner>,
    slot_isolation: &serde_json::Value,
    sandbox: bool,
    config: &ExecutorConfig,
) -> Result<IsolationReport, ExecutorError> {
    let job = Job {
        code: PROBE_PROGRAM.to_string(),
        tests: vec!["assert probe_ran()".to_string()],
        setup_code: String::new(),
        format: JobFormat::Mbpp,
        entry_point: String::new(),
        timeout: Duration::from_secs(30),
    };
    let _permit = inner
        .permits
        .acquire()
        .await
        .map_err(|_| ExecutorError::PoolClosed)?;
    let outcome = inner.run(&job).await?;
    let unavailable = |reason: String| ExecutorError::SandboxUnavailable {
        step: "self-check".into(),
        reason,
    };
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("TGRPO-PROBE "))
        .ok_or_else(|| {
            unavailable(format!(
                "the probe program printed no report (passed {}/1, stderr: {})",
                outcome.passed(),
                String::from_utf8_lossy(&outcome.stderr).trim()
            ))
        })?;
    let report: ProbeReport = serde_json::from_str(line)
        .map_err(|err| unavailable(format!("unreadable probe report: {err}")))?;
    if outcome.passed() != 1 {
        return Err(unavailable(format!(
            "the probe's test did not pass: {:?}",
            outcome.tests
        )));
    }
    let strings = |key: &str| -> Vec<String> {
        slot_isolation
            .get(key)
            .and_then(|v| v.as_array())
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let isolation = IsolationReport {
        sandboxed: sandbox,
        slot_namespaces: strings("namespaces"),
        execution_namespaces: if sandbox {
            vec!["pid".into(), "mount".into(), "ipc".into()]
        } else {
            Vec::new()
        },
        interfaces: strings("interfaces"),
        program_pid: report.pid,
        program_uid: report.uid,
        tester_uid: report.uid + 1,
        seccomp_mode: report.seccomp_mode,
        seccomp_rules: seccomp::DENIED_SUMMARY.to_string(),
        ptrace_errno: report.ptrace_errno,
        inet_socket: report.inet_socket,
        usr_write: report.usr_write,
        environment_size: report.environ,
        root_entries: report.root,
        rlimits: report.rlimits,
    };
    if sandbox {
        verify(&isolation, config).map_err(unavailable)?;
    }
    Ok(isolation)
}

/// What a sandbox must show from inside, or the executor does not start.
fn verify(isolation: &IsolationReport, config: &ExecutorConfig) -> Result<(), String> {
    let mut problems = Vec::new();
    if isolation.program_pid != 1 {
        problems.push(format!(
            "the program is pid {} (not the init of its own pid namespace)",
            isolation.program_pid
        ));
    }
    let program_uids = i64::from(config.uid_base)
        ..i64::from(config.uid_base) + 2 * config.effective_slots() as i64;
    let uid = isolation.program_uid;
    if !program_uids.contains(&uid) || (uid - i64::from(config.uid_base)) % 2 != 0 {
        problems.push(format!("the program runs as uid {uid}"));
    }
    if isolation.seccomp_mode != 2 {
        problems.push(format!("seccomp mode is {}", isolation.seccomp_mode));
    }
    if isolation.ptrace_errno != i64::from(libc::EPERM) {
        problems.push(format!("ptrace gave errno {}", isolation.ptrace_errno));
    }
    if isolation.inet_socket == "created" {
        problems.push("the program can create IPv4 sockets".into());
    }
    if isolation.usr_write == "written" {
        problems.push("the program can write to /usr".into());
    }
    if isolation.environment_size != 0 {
        problems.push(format!(
            "the program sees {} environment variables",
            isolation.environment_size
        ));
    }
    if isolation.interfaces.iter().any(|name| name != "lo") {
        problems.push(format!(
            "the network namespace has interfaces {:?}",
            isolation.interfaces
        ));
    }
    if !isolation.slot_namespaces.contains(&"net".to_string()) {
        problems.push("no network namespace".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
