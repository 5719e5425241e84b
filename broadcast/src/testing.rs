//! Test support (feature `testing`): a private nats-server with JetStream on a free
//! loopback port, with its own store directory, that can be stopped and restarted on the
//! same port and directory (to test reconnects). Never the shared server on 4222.
//!
//! # Examples
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let mut server = tgrpo_broadcast::testing::NatsServer::start().await?;
//! println!("nats at {}", server.url());
//! server.restart().await?; // same port, same JetStream store
//! server.stop();
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the server binary is looked for when `NATS_SERVER` is not set.
pub const DEFAULT_NATS_SERVER: &str = "/usr/sbin/nats-server";

/// How long a starting server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A nats-server child process; killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port of 127.0.0.1 and waits until it
    /// accepts connections. The binary is `$NATS_SERVER`, else `/usr/sbin/nats-server`,
    /// else `nats-server` on `PATH`.
    pub async fn start() -> io::Result<Self> {
        let binary = find_binary()?;
        let store = tempfile::Builder::new().prefix("tgrpo-nats-").tempdir()?;
        // A free port can be taken by someone else between our probe and the server's
        // bind; try a few.
        let mut last_error = None;
        for _attempt in 0..5 {
            let port = free_port()?;
            match spawn_ready(&binary, port, store.path()).await {
                Ok(child) => {
                    return Ok(Self {
                        child: Some(child),
                        binary,
                        port,
                        store,
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("nats-server did not start")))
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.store.path().join("jetstream")
    }

    /// The server's log file (useful when a test fails).
    pub fn log_file(&self) -> PathBuf {
        self.store.path().join("nats-server.log")
    }

    /// Kills the server (as a crash would) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store, and waits until it
    /// accepts connections.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.child = Some(spawn_ready(&self.binary, self.port, self.store.path()).await?);
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns a server and waits until its log says it is ready (a TCP probe alone could
/// reach another process that grabbed the port); kills it on failure.
async fn spawn_ready(binary: &Path, port: u16, dir: &Path) -> io::Result<Child> {
    let log = dir.join("nats-server.log");
    // A fresh log per start, so an earlier "ready" line cannot count.
    match std::fs::remove_file(&log) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("jetstream"))
        .arg("-l")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot start {}: {error}", binary.display()),
            )
        })?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "nats-server on port {port} exited at start with {status}: {}",
                text.lines().last().unwrap_or("(no log)")
            )));
        }
        if text.contains("Server is ready") {
            return Ok(child);
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nats-server on port {port} not ready after {READY_TIMEOUT:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn find_binary() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let default = PathBuf::from(DEFAULT_NATS_SERVER);
    if default.exists() {
        return Ok(default);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.exists())
    });
    on_path.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "nats-server not found (set NATS_SERVER or `apt-get install nats-server`)",
        )
    })
}

fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
