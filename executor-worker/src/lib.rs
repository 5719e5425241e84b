//! # tgrpo-executor: scoring untrusted Python against unit tests
//!
//! Every reward in tgrpo comes from running model-written code against tests. Under RL
//! that code is *adversarial*: the policy is paid for passing tests and will find any
//! hole in the harness. This crate runs each program in a sandbox, decides the verdict
//! where the program cannot reach, and serves that as an in-process pool
//! ([`Scorer::local`]), a gRPC service ([`service::run`], `tgrpo executor`) and a
//! balancing client ([`Scorer::remote`]).
//!
//! ## Using it from other crates
//!
//! [`Scorer`] is the handle: cheap to `clone`, `score(ScoreRequest)` and
//! `score_many(Vec<ScoreRequest>)` (responses in request order), the same whether the
//! sandboxes are local or remote. Requests and responses are the
//! `tgrpo.executor.v1` proto messages ([`tgrpo_proto::executor`]); [`requests`] builds
//! the usual shapes (`mbpp`, `humaneval`, `generic`). A malformed request or a bad
//! program is an `Ok` response with `VERDICT_ERROR` and a `detail`; `Err` means the
//! infrastructure failed.
//!
//! ## Threat model
//!
//! The program may do anything CPython lets it do: loop forever, fork-bomb, allocate
//! without bound, flood stdout, open sockets, write files, read the environment, signal
//! or ptrace other processes, leave daemons behind, and — the real danger for RL —
//! *fake its verdict*: print a success marker, `sys.exit(0)` or `os._exit(0)` before
//! the tests, kill its parent, monkeypatch the harness through `gc`, replace builtins,
//! find and write to any file descriptor, or return an object whose `__eq__` is always
//! true. The goal: the only way to pass a test is to return values that are equal (by
//! the *test's* `==`) to what the test expects, and nothing the program does survives
//! its execution or reaches the host.
//!
//! ## Design: the verdict is decided outside the program's process
//!
//! ```text
//! worker (Rust) ──frames── tgrpo-zygote: python, root, one per slot, never runs
//!                           │  │           untrusted code
//!          fork per execution  │  fork into new pid, mount and ipc namespaces per execution
//!                           │  │
//!   tgrpo-tester (T) ◄──────┼──┼──socket──► tgrpo-program (U)
//!   uid base+2i+1, host pid    │            pid 1 of a fresh pid namespace, own mount
//!   namespace; runs setup code │            and ipc namespaces and tmpfs /work, uid
//!   and each test statement    │            base+2i, seccomp, rlimits, empty env; runs
//!   with its own pristine      │            the program, then only answers T
//!   builtins; reports each test on a pipe only T holds ──► zygote
//! ```
//!
//! Both are children of the zygote, which kills and reaps them itself (so no pid can be
//! reused before the kill). For U the zygote calls `unshare(CLONE_NEWPID)`, forks (the
//! child is pid 1 of the new namespace) and `setns`es back to its own pid namespace, so
//! that the next execution can get a new one again; U unshares its own mount and ipc
//! namespaces before anything untrusted reaches it. The zygote forks each execution
//! *before* its job arrives (T and U set themselves up and wait; U receives its program
//! only once sandboxed), so the set-up of the next execution overlaps with the end of
//! the current one.
//!
//! - **U never decides anything.** It runs the program, then serves calls from T over
//!   a socket: "look up name", "call handle with these arguments", "get attribute" …
//!   Results come back in a *data-only* encoding (JSON with type tags: None, bool,
//!   int, float, complex, str, bytes, list, tuple, dict, set, frozenset, Decimal,
//!   Fraction, deque, OrderedDict, Counter, defaultdict, range, slice, dict views;
//!   never pickle). T decodes them strictly (tags, arity, depth ≤ 200, frame size cap)
//!   into its *own* objects and evaluates `assert f(x) == 5` with its own `==`.
//! - **Non-data values are opaque handles** (proxies in T). A handle compared with data
//!   is never equal (the program does not get to answer `==`), ordering against data is
//!   a `TypeError`, `x in handle` iterates the handle and compares in T. An object whose
//!   `__eq__` is always true therefore passes nothing. Handles may be called, indexed,
//!   iterated, printed: those are the program choosing values, which is legitimate.
//! - **Names.** Test code runs in a namespace whose missing names are looked up in the
//!   program. A program global that names a stdlib module (`math`) resolves to T's own
//!   import, so `math.isclose` cannot be swapped. Builtins resolve to T's builtins
//!   unless the function under test itself bears a builtin's name (MBPP 126 defines
//!   `sum`); otherwise a program could redefine `sorted` and make
//!   `sorted(f(x)) == sorted(expected)` compare two of its own answers.
//! - **Callbacks**: a test's lambda passed to the program travels as a handle the
//!   program may only *call* (T runs it); the program can reach no other object of T.
//! - **Reporting**: T writes one line per test to a pipe created by the zygote; U's
//!   file descriptors are closed down to stdio and its socket to T right after fork,
//!   U is in another pid namespace and uid (it cannot see, signal or ptrace T), so
//!   output markers, exit codes, `sys.exit`, `os._exit`, killing "the parent" (getppid
//!   is 0 in its namespace) or crashing only end the program: tests that did not run
//!   are `NOT_RUN` and the verdict is not `PASSED` (`sys.exit` inside a call ends
//!   the program too, as it would in one process). When U reports that the program
//!   does not compile, T compiles it itself to confirm, so U cannot fake a syntax error.
//!
//! Why each trick fails is tested one by one in `tests/adversarial.rs`.
//!
//! ## Sandbox (per execution unless noted)
//!
//! - **Namespaces**: pid (the program is pid 1: killing it removes every descendant,
//!   double-forked daemons and `setsid` escapees included), mount (the slot's root
//!   plus a private tmpfs on /work, which vanishes with the namespace), ipc (SysV and
//!   POSIX message queues cannot carry state to the next execution). Per slot,
//!   created once by its fork-server: net (only a down `lo`: no route to the internet,
//!   the host's loopback services or other executions — creating one costs ~0.5 ms on
//!   this kind of host, and no socket or interface state can outlive the processes of
//!   an execution, whose uid lacks CAP_NET_ADMIN) and uts. The slot's root filesystem
//!   is a read-only tmpfs holding `/usr` (read-only, nosuid, nodev bind), the
//!   `/lib*`/`/bin` symlinks, `/dev/{null,zero,full,random,urandom}` and `/work`;
//!   `/tmp` points to `/work`; the host's other files are invisible.
//! - **Credentials**: programs run as `uid_base + 2·slot`, tests as `uid_base +
//!   2·slot + 1`, no supplementary groups, `no_new_privs`; the uid is unprivileged so
//!   RLIMIT_NPROC holds (root ignores it).
//! - **seccomp**: one deny-list filter (EPERM) for ptrace and process_vm_*, mount and
//!   namespace calls (clone with namespace flags included), bpf, perf, userfaultfd,
//!   io_uring, kexec, modules, keyrings, clock setting, execve, sockets other than
//!   AF_UNIX, raw/packet sockets and x32 syscall numbers; clone3 answers ENOSYS so
//!   libc falls back to clone, whose flags BPF can inspect; another ABI's syscalls kill
//!   the process. One program of 81 instructions, assembled in the worker (installing a
//!   filter costs the kernel time per instruction, and every execution installs it
//!   twice) and checked in the tests to agree with `seccompiler`'s build of the same
//!   rules (381 instructions); handed to the zygote as raw BPF;
//!   T and U each install it during their set-up, before any input reaches them.
//! - **rlimits**: address space (1 GiB), CPU seconds (timeout + 1), file size, open
//!   files, processes, no core dumps, no locked memory.
//! - **Wall clock**: the zygote kills the program (namespace init) and T at the
//!   deadline with SIGKILL; both are reaped before the next program starts. T and U
//!   hold a parent-death signal, so killing a fork-server ends its execution too.
//! - **Output**: stdout/stderr are pipes drained continuously by the zygote; the first
//!   `output_bytes` of each are kept, the rest counted and dropped. U flushes its
//!   output before every reply to T, so what a test printed is never lost.
//! - **Not covered**: a per-slot memory cgroup. Memory is bounded per process
//!   (RLIMIT_AS) and processes per slot (RLIMIT_NPROC), so a program that forks and
//!   fills every child can reach `processes × memory_bytes`; lower `processes` where
//!   that matters.
//! - **Environment**: empty; stdin is /dev/null.
//!
//! If the host cannot give this (not root, no namespaces, the self-check run inside a
//! sandbox at start-up finds less than promised), [`SandboxPool::start`] refuses with
//! [`ExecutorError::SandboxUnavailable`], unless the operator sets
//! `unsafe_no_sandbox` (`--unsafe-no-sandbox`): then programs run without namespaces
//! or uid switch, still in the T/U split, still with rlimits and (best effort) seccomp.
//!
//! ## Throughput
//!
//! Each slot's zygote holds an initialised interpreter with the stdlib imported (and
//! `gc.freeze()`d, so children do not copy its pages when collecting); an execution
//! costs a fork, a clone and a few syscalls instead of an interpreter start. Slots
//! default to the number of cores. The next execution is forked while the current one
//! runs; the result is reported as soon as T is done and the output taken (the
//! kernel's namespace teardown, an RCU grace period, finishes in the background and is
//! awaited only before the next program starts). `tgrpo bench executor` measures the
//! pool against a fresh `python3` per program; what one execution costs is dominated
//! by two fresh python processes (tester and program: fork, copy-on-write faults, exit)
//! — the price of a verdict decided outside the program.
//!
//! Where an execution's CPU goes (perf, one slot, MBPP programs, load 8-11 on the
//! 2-core VM, where a page fault costs ~5-10 µs): about 1 ms/execution (per fork) of
//! page-table copying in the zygote, about 4 ms of copy-on-write faults (the zygote's
//! ~200 pages after each pair of forks, ~400 in each child: every page of the zygote a
//! child writes, refcounts included, is copied), about 3 ms of python in T and U, the
//! rest seccomp installs, namespaces and pipes. What was cut (before/after on the same
//! runs: 19.3-19.8 → 12.2-14.7 ms CPU/execution, faults 1300 → 1030 per execution):
//! the compiler's AST types, created on the first `compile()` of a process, are created
//! once in the zygote (each child used to build ~100 types, a quarter of its cost);
//! process-name buffers and the JSON encoder are made once in the zygote (a ctypes array
//! type and an encoder per child touched dozens of pages); the scratch buffer is
//! `MADV_DONTFORK`; U is a plain `os.fork()` into a pid namespace unshared just before;
//! the seccomp program is 81 instructions instead of 381. What is left is mostly the
//! second process: a tester kept alive across executions would save roughly another
//! 30%, but would let one job's test code leave state (module attributes, decimal
//! contexts, recursion limits) for the next, so each execution still gets a fresh one.
//!
//! ## No state between executions
//!
//! Each execution is a fresh fork of a zygote that never ran untrusted code, in fresh
//! pid/mount/ipc namespaces with a fresh /work; the previous execution is reaped
//! entirely (namespace init and so every descendant) before the next program starts,
//! so nothing of it meets the next one in the slot's shared network namespace (abstract
//! sockets) or anywhere else. The zygote never holds a job in its own memory: the
//! program and the tests are pumped from the worker to U and T through one buffer that
//! is zeroed before the next fork, and results and output likewise, so a program that
//! scans its whole address space finds no earlier program's tests or code (tested).
//!
//! ## Layout
//!
//! - [`config`]: the `[executor]` section; [`error`]: the crate's error type.
//! - `sandbox`: the pool of fork-servers and the start-up self-check;
//!   `python/harness.py`: the fork-server, tester and program processes.
//! - `seccomp`: the filters; [`reward`]: binary/partial/scaled rewards.
//! - `scoring`: request validation and verdict rules; [`scorer`]: the public handle.
//! - [`service`]: the gRPC service; [`client`]: the balancing client.
//! - [`mbpp`], [`bench`](mod@bench): data and benchmark for `tgrpo bench executor`.
//! - [`metrics`]: the `tgrpo_executor_*` Prometheus series (requests, verdicts, queue
//!   depth, in-flight executions, execution seconds, rejections).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod client;
pub mod config;
pub mod error;
pub mod mbpp;
pub mod metrics;
pub mod requests;
pub mod reward;
mod sandbox;
pub mod scorer;
mod scoring;
mod seccomp;
pub mod service;

pub use client::{BalancedClient, ClientConfig};
pub use config::{ExecutorConfig, SandboxLimits, ScaledRewardConfig};
pub use error::ExecutorError;
pub use sandbox::{
    ExecutionOutcome, IsolationReport, Job, JobFormat, SandboxPool, TestRecord, TestStatus,
};
pub use scorer::Scorer;
pub use scoring::LocalScorer;
/// The wire types, re-exported so callers need not depend on `tgrpo-proto` directly.
pub use tgrpo_proto::executor as proto;
