//! Helpers of the CLI tests that start `tgrpo` services as processes.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const TGRPO: &str = env!("CARGO_BIN_EXE_tgrpo");

/// A uid range of this test process's own: disjoint from the executor crate's tests
/// (1M-52M), executor_cli.rs (100M-113M) and the other crates' (3M-10M, 60M-70M).
pub fn uid_base(offset: u32) -> String {
    (150_000_000 + (std::process::id() % 50_000) * 256 + offset * 64).to_string()
}

/// A loopback address nothing listens on (bound, then released).
pub fn free_address() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Service {
    pub child: Child,
    pub name: &'static str,
}

impl Service {
    /// Starts `tgrpo ARGS` and waits until every address in `addresses` accepts.
    pub fn start(name: &'static str, args: &[&str], addresses: &[&str]) -> Self {
        let child = Command::new(TGRPO)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut service = Service { child, name };
        for address in addresses {
            service.wait_for(address);
        }
        service
    }

    fn wait_for(&mut self, address: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(address).is_err() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "{} exited while starting",
                self.name
            );
            assert!(
                Instant::now() < deadline,
                "{} never listened on {address}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tgrpo executor` with one slot on `address`.
pub fn executor(address: &str, uid_offset: u32, global: &[&str]) -> Service {
    let uid = uid_base(uid_offset);
    let mut args: Vec<&str> = global.to_vec();
    args.extend([
        "executor",
        "--slots",
        "1",
        "--uid-base",
        &uid,
        "--listen",
        address,
    ]);
    Service::start("executor", &args, &[address])
}

/// `tgrpo ARGS` to completion.
pub fn tgrpo(args: &[&str]) -> Output {
    Command::new(TGRPO)
        .args(args)
        .env_remove("TGRPO_CONFIG")
        .output()
        .unwrap()
}

/// stdout and stderr of an output, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The first stdout line starting with `prefix`.
pub fn line_with<'a>(stdout: &'a str, prefix: &str) -> Option<&'a str> {
    stdout.lines().find(|line| line.starts_with(prefix))
}

/// One HTTP/1.1 GET: (status code, headers, body).
pub fn http_get(address: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, head.to_string(), body.to_string())
}
