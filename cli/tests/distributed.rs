//! Distributed mode on one host, end to end: `tgrpo launch` starts a real nats-server,
//! two executors with real sandboxes, the teacher proxy, the learner and two rollout
//! workers as separate processes of the real `tgrpo` binary, talking real gRPC and NATS
//! on loopback. The model is the CPU demo's tiny one (built at start), the problems the
//! demo's 16.
//!
//! One test runs a few steps undisturbed; the others are the fault drills, each killing
//! one kind of process mid-run with SIGKILL (its whole process group, as when a machine
//! or pod dies) and checking what the run's files say afterwards: `metrics.jsonl` (one
//! line per optimizer step), the checkpoints, `final_model/`, the launcher's
//! `launch/processes.json` and the services' JSON logs in `launch/logs/`. Nothing is
//! timed; the deadlines below only turn a hang into a failure.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const TGRPO: &str = env!("CARGO_BIN_EXE_tgrpo");
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Longest a launch may take before the test gives up on it (a hang guard, not a
/// measurement: a healthy launch here takes a small fraction of it).
const RUN_DEADLINE: Duration = Duration::from_secs(240);

/// Prompts per optimizer step in the test config.
const PROMPTS_PER_STEP: u64 = 2;

/// The services' log filter: info, plus the lease bookkeeping the drills read.
const LOG_FILTER: &str = "info,tgrpo_learner::coordinator=debug,tgrpo_rollout::worker=debug,tgrpo_executor::client=debug";

/// A sandbox uid range of this launch's own: 256 uids per test process (tests run in
/// parallel processes under nextest, in parallel threads under cargo test), 32 per
/// launch (two executors of two slots use 8). Disjoint from every other test's ranges
/// (executor crate 1M-52M, rollout/teacher 3M-10M, pipeline 60M-67M, cli 100M-113M).
fn uid_base() -> u32 {
    static LAUNCHES: AtomicU32 = AtomicU32::new(0);
    let launch = LAUNCHES.fetch_add(1, Ordering::Relaxed) % 8;
    200_000_000 + (std::process::id() % 50_000) * 256 + launch * 32
}

/// A run of the demo's problems and tiny model, sized for a test: two prompts per step,
/// a checkpoint every step, short leases, fast reconnects.
fn write_config(dir: &Path, run_id: &str, max_steps: usize) -> PathBuf {
    let out = dir.join("out");
    let data = dir.join("data");
    let traces = data.join("synthetic_traces.jsonl");
    let text = format!(
        r#"run_id = "{run_id}"
output_dir = "{out}"

[model]
source = "builtin:demo"
device = "cpu"
dtype = "f32"

[lora]
r = 8
alpha = 16.0
dropout = 0.0

[data]
source = "demo"
output_dir = "{data}"

[teacher]
num_samples_per_problem = 1
max_tokens = 32
cache_dir = "{data}/teacher_cache"
traces_path = "{traces}"

[synthesis]
# The proxy serves the tiny model as a local teacher; training reads the traces file.
teacher = "local"
local_model = "{out}/demo_model"

[grpo]
num_generations = 4
max_new_tokens = 16
kl_coef = 0.0
max_staleness = 1

[dual_source]
use_teacher_thinking = false

[training]
learning_rate = 3e-3
warmup_steps = 0
lr_schedule = "constant"
gradient_accumulation_steps = 1
prompts_per_step = {PROMPTS_PER_STEP}
teacher_traces_per_step = 2
epochs = 1
max_steps = {max_steps}
save_every_steps = 1
keep_last_checkpoints = 3

[learner]
lease_timeout_s = 3.0
max_prompts_per_lease = 2
max_buffered_groups = 4
finish_linger_s = 1.0

[rollout]
max_batch_sequences = 8

[rollout.backoff]
initial_ms = 100
max_ms = 500

[executor]
slots = 2
uid_base = {uid_base}

[broadcast]
resync_interval_s = 1.0
"#,
        out = out.display(),
        data = data.display(),
        traces = traces.display(),
        uid_base = uid_base(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    write_traces(&traces);
    path
}

/// Verified teacher traces for the demo's first eight problems (their reference
/// solutions), as the synthesis stage would write them: the launch then has nothing to
/// synthesise.
fn write_traces(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = std::fs::File::create(path).unwrap();
    for problem in tgrpo_pipeline::demo::problems().iter().take(8) {
        let code = problem.reference.clone().unwrap();
        let record = serde_json::json!({
            "problem_id": problem.task_id,
            "sample_index": 0,
            "messages": [],
            "thinking": null,
            "answer": format!("```python\n{code}```"),
            "code": code,
            "raw_text": format!("```python\n{code}```"),
            "finish_reason": "stop",
            "teacher_model": "reference",
            "request_hash": format!("test-{}", problem.task_id),
            "passed": true,
            "reward": 1.0,
            "verdict": "passed",
        });
        writeln!(file, "{record}").unwrap();
    }
}

/// A running `tgrpo launch`, killed (with its services, by their parent-death signal) if
/// the test ends early.
struct Launch {
    child: Option<Child>,
    dir: PathBuf,
}

impl Launch {
    fn start(dir: &Path, config: &Path, extra: &[&str]) -> Self {
        let stdout = std::fs::File::create(dir.join("launch.stdout")).unwrap();
        let stderr = std::fs::File::create(dir.join("launch.stderr")).unwrap();
        let child = Command::new(TGRPO)
            .arg("launch")
            .arg("--config")
            .arg(config)
            .args(["--nats-server", NATS_SERVER, "--stop-grace-s", "20"])
            .args(extra)
            .env("TGRPO_LOG", LOG_FILTER)
            .env("TGRPO_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            dir: dir.to_path_buf(),
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    fn launcher_output(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "--- launcher stdout ---\n{}\n--- launcher stderr ---\n{}",
            tail(&read("launch.stdout"), 60),
            tail(&read("launch.stderr"), 60)
        )
    }

    /// Fails the test with the launcher's output if it has exited.
    fn check_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the launch ended early ({status}):\n{}",
                self.launcher_output()
            );
        }
    }

    /// Waits until `condition` holds (the launch still running).
    fn wait_for(&mut self, what: &str, mut condition: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            if condition(self) {
                return;
            }
            self.check_running();
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}:\n{}",
                self.launcher_output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the launcher to exit.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + RUN_DEADLINE;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the launch did not end:\n{}",
                self.launcher_output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a successful end and returns the launcher's stdout.
    fn wait_success(&mut self) -> String {
        let status = self.wait();
        assert!(
            status.success(),
            "launch failed ({status}):\n{}",
            self.launcher_output()
        );
        std::fs::read_to_string(self.dir.join("launch.stdout")).unwrap()
    }

    fn state(&self) -> Value {
        read_json(&self.out().join("launch/processes.json"))
    }

    fn service(&self, name: &str) -> Value {
        self.state()["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|service| service["name"] == name)
            .unwrap_or_else(|| panic!("no service {name} in processes.json"))
            .clone()
    }

    /// The pid of a running service.
    fn pid(&self, name: &str) -> Option<u32> {
        // The launcher writes the state file once its first service is up.
        if !self.out().join("launch/processes.json").is_file() {
            return None;
        }
        let service = self.service(name);
        (service["status"] == "running")
            .then(|| service["pid"].as_u64().map(|pid| pid as u32))
            .flatten()
    }

    /// SIGKILL to a service's whole process group (the service and everything it
    /// started), as when its machine dies.
    fn kill(&self, name: &str) -> u32 {
        let pid = self
            .pid(name)
            .unwrap_or_else(|| panic!("{name} is not running: {}", self.service(name)));
        let status = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()
            .unwrap();
        assert!(status.success(), "kill -KILL -{pid} failed");
        pid
    }

    fn log_path(&self, service: &str) -> PathBuf {
        self.out().join(format!("launch/logs/{service}.log"))
    }

    /// The JSON log events of a service (other lines, such as its final summary, left
    /// out), from byte `offset` of its log on.
    fn events(&self, service: &str, offset: usize) -> Vec<Value> {
        let text = std::fs::read_to_string(self.log_path(service)).unwrap_or_default();
        text.get(offset..)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event.get("fields").is_some())
            .collect()
    }

    fn log_len(&self, service: &str) -> usize {
        std::fs::metadata(self.log_path(service)).map_or(0, |meta| meta.len() as usize)
    }

    fn metrics(&self) -> Vec<Value> {
        metrics(&self.out())
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The lines of `metrics.jsonl` (empty before the first step).
fn metrics(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        // A line being written is not complete yet.
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn message(event: &Value) -> &str {
    event["fields"]["message"].as_str().unwrap_or_default()
}

fn field_u64(event: &Value, name: &str) -> Option<u64> {
    let value = &event["fields"][name];
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
}

/// What every completed run shows: `steps` optimizer steps numbered 1..=steps, each on a
/// full batch (no group lost), adapter versions rising with every step, a checkpoint of
/// the last step and a PEFT `final_model/`.
fn assert_complete_run(out: &Path, steps: u64) -> Vec<Value> {
    let lines = metrics(out);
    let numbers: Vec<u64> = lines
        .iter()
        .map(|line| line["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=steps).collect::<Vec<_>>(),
        "metrics.jsonl steps"
    );
    for line in &lines {
        assert_eq!(line["groups"].as_u64(), Some(PROMPTS_PER_STEP), "{line}");
        assert_eq!(line["skipped_items_total"].as_u64(), Some(0), "{line}");
        assert!(line["loss"].as_f64().is_some_and(f64::is_finite), "{line}");
    }
    let versions: Vec<u64> = lines
        .iter()
        .map(|line| line["adapter_version"].as_u64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "adapter versions must rise with every step: {versions:?}"
    );
    assert!(out.join(format!("checkpoint-{steps}")).is_dir());
    assert!(out.join("final_model/adapter_model.safetensors").is_file());
    assert!(out.join("final_model/adapter_config.json").is_file());
    lines
}

/// The adapter versions a rollout worker installed, from byte `offset` of its log on.
fn installed_versions(launch: &Launch, worker: &str, offset: usize) -> Vec<u64> {
    launch
        .events(worker, offset)
        .iter()
        .filter(|event| message(event) == "adapter installed")
        .filter_map(|event| field_u64(event, "version"))
        .collect()
}

#[test]
fn launch_runs_every_role_as_a_process_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "dist-plain", 3);
    let mut launch = Launch::start(dir.path(), &config, &[]);
    let stdout = launch.wait_success();
    let out = launch.out();
    let lines = assert_complete_run(&out, 3);
    // The teacher-SFT term read the traces file; GRPO the workers' scored groups.
    assert!(
        lines
            .iter()
            .all(|line| line["teacher_examples"].as_u64() > Some(0))
    );
    assert!(
        lines
            .iter()
            .all(|line| line["completions"].as_u64() == Some(8))
    );

    // Every role ran as its own process, and each one's log is there.
    let state = launch.state();
    let names: BTreeSet<&str> = state["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|service| service["name"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = [
        "nats",
        "executor-0",
        "executor-1",
        "teacher-proxy",
        "learner",
        "rollout-0",
        "rollout-1",
    ]
    .into();
    assert_eq!(names, expected);
    for service in state["services"].as_array().unwrap() {
        assert_eq!(service["restarts"], 0, "{service}");
        assert!(
            Path::new(service["log"].as_str().unwrap()).is_file(),
            "{service}"
        );
    }
    assert!(stdout.contains("the learner finished the run"), "{stdout}");
    // The learner published each version over NATS, and the workers installed them.
    // (Version 0, the fresh adapter, goes out first for workers that join before step 1;
    // the service and the NATS sink each log a publication.)
    let mut published: Vec<u64> = launch
        .events("learner", 0)
        .iter()
        .filter(|event| message(event) == "adapter published")
        .filter_map(|event| field_u64(event, "version"))
        .collect();
    published.dedup();
    assert_eq!(published, vec![0, 1, 2, 3]);
    let installed: Vec<u64> = ["rollout-0", "rollout-1"]
        .iter()
        .flat_map(|worker| installed_versions(&launch, worker, 0))
        .collect();
    assert!(!installed.is_empty(), "no worker installed an adapter");
    // Both workers ran until the learner told them the run was over.
    for worker in ["rollout-0", "rollout-1"] {
        let summary = std::fs::read_to_string(launch.log_path(worker)).unwrap();
        assert!(
            summary.contains("the learner finished the run"),
            "{worker}: {}",
            tail(&summary, 5)
        );
    }
    // The config every service read is the run's, with the launcher's endpoints.
    let written = std::fs::read_to_string(out.join("launch/config.toml")).unwrap();
    assert!(written.contains(state["nats_url"].as_str().unwrap()));
}

#[test]
fn drill_killed_executor_its_work_goes_to_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "dist-executor", 6);
    // No restarts: after the kill, executor-1 alone scores.
    let mut launch = Launch::start(dir.path(), &config, &["--max-restarts", "0"]);
    launch.wait_for("the first step", |launch| !launch.metrics().is_empty());
    let step_at_kill = launch.metrics().len() as u64;
    launch.kill("executor-0");
    launch.wait_success();
    let lines = assert_complete_run(&launch.out(), 6);
    assert!(
        lines.len() as u64 >= step_at_kill + 2,
        "steps after the kill: {}",
        lines.len() as u64 - step_at_kill
    );
    let executor = launch.service("executor-0");
    assert_eq!(executor["status"], "given up", "{executor}");
    assert_eq!(launch.service("executor-1")["restarts"], 0);
}

#[test]
fn drill_killed_rollout_worker_its_lease_is_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "dist-rollout", 8);
    let mut launch = Launch::start(dir.path(), &config, &[]);
    // Kill rollout-0 while it holds a lease it has not answered: the learner logged the
    // lease, the worker has not finished sampling it. A kill that lands between batches
    // (the worker holds nothing) proves nothing; then the launcher restarts the worker
    // and the drill waits for its next lease.
    let mut killed_lease = None;
    for _attempt in 0..3 {
        let mut lease = None;
        launch.wait_for("a lease held by rollout-0", |launch| {
            if launch.pid("rollout-0").is_none() {
                return false;
            }
            let issued = launch
                .events("learner", 0)
                .into_iter()
                .filter(|event| {
                    message(event) == "lease issued" && event["fields"]["worker"] == "rollout-0"
                })
                .filter_map(|event| event["fields"]["lease"].as_str().map(str::to_string))
                .next_back();
            let Some(issued) = issued else {
                return false;
            };
            let answered = launch.events("rollout-0", 0).iter().any(|event| {
                message(event) == "batch sampled" && event["fields"]["lease"] == issued.as_str()
            });
            lease = Some(issued);
            !answered
        });
        let lease = lease.unwrap();
        launch.kill("rollout-0");
        let sampled = launch.events("rollout-0", 0).iter().any(|event| {
            message(event) == "batch sampled" && event["fields"]["lease"] == lease.as_str()
        });
        if !sampled {
            killed_lease = Some(lease);
            break;
        }
    }
    let killed_lease = killed_lease.expect("no kill landed inside a lease in three tries");
    launch.wait_success();
    // Eight steps of two prompts are the whole epoch of 16 prompts: the run completes only
    // once every prompt was answered, the killed lease's too. They were leased again after
    // the lease expired: the learner handed out more prompts than the epoch has.
    assert_complete_run(&launch.out(), 8);
    let leased: u64 = launch
        .events("learner", 0)
        .iter()
        .filter(|event| message(event) == "lease issued")
        .filter_map(|event| field_u64(event, "prompts"))
        .sum();
    assert!(
        leased > 16,
        "{leased} prompts leased in all (lost lease {killed_lease})"
    );
    assert!(launch.service("rollout-0")["restarts"].as_u64() >= Some(1));
}

