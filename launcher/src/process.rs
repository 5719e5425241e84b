//! One supervised child process: started in its own process group with a parent-death
//! signal, its stdout and stderr copied line by line to the launcher's (prefixed with the
//! service name, `[executor-0] …`) and to a log file of its own, stopped with SIGTERM and
//! a grace period, then SIGKILL.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::error::{LaunchError, Result};

/// How to start one child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// The service name, used as the log prefix (`learner`, `executor-0`, …).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables (the launcher's own are inherited).
    pub env: Vec<(String, String)>,
    /// Inherited environment variables the child must not see (one meant for the
    /// launcher alone, such as its own metrics address).
    pub env_remove: Vec<String>,
    /// Where its output is also written (appended, so restarts keep the history).
    pub log_file: PathBuf,
    /// Copy its output, prefixed, to the launcher's stdout/stderr.
    pub echo: bool,
}

/// A running child.
#[derive(Debug)]
pub struct RunningChild {
    name: String,
    pid: u32,
    child: Child,
    pumps: Vec<JoinHandle<()>>,
}

impl RunningChild {
    /// Starts `spec`.
    pub async fn spawn(spec: &ChildSpec) -> Result<Self> {
        if let Some(dir) = spec.log_file.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|err| LaunchError::io(dir, err))?;
        }
        let log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .await
            .map_err(|err| LaunchError::io(&spec.log_file, err))?;
        let mut command = Command::new(&spec.program);
        for name in &spec.env_remove {
            command.env_remove(name);
        }
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A safety net: a child handle dropped without `stop` is killed.
            .kill_on_drop(true);
        crate::sys::supervise_child(&mut command);
        let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
            service: spec.name.clone(),
            program: spec.program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let log = std::sync::Arc::new(tokio::sync::Mutex::new(log));
        let mut pumps = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                stdout,
                spec.name.clone(),
                Stream::Stdout,
                log.clone(),
                spec.echo,
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                stderr,
                spec.name.clone(),
                Stream::Stderr,
                log,
                spec.echo,
            )));
        }
        tracing::debug!(service = %spec.name, pid, "started");
        Ok(Self {
            name: spec.name.clone(),
            pid,
            child,
            pumps,
        })
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it has exited (without waiting).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit, then for its output to be copied out.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        self.drain_output().await;
        Ok(status)
    }

    /// Sends `signal` to the child (not its process group: the child stops its own
    /// helpers, such as the executor's sandbox zygotes, in its own order).
    pub fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGTERM, then up to `grace` for it to exit, then SIGKILL to its whole process
    /// group. Returns its exit status.
    pub async fn stop(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.try_status() {
            self.drain_output().await;
            return Ok(status);
        }
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                self.drain_output().await;
                Ok(status)
            }
            Err(_elapsed) => {
                tracing::warn!(service = %self.name, pid = self.pid, ?grace, "did not stop in time; killing it");
                if let Ok(pid) = i32::try_from(self.pid) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let status = self.child.wait().await?;
                self.drain_output().await;
                Ok(status)
            }
        }
    }

    async fn drain_output(&mut self) {
        for pump in self.pumps.drain(..) {
            // A grandchild may hold the pipe open after the child died; don't wait on it
            // for long.
            let abort = pump.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), pump)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

async fn pump(
    reader: impl tokio::io::AsyncRead + Unpin,
    name: String,
    stream: Stream,
    log: std::sync::Arc<tokio::sync::Mutex<tokio::fs::File>>,
    echo: bool,
) {
    let mut lines = BufReader::new(reader).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(err) => {
                tracing::debug!(service = %name, %err, "output not readable");
                return;
            }
        };
        {
            let mut file = log.lock().await;
            let _ = file.write_all(line.as_bytes()).await;
            let _ = file.write_all(b"\n").await;
            // tokio's File hands writes to a blocking thread; without a flush the last
            // lines may still be in flight when the child's exit is reported.
            let _ = file.flush().await;
        }
        if echo {
            // One write per line, so lines of different services never interleave.
            let prefixed = format!("[{name}] {line}\n");
            match stream {
                Stream::Stdout => {
                    let _ = tokio::io::stdout().write_all(prefixed.as_bytes()).await;
                }
                Stream::Stderr => {
                    let _ = tokio::io::stderr().write_all(prefixed.as_bytes()).await;
                }
            }
        }
    }
}

/// A readable description of an exit status (`exit code 1`, `killed by SIGKILL`).
pub fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal().map(Signal::try_from) {
        Some(Ok(signal)) => format!("killed by {signal}"),
        Some(Err(_)) | None => status.to_string(),
    }
}

/// The exit code a launcher should pass on for `status` (128 + signal for a signal, as
/// shells do).
pub fn exit_code(status: &ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}

/// Whether a process with this id exists (and is not a zombie we own).
pub fn is_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    match std::fs::read_to_string(stat) {
        // The state is the field after the parenthesised command name.
        Ok(text) => text
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, script: &str) -> ChildSpec {
        ChildSpec {
            name: "probe".into(),
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: vec![("PROBE_VALUE".into(), "42".into())],
            env_remove: vec!["HOME".into()],
            log_file: dir.join("logs/probe.log"),
            echo: false,
        }
    }

    #[tokio::test]
    async fn output_goes_to_the_log_and_the_status_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = RunningChild::spawn(&spec(
            dir.path(),
            "echo out $PROBE_VALUE home=${HOME:-unset}; echo err >&2; exit 3",
        ))
        .await
        .unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(exit_code(&status), 3);
        assert_eq!(describe_status(&status), "exit code 3");
        let log = std::fs::read_to_string(dir.path().join("logs/probe.log")).unwrap();
        assert!(
            log.contains("out 42 home=unset\n") && log.contains("err\n"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn stop_sends_sigterm_and_kills_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        // Exits 7 on SIGTERM.
        let mut polite = RunningChild::spawn(&spec(
            dir.path(),
            "trap 'exit 7' TERM; while :; do sleep 0.05; done",
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = polite.stop(Duration::from_secs(5)).await.unwrap();
        assert_eq!(exit_code(&status), 7);
        assert!(!is_alive(polite.pid()));

        // Ignores SIGTERM: killed after the grace.
        let mut stubborn = RunningChild::spawn(&spec(
            dir.path(),
            "trap '' TERM; while :; do sleep 0.05; done",
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let status = stubborn.stop(Duration::from_millis(300)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(describe_status(&status), "killed by SIGKILL");
        assert_eq!(exit_code(&status), 137);
        assert!(!is_alive(stubborn.pid()));
    }

    #[tokio::test]
    async fn a_missing_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = spec(dir.path(), "");
        bad.program = PathBuf::from("/nonexistent/tgrpo");
        let err = RunningChild::spawn(&bad).await.unwrap_err().to_string();
        assert!(
            err.contains("probe") && err.contains("/nonexistent/tgrpo"),
            "{err}"
        );
    }
}
