//! Helpers shared by the integration tests: executor configs with a uid range of their
//! own (tests run in parallel processes) and the shared MBPP data.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use tgrpo_executor::ExecutorConfig;

/// A config for `slots` (at most 16) slots whose uids no other pool uses: uid ranges
/// are picked from the process id and a per-process counter, since tests run both as
/// parallel processes (nextest) and as parallel threads of one process (cargo test).
pub fn config(slots: usize) -> ExecutorConfig {
    assert!(slots <= 16, "test pools have at most 16 slots");
    ExecutorConfig {
        slots,
        uid_base: fresh_uid_base(),
        ..ExecutorConfig::default()
    }
}

/// 32 uids per pool, 32 pools per process, in a range far from real users.
pub fn fresh_uid_base() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let pool = NEXT.fetch_add(1, Ordering::Relaxed) % 32;
    1_000_000 + (std::process::id() % 50_000) * 1024 + pool * 32
}

/// The shared MBPP directory; panics with a clear message when it is missing (these
/// tests must not silently pass without data).
pub fn mbpp_dir() -> PathBuf {
    tgrpo_executor::mbpp::default_data_dir().expect(
        "MBPP data not found: set TGRPO_MBPP_DIR to the directory holding mbpp.jsonl \
         and mbpp_ref_failures.txt (../shared/data/mbpp next to the repository)",
    )
}

/// Every process on the host whose real uid is in `[first, last]`, as (pid, uid,
/// command line).
pub fn processes_with_uids(first: u32, last: u32) -> Vec<(u32, u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            .and_then(|id| id.parse::<u32>().ok());
        if let Some(uid) = uid.filter(|uid| (first..=last).contains(uid)) {
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                .unwrap_or_default();
            found.push((pid, uid, cmdline.chars().take(80).collect()));
        }
    }
    found
}