#[test]
fn drill_restarted_nats_workers_get_the_latest_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "dist-nats", 8);
    let mut launch = Launch::start(dir.path(), &config, &[]);
    launch.wait_for("two steps and an adapter at each worker", |launch| {
        launch.metrics().len() >= 2
            && ["rollout-0", "rollout-1"]
                .iter()
                .all(|worker| !installed_versions(launch, worker, 0).is_empty())
    });
    let version_at_kill = launch
        .metrics()
        .iter()
        .filter_map(|line| line["adapter_version"].as_u64())
        .max()
        .unwrap();
    let offsets: Vec<usize> = ["rollout-0", "rollout-1", "learner"]
        .iter()
        .map(|service| launch.log_len(service))
        .collect();
    launch.kill("nats");
    launch.wait_success();
    assert_complete_run(&launch.out(), 8);
    assert_eq!(launch.service("nats")["restarts"], 1);
    // After the restart the learner published again, and each worker installed a version
    // newer than any that existed before the restart.
    let published_after: Vec<u64> = launch
        .events("learner", offsets[2])
        .iter()
        .filter(|event| message(event) == "adapter published")
        .filter_map(|event| field_u64(event, "version"))
        .collect();
    assert!(
        published_after
            .iter()
            .any(|version| *version > version_at_kill),
        "published after the restart: {published_after:?} (v{version_at_kill} before)"
    );
    for (worker, offset) in ["rollout-0", "rollout-1"].iter().zip(&offsets) {
        let installed = installed_versions(&launch, worker, *offset);
        assert!(
            installed.iter().any(|version| *version > version_at_kill),
            "{worker} installed {installed:?} after the restart (v{version_at_kill} before)"
        );
    }
}

