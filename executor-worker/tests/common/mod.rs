//! Helpers shared by the integration tests: executor configs with a uid range of their
//! own (tests run in parallel processes) and the shared MBPP data.

#![allow(dead_code)]

use std::path::PathBuf;

use tgrpo_executor::ExecutorConfig;

/// A config for `slots` slots whose uids no other test process uses: uid ranges are
/// picked from the process id, and every test process uses its own.
pub fn config(slots: usize) -> ExecutorConfig {
    let pid = std::process::id();
    ExecutorConfig {
        slots,
        uid_base: uid_base_for(pid),
        ..ExecutorConfig::default()
    }
}

/// 64 uids per test process, in a range far from real users.
pub fn uid_base_for(pid: u32) -> u32 {
    3_000_000 + (pid % 100_000) * 64
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
