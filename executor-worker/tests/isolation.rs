//! The start-up self-check: what a sandbox actually gets on this host, measured from
//! inside one, and a verdict on the simplest program.

mod common;

use tgrpo_executor::proto::Verdict;
use tgrpo_executor::{Scorer, requests};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_is_what_it_claims() -> anyhow::Result<()> {
    let config = common::config(2);
    let scorer = Scorer::local(config.clone()).await?;
    let report = scorer
        .isolation()
        .expect("a local pool reports its isolation");
    println!("{report}");
    assert!(report.sandboxed);
    assert_eq!(
        report.program_pid, 1,
        "the program is the init of its pid namespace"
    );
    assert!(report.program_uid >= i64::from(config.uid_base));
    assert_eq!(report.tester_uid, report.program_uid + 1);
    assert_eq!(report.seccomp_mode, 2);
    assert_eq!(report.ptrace_errno, i64::from(libc::EPERM));
    assert_eq!(report.interfaces, ["lo"]);
    assert_eq!(report.environment_size, 0);
    assert!(
        report.usr_write.contains("Read-only"),
        "{}",
        report.usr_write
    );
    for namespace in ["mount", "net", "uts"] {
        assert!(report.slot_namespaces.iter().any(|n| n == namespace));
    }
    for namespace in ["pid", "mount", "ipc"] {
        assert!(report.execution_namespaces.iter().any(|n| n == namespace));
    }
    assert_eq!(
        report.rlimits.get("RLIMIT_AS").copied(),
        Some(config.limits.memory_bytes as i64)
    );
    assert_eq!(
        report.rlimits.get("RLIMIT_NPROC").copied(),
        Some(config.limits.processes as i64)
    );

    let response = scorer
        .score(requests::mbpp(
            "ok",
            "def f(x):\n    return x + 1\n",
            ["assert f(1) == 2", "assert f(2) == 4"],
            "",
        ))
        .await?;
    assert_eq!(response.verdict(), Verdict::Failed);
    assert_eq!(response.tests_passed, 1);
    scorer.close().await;
    Ok(())
}