#[test]
fn drill_killed_learner_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "dist-learner", 8);
    let mut launch = Launch::start(dir.path(), &config, &[]);
    launch.wait_for("two checkpoints", |launch| {
        launch.out().join("checkpoint-2").is_dir() && launch.metrics().len() >= 2
    });
    let before = launch.metrics();
    let version_at_kill = before
        .iter()
        .filter_map(|line| line["adapter_version"].as_u64())
        .max()
        .unwrap();
    let learner_log = launch.log_len("learner");
    launch.kill("learner");
    launch.wait_success();
    let lines = assert_complete_run(&launch.out(), 8);
    assert_eq!(launch.service("learner")["restarts"], 1);
    // The restarted learner (--resume) continued from a checkpoint the first one wrote...
    let resumed = launch
        .events("learner", learner_log)
        .into_iter()
        .find(|event| message(event) == "resumed")
        .expect("the restarted learner did not resume");
    let resumed_step = field_u64(&resumed, "step").unwrap();
    assert!(
        (2..=before.len() as u64 + 1).contains(&resumed_step),
        "resumed at step {resumed_step}; {} steps before the kill",
        before.len()
    );
    // ...numbering its steps on from there (metrics.jsonl: 1..=8 with no gap or repeat,
    // checked above) and its adapter versions above every version announced before.
    let after_resume = &lines[resumed_step as usize];
    assert!(
        after_resume["adapter_version"].as_u64().unwrap() > version_at_kill,
        "first step after resuming: {after_resume}; v{version_at_kill} before the kill"
    );
}
