//! The adversarial suite: programs that try to escape, exhaust or fool the sandbox.
//! Each test runs its trick in a pool of its own, checks the verdict and the host, then
//! closes the pool and checks that no process of its uids is left anywhere on the host.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use tgrpo_executor::proto::{ScoreRequest, ScoreResponse, TestOutcome, Verdict};
use tgrpo_executor::{ExecutorConfig, Scorer, requests};

/// A pool for one trick, and the uid range its processes run under.
struct Sandbox {
    scorer: Scorer,
    config: ExecutorConfig,
}

impl Sandbox {
    async fn start(slots: usize) -> Self {
        let config = common::config(slots);
        let scorer = Scorer::local(config.clone())
            .await
            .expect("sandbox pool starts");
        Self { scorer, config }
    }

    async fn score(&self, request: ScoreRequest) -> ScoreResponse {
        self.scorer.score(request).await.expect("scoring works")
    }

    fn uid_range(&self) -> (u32, u32) {
        let first = self.config.uid_base;
        (first, first + 2 * self.config.effective_slots() as u32 - 1)
    }

    /// Processes of this pool's uids right now.
    fn processes(&self) -> Vec<(u32, u32, String)> {
        let (first, last) = self.uid_range();
        common::processes_with_uids(first, last)
    }

    /// Closes the pool and asserts that every process it ever ran is gone.
    async fn finish(self) {
        self.scorer.close().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processes of the sandbox uids left on the host: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn request(code: &str, tests: &[&str], timeout_s: f64) -> ScoreRequest {
    let mut request = requests::mbpp("trick", code, tests.iter().copied(), "");
    request.timeout_s = Some(timeout_s);
    request
}

fn assert_not_passed(response: &ScoreResponse) {
    assert_ne!(
        response.verdict(),
        Verdict::Passed,
        "a cheating program passed: {response:?}"
    );
    assert_eq!(response.reward, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_times_out() {
    let sandbox = Sandbox::start(1).await;
    let started = Instant::now();
    let response = sandbox
        .score(request(
            "def f(x):\n    while True:\n        pass\n",
            &["assert f(1) == 1"],
            1.0,
        ))
        .await;
    assert_eq!(response.verdict(), Verdict::Timeout, "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The slot is usable again right away.
    let ok = sandbox
        .score(request(
            "def f(x):\n    return x\n",
            &["assert f(1) == 1"],
            5.0,
        ))
        .await;
    assert_eq!(ok.verdict(), Verdict::Passed, "{ok:?}");
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_spin_ignoring_sigterm_is_killed() {
    let sandbox = Sandbox::start(1).await;
    let code = "import signal\n\
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n    \
                    signal.signal(s, signal.SIG_IGN)\n\
                x = 0\n\
                while True:\n    x += 1\n";
    let started = Instant::now();
    let response = sandbox.score(request(code, &["assert x == 1"], 1.0)).await;
    assert_eq!(response.verdict(), Verdict::Timeout, "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_contained() {
    let sandbox = Sandbox::start(1).await;
    let code = "import os\n\
                def f():\n    \
                    n = 0\n    \
                    while True:\n        \
                        try:\n            \
                            pid = os.fork()\n        \
                        except OSError:\n            \
                            return n\n        \
                        if pid == 0:\n            \
                            while True:\n                \
                                try:\n                    \
                                    os.fork()\n                \
                                except OSError:\n                    \
                                    pass\n        \
                        n += 1\n";
    let response = sandbox
        .score(request(code, &["assert f() > 10**6"], 3.0))
        .await;
    assert_not_passed(&response);
    // The fork bomb ran into RLIMIT_NPROC instead of filling the host's process table.
    let limit = sandbox.config.limits.processes as usize;
    assert!(
        sandbox.processes().len() <= limit + 2,
        "{} sandbox processes after the bomb",
        sandbox.processes().len()
    );
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_contained() {
    let sandbox = Sandbox::start(1).await;
    let code = "def f():\n    \
                    blocks = []\n    \
                    while True:\n        \
                        blocks.append(bytearray(64 * 1024 * 1024))\n";
    let response = sandbox.score(request(code, &["assert f()"], 10.0)).await;
    assert_not_passed(&response);
    assert!(
        response.tests[0].message.contains("MemoryError"),
        "the address-space limit ends the bomb: {response:?}"
    );
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flood_is_capped() {
    let sandbox = Sandbox::start(1).await;
    // 64 MiB on stdout, 8 MiB on stderr, then a correct function.
    let code = "import sys\n\
                chunk = 'x' * (1 << 20)\n\
                for _ in range(64):\n    sys.stdout.write(chunk)\n\
                for _ in range(8):\n    sys.stderr.write(chunk)\n\
                def f(x):\n    print('y' * 100000)\n    return x\n";
    let response = sandbox
        .score(request(code, &["assert f(2) == 2"], 20.0))
        .await;
    assert_eq!(response.verdict(), Verdict::Passed, "{}", response.detail);
    let cap = sandbox.config.limits.output_bytes;
    assert_eq!(response.stdout.len(), cap);
    assert_eq!(response.stderr.len(), cap);
    assert_eq!(
        response.stdout.len() as u64 + response.stdout_dropped_bytes,
        64 * (1 << 20) + 100_001
    );
    assert_eq!(
        response.stderr.len() as u64 + response.stderr_dropped_bytes,
        8 * (1 << 20)
    );
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_is_unreachable() {
    let sandbox = Sandbox::start(1).await;
    // A listener on the host's loopback: the program must not reach it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket\n\
         def attempt(host, port):\n    \
             try:\n        \
                 s = socket.create_connection((host, port), timeout=1)\n        \
                 s.close()\n        \
                 return 'connected'\n    \
             except OSError as e:\n        \
                 return 'blocked'\n\
         def raw():\n    \
             try:\n        \
                 socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n        \
                 return 'created'\n    \
             except OSError:\n        \
                 return 'blocked'\n\
         local = attempt('127.0.0.1', {port})\n"
    );
    let response = sandbox
        .score(request(
            &code,
            &[
                "assert local == 'blocked'",
                "assert attempt('127.0.0.1', 4222) == 'blocked'",
                "assert attempt('1.1.1.1', 53) == 'blocked'",
                "assert attempt('8.8.8.8', 443) == 'blocked'",
                "assert raw() == 'blocked'",
            ],
            10.0,
        ))
        .await;
    assert_eq!(response.verdict(), Verdict::Passed, "{}", response.detail);
    // Independent of what the program says: nothing connected to our listener.
    assert!(
        listener.accept().is_err(),
        "the sandbox reached the host's loopback"
    );
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_filesystem_is_read_only_or_invisible() {
    let sandbox = Sandbox::start(1).await;
    let host_dir = tempfile::tempdir().unwrap();
    let host_target = host_dir.path().join("escaped.txt");
    let code = format!(
        "import os\n\
         def write(path):\n    \
             try:\n        \
                 with open(path, 'w') as f:\n            \
                     f.write('pwned')\n        \
                 return 'written'\n    \
             except OSError as e:\n        \
                 return 'denied'\n\
         def visible(path):\n    \
             return os.path.exists(path)\n\
         outside = [write(p) for p in ({target:?}, '/usr/pwned', '/etc/pwned', '/pwned', '/dev/pwned')]\n\
         inside = write('/work/ok.txt') + write('/tmp/ok.txt')\n",
        target = host_target.to_string_lossy()
    );
    let response = sandbox
        .score(request(
            &code,
            &[
                "assert outside == ['denied'] * 5",
                "assert inside == 'writtenwritten'",
                "assert os.getcwd() == '/work'",
                "assert not visible('/etc/passwd') and not visible('/root') and not visible('/proc/1')",
                &format!("assert not visible({:?})", host_dir.path().to_string_lossy()),
            ],
            10.0,
        ))
        .await;
    assert_eq!(response.verdict(), Verdict::Passed, "{}", response.detail);
    assert!(!host_target.exists(), "the program wrote to the host");
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_privileges_are_empty() {
    let sandbox = Sandbox::start(1).await;
    let code = "import os, ctypes\n\
                libc = ctypes.CDLL(None, use_errno=True)\n\
                def env():\n    return dict(os.environ)\n\
                def ids():\n    return (os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n\
                def ptrace_errno():\n    libc.ptrace(16, 1, 0, 0)\n    return ctypes.get_errno()\n\
                def mount_errno():\n    libc.mount(b'none', b'/work', b'tmpfs', 0, None)\n    return ctypes.get_errno()\n\
                def unshare_errno():\n    libc.unshare(0x10000000)\n    return ctypes.get_errno()\n\
                def exec_errno():\n    \
                    try:\n        os.execv('/usr/bin/true', ['true'])\n    \
                    except OSError as e:\n        return e.errno\n";
    let uid = sandbox.config.uid_base;
    let response = sandbox
        .score(request(
            code,
            &[
                "assert env() == {}",
                &format!("assert ids() == ({uid}, {uid}, {uid}, [])"),
                "assert ptrace_errno() == 1",
                "assert mount_errno() == 1",
                "assert unshare_errno() == 1",
                "assert exec_errno() == 1",
                "assert os.getpid() == 1",
            ],
            10.0,
        ))
        .await;
    assert_eq!(response.verdict(), Verdict::Passed, "{}", response.detail);
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_parent_changes_nothing() {
    let sandbox = Sandbox::start(1).await;
    let code = "import os, signal\n\
                for target in (os.getppid(), 0, -1, 1):\n    \
                    for sig in (signal.SIGKILL, signal.SIGTERM):\n        \
                        try:\n            os.kill(target, sig)\n        \
                        except OSError:\n            pass\n\
                def f(x):\n    return x + 1\n";
    let response = sandbox
        .score(request(code, &["assert f(1) == 3"], 5.0))
        .await;
    assert_eq!(response.verdict(), Verdict::Failed, "{response:?}");
    // The worker, the fork-server and the slot survive.
    let ok = sandbox
        .score(request(
            "def f(x):\n    return x + 1\n",
            &["assert f(1) == 2"],
            5.0,
        ))
        .await;
    assert_eq!(ok.verdict(), Verdict::Passed, "{ok:?}");
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_die_with_the_execution() {
    let sandbox = Sandbox::start(1).await;
    // A double-forked, setsid'd daemon that outlives the program and keeps working.
    let code = "import os, time\n\
                if os.fork() == 0:\n    \
                    os.setsid()\n    \
                    if os.fork() == 0:\n        \
                        time.sleep(1.5)\n        \
                        open('/work/late.txt', 'w').write('still here')\n        \
                        while True:\n            time.sleep(0.1)\n    \
                    os._exit(0)\n\
                def f():\n    return 1\n";
    let response = sandbox
        .score(request(code, &["assert f() == 1"], 5.0))
        .await;
    assert_eq!(response.verdict(), Verdict::Passed, "{}", response.detail);
    // After the daemon's wake-up time, only the next pre-forked execution (its tester
    // and program) may run under the slot's uids.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = sandbox.processes();
    assert!(left.len() <= 2, "daemon survived its execution: {left:?}");
    // And the next execution starts from an empty /work.
    let next = sandbox
        .score(request(
            "import os\ndef late():\n    return os.path.exists('/work/late.txt')\n",
            &["assert late() is False"],
            5.0,
        ))
        .await;
    assert_eq!(next.verdict(), Verdict::Passed, "{}", next.detail);
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exiting_early_never_passes() {
    let sandbox = Sandbox::start(1).await;
    let wrong = "def f(x):\n    return 0\n";
    for exit in [
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "raise SystemExit(0)\n",
    ] {
        // Before the tests...
        let response = sandbox
            .score(request(
                &format!("{wrong}{exit}"),
                &["assert f(1) == 2"],
                5.0,
            ))
            .await;
        assert_not_passed(&response);
        // ...and between them, from inside the function under test.
        let inside = format!(
            "def f(x):\n    if x == 2:\n        {}\n    return x\n",
            exit.trim().replace('\n', "\n        ")
        );
        let response = sandbox
            .score(request(
                &inside,
                &["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"],
                5.0,
            ))
            .await;
        assert_not_passed(&response);
        assert_eq!(response.tests_passed, 1, "{response:?}");
        assert_eq!(
            response.tests[2].outcome(),
            TestOutcome::NotRun,
            "{response:?}"
        );
    }
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_markers_and_forged_frames_never_pass() {
    let sandbox = Sandbox::start(1).await;
    let code = "import os, sys, json\n\
                marker = '{\"t\":0,\"o\":\"p\"}\\n{\"done\":1}\\n'\n\
                print('ALL TESTS PASSED'); print(marker)\n\
                sys.stderr.write(marker)\n\
                for fd in range(0, 64):\n    \
                    try:\n        os.write(fd, marker.encode())\n    \
                    except OSError:\n        pass\n\
                def f(x):\n    return 0\n";
    let response = sandbox
        .score(request(
            code,
            &["assert f(1) == 1", "assert f(2) == 2"],
            5.0,
        ))
        .await;
    assert_not_passed(&response);
    assert_eq!(response.tests_passed, 0, "{response:?}");
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_builtins_and_the_harness_never_passes() {
    let sandbox = Sandbox::start(1).await;
    let tricks = [
        // Every comparison true; every assertion error gone.
        "import builtins\n\
         class Yes:\n    \
             def __eq__(self, other): return True\n    \
             def __ne__(self, other): return False\n    \
             def __bool__(self): return True\n    \
             def __hash__(self): return 0\n\
         builtins.AssertionError = type('Nope', (Exception,), {})\n\
         builtins.len = lambda x: 3\n\
         def f(x):\n    return Yes()\n",
        // Subclass of int whose equality lies.
        "class Liar(int):\n    \
             def __eq__(self, other): return True\n\
         def f(x):\n    return Liar(0)\n",
        // Shadow the builtins the test uses to normalise both sides.
        "def sorted(*args, **kwargs):\n    return 0\n\
         def set(*args):\n    return 0\n\
         def f(x):\n    return [x]\n",
        // A fake math module under the name the test uses.
        "class FakeMath:\n    \
             def isclose(self, *a, **k): return True\n\
         math = FakeMath()\n\
         def f(x):\n    return 0.0\n",
        // Rewrite the harness through the garbage collector: answer True to everything.
        "import gc\n\
         for obj in gc.get_objects():\n    \
             if isinstance(obj, type) and hasattr(obj, 'serve_one'):\n        \
                 def serve_one(self, message):\n            \
                     self.send(['r', True])\n        \
                 obj.serve_one = serve_one\n\
         def f(x):\n    return 0\n",
        // Answer the tester's pending reads with forged replies ahead of time.
        "import os\n\
         frame = b'[\"r\",true]'\n\
         os.write(3, len(frame).to_bytes(4, 'big') + frame)\n\
         def f(x):\n    return 0\n",
    ];
    let tests = [
        "assert f(1) == 1",
        "assert sorted(f(2)) == sorted([2, 5])",
        "assert set(f(3)) == set([3, 4])",
        "assert math.isclose(f(4), 4.0)",
        "assert len(f(5)) == 7",
    ];
    for trick in tricks {
        let response = sandbox.score(request(trick, &tests, 5.0)).await;
        assert_not_passed(&response);
        assert!(
            response.tests_passed <= 1,
            "trick passed {} tests: {trick}\n{response:?}",
            response.tests_passed
        );
    }
    // The same tests pass for an honest, correct program: the checks above fail for the
    // right reason.
    let honest = sandbox
        .score(request(
            "import math\ndef f(x):\n    return {1: 1, 2: [5, 2], 3: [4, 3], 4: 4.0, 5: [0] * 7}[x]\n",
            &tests,
            5.0,
        ))
        .await;
    assert_eq!(honest.verdict(), Verdict::Passed, "{}", honest.detail);
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_survives_into_the_next_execution() {
    // One slot: the second program runs in the same slot, forked from the same server.
    let sandbox = Sandbox::start(1).await;
    // (It tampers with modules its own harness does not need: breaking those, such as
    // json, only breaks the program itself.)
    let leave = "import os, sys, heapq, ctypes, socket, builtins, collections\n\
                 open('/work/state', 'w').write('1')\n\
                 open('/tmp/state2', 'w').write('1')\n\
                 heapq.heappush = lambda *a: 'tampered'\n\
                 builtins.tampered = True\n\
                 collections.marker = 42\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 shm = libc.shmget(0x7472706f, 4096, 0o1666)\n\
                 s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
                 s.bind('\\0tgrpo-state')\n\
                 s.listen(1)\n\
                 def f():\n    return shm\n";
    let first = sandbox
        .score(request(leave, &["assert f() >= 0"], 5.0))
        .await;
    assert_eq!(first.verdict(), Verdict::Passed, "{first:?}");
    let check = "import os, heapq, ctypes, socket, builtins, collections\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 def files():\n    \
                     return sorted(os.listdir('/work')) + sorted(os.listdir('/tmp'))\n\
                 def shm():\n    \
                     return libc.shmget(0x7472706f, 4096, 0o666)\n\
                 def abstract_socket():\n    \
                     s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n    \
                     try:\n        s.connect('\\0tgrpo-state')\n        return 'connected'\n    \
                     except OSError:\n        return 'absent'\n\
                 def modules():\n    \
                     h = []\n    \
                     return (heapq.heappush(h, 1), h, hasattr(builtins, 'tampered'), hasattr(collections, 'marker'))\n";
    let second = sandbox
        .score(request(
            check,
            &[
                "assert files() == []",
                "assert shm() == -1",
                "assert abstract_socket() == 'absent'",
                "assert modules() == (None, [1], False, False)",
            ],
            5.0,
        ))
        .await;
    assert_eq!(second.verdict(), Verdict::Passed, "{second:?}");
    sandbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_tests_cannot_be_read_from_memory() {
    // One slot: the reader is forked from the same server that handled the secret.
    let sandbox = Sandbox::start(1).await;
    let suffix = format!("{:016x}", rand::random::<u64>());
    // The secret only ever appears in a test (and so in the job the server forwarded).
    let secret_test = format!("assert f() == 'QZXSECRET{suffix}'");
    let first = sandbox
        .score(request(
            "def f():\n    return 'nope'\n",
            &[&secret_test],
            5.0,
        ))
        .await;
    assert_eq!(first.verdict(), Verdict::Failed);
    // The reader scans every mapped page around its heaps and its stack for the secret's
    // pattern; it plants one copy of its own so that a blind scanner cannot pass.
    let reader = r#"
import ctypes, os, re, sys
libc = ctypes.CDLL(None, use_errno=True)
PAGE = 4096
probe_r, probe_w = os.pipe()
pattern = re.compile(b"QZX" + b"SECRET" + b"([0-9a-f]{16})")
own = ("QZX" + "SECRET" + "fedcba9876543210").encode()
def mapped(address):
    # A readable page: the kernel copies it into a pipe (EFAULT if unmapped or
    # unreadable) instead of the program faulting on it.
    count = libc.write(probe_w, ctypes.c_void_p(address), PAGE)
    if count > 0:
        os.read(probe_r, count)
        return True
    return False
def scan():
    buffer = ctypes.create_string_buffer(1 << 20)
    libc.sbrk.restype = ctypes.c_void_p
    # The brk heap (malloc), the pymalloc arenas and the mmap'd regions.
    centres = [libc.sbrk(0), id(sys.modules), id(own), ctypes.addressof(buffer),
               id(b"x" * (1 << 18)), ctypes.addressof(ctypes.c_int(0))]
    found = set()
    seen = set()
    for centre in centres:
        start = max((centre - (64 << 20)) & ~(PAGE - 1), PAGE)
        for address in range(start, centre + (64 << 20), PAGE):
            if address in seen or not mapped(address):
                continue
            seen.add(address)
            # Read two pages so that a match across a page boundary is not missed.
            data = ctypes.string_at(address, PAGE * 2 if mapped(address + PAGE) else PAGE)
            for match in pattern.finditer(data):
                found.add(match.group(1).decode())
    return sorted(found)
"#;
    let second = sandbox
        .score(request(
            reader,
            &["assert scan() == ['fedcba9876543210']"],
            20.0,
        ))
        .await;
    assert_eq!(
        second.verdict(),
        Verdict::Passed,
        "the secret of an earlier test was found in a later program's memory: {second:?}"
    );
    sandbox.finish().await;
}
