//! The supervisor of `tgrpo launch`: prepares the run (model, data, traces), starts the
//! planned services in dependency order, each only once the ones before it report
//! healthy, watches them, restarts crashed ones (the learner with `--resume`), and stops
//! everything in reverse dependency order when the learner is done, a shutdown signal
//! comes, or a service that cannot be replaced is lost. The launch ends with the
//! learner's exit status.
//!
//! # Restarts
//!
//! A service that exits on its own while the run goes on is restarted after a backoff
//! (1 s doubling to 30 s), up to `max_restarts` times. Exceptions: a rollout worker that
//! exits successfully has finished (the learner said so), and a learner that exits
//! successfully has completed the run. A service out of restarts ends the run unless a
//! sibling of the same role is still alive (one executor of two is enough to go on) or it
//! is the teacher proxy (training does not need it).
//!
//! # The state file
//!
//! `output_dir/launch/processes.json` always describes the running launch: the launcher's
//! pid, the NATS URL, the learner endpoint, and per service its pid, endpoints, restarts
//! and log file. Operators (and the fault drills) find the processes there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde::Serialize;
use tgrpo_pipeline::TgrpoConfig;
use tgrpo_proto::learner as lpb;
use tgrpo_proto::learner::learner_client::LearnerClient;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::error::{LaunchError, Result};
use crate::health;
use crate::plan::{self, LaunchOptions, Plan, Readiness, Role, ServicePlan};
use crate::process::{ChildSpec, RunningChild, describe_status, exit_code, is_alive};

/// How often the supervisor looks at its children.
const POLL: Duration = Duration::from_millis(200);

/// Longest wait before a restart.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// The environment variable of the global `--metrics-listen` flag. A launcher started
/// with it serves its own metrics there; its children must not try the same address.
const METRICS_LISTEN_ENV: &str = "TGRPO_METRICS_LISTEN";

/// Environment variable every child gets, naming the launch (its value is unique): a
/// process carrying it belongs to this launch, grandchildren included.
pub const LAUNCH_ID_ENV: &str = "TGRPO_LAUNCH_ID";

/// How a launch ended.
#[derive(Debug, Clone)]
pub struct LaunchOutcome {
    /// The exit code for the launcher: the learner's (0 when the run completed).
    pub exit_code: i32,
    /// Why it ended, in words.
    pub reason: String,
    /// The learner's last exit status.
    pub learner_status: Option<String>,
    /// Seconds from the start of the launch to the learner's first optimizer step.
    pub first_step_s: Option<f64>,
    /// Seconds until every service was up.
    pub ready_s: Option<f64>,
    /// Restarts per service.
    pub restarts: BTreeMap<String, u32>,
    /// The run was complete before the launch (its `final_model/` exists).
    pub already_done: bool,
    /// `output_dir/final_model`.
    pub final_model: PathBuf,
    /// The state file.
    pub state_file: PathBuf,
}

/// Prepares what the services need and resolves the model: the data stage (when the
/// learner's prompts are the data stage's output), the synthesis stage (when the
/// teacher-SFT term is on and the traces file is missing), the CPU demo's model when the
/// config names it. Returns the config with `[model] source` resolved.
pub async fn prepare(
    config: &TgrpoConfig,
    teacher_api_key: Option<String>,
    cancel: &CancellationToken,
) -> Result<TgrpoConfig> {
    config
        .validate()
        .map_err(tgrpo_pipeline::PipelineError::from)?;
    let mut config = config.clone();
    let model = tgrpo_pipeline::model::resolve_model(&config)?;
    if model != config.model.source {
        tracing::info!(model = %model, "model resolved");
        config.model.source = model;
        config.sync_derived();
    }
    let prompts = &config.learner.prompts_path;
    if *prompts == config.data.train_path() {
        let report = tgrpo_pipeline::data::prepare_data(&config).await?;
        tracing::info!("{report}");
    } else if !prompts.is_file() {
        return Err(LaunchError::Config(format!(
            "learner.prompts_path {} does not exist",
            prompts.display()
        )));
    }
    if config.dual_source.beta > 0.0 && !config.dual_source.teacher_traces_path.is_file() {
        tracing::info!(traces = %config.dual_source.teacher_traces_path.display(), "no teacher traces yet: running the synthesis stage first");
        let options = tgrpo_pipeline::StageOptions {
            progress: false,
            cancel: cancel.clone(),
        };
        let report =
            tgrpo_pipeline::synthesis::synthesize_traces(&config, teacher_api_key, &options)
                .await?;
        tracing::info!(problems = report.problems, teacher = %report.teacher, "synthesis done");
    }
    Ok(config)
}

struct Service {
    plan: ServicePlan,
    child: Option<RunningChild>,
    restarts: u32,
    /// When a crashed service is due to start again.
    restart_at: Option<Instant>,
    /// Exited on its own successfully (a rollout worker whose run is over).
    finished: bool,
    /// Out of restarts and dead.
    given_up: bool,
    last_status: Option<ExitStatus>,
}

impl Service {
    fn alive(&self) -> bool {
        self.child.is_some()
    }
}

#[derive(Serialize)]
struct StateFile<'a> {
    launcher_pid: u32,
    launch_id: &'a str,
    config: String,
    nats_url: &'a str,
    learner_endpoint: &'a str,
    first_step_s: Option<f64>,
    services: Vec<ServiceState>,
}

#[derive(Serialize)]
struct ServiceState {
    name: String,
    role: Role,
    pid: Option<u32>,
    listen: Option<SocketAddr>,
    metrics: Option<String>,
    restarts: u32,
    status: String,
    log: String,
}

/// The running launch.
struct Supervisor {
    plan: Plan,
    options: LaunchOptions,
    services: Vec<Service>,
    launch_id: String,
    started: Instant,
    first_step_s: Option<f64>,
    state_file: PathBuf,
}

/// Runs a launch of `config` (already prepared: see [`prepare`]) until the learner is
/// done, `shutdown` fires, or the run cannot go on.
pub async fn launch(
    config: &TgrpoConfig,
    options: &LaunchOptions,
    shutdown: CancellationToken,
) -> Result<LaunchOutcome> {
    let started = Instant::now();
    let final_model = config.final_model_dir();
    let launch_dir = plan::launch_dir(config);
    let state_file = launch_dir.join("processes.json");
    if tgrpo_pipeline::train::is_adapter_dir(&final_model) {
        return Ok(LaunchOutcome {
            exit_code: 0,
            reason: format!(
                "already trained ({} exists); remove the output directory to train again",
                final_model.display()
            ),
            learner_status: None,
            first_step_s: None,
            ready_s: None,
            restarts: BTreeMap::new(),
            already_done: true,
            final_model,
            state_file,
        });
    }
    if !options.resume
        && !config.training.resume
        && let Some(checkpoint) = tgrpo_learner::checkpoint::latest_checkpoint(&config.output_dir)
            .map_err(|err| LaunchError::Other(err.to_string()))?
    {
        return Err(LaunchError::Config(format!(
            "{} holds {} from an unfinished run: pass --resume to continue it, or remove it to start over",
            config.output_dir.display(),
            checkpoint.display()
        )));
    }
    let plan = plan::plan(config, options)?;
    plan::write_config(&plan)?;
    let launch_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos())
    );
    let services = plan
        .services
        .iter()
        .cloned()
        .map(|plan| Service {
            plan,
            child: None,
            restarts: 0,
            restart_at: None,
            finished: false,
            given_up: false,
            last_status: None,
        })
        .collect();
    let mut supervisor = Supervisor {
        plan,
        options: options.clone(),
        services,
        launch_id,
        started,
        first_step_s: None,
        state_file: state_file.clone(),
    };
    let outcome = supervisor.run(&shutdown).await;
    supervisor.stop_all().await;
    supervisor.write_state();
    let mut outcome = outcome?;
    outcome.final_model = final_model;
    outcome.state_file = state_file;
    outcome.restarts = supervisor
        .services
        .iter()
        .map(|service| (service.plan.name.clone(), service.restarts))
        .collect();
    outcome.first_step_s = supervisor.first_step_s;
    Ok(outcome)
}

impl Supervisor {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<LaunchOutcome> {
        self.announce_plan();
        // Start in plan order; services of one role start together and are then waited
        // for together (two executors load their sandboxes at the same time).
        let mut index = 0;
        while index < self.services.len() {
            let role = self.services[index].plan.role;
            let group: Vec<usize> = (index..self.services.len())
                .take_while(|&i| self.services[i].plan.role == role)
                .collect();
            for &i in &group {
                self.start(i).await?;
            }
            for &i in &group {
                self.wait_ready(i, shutdown).await?;
            }
            index += group.len();
            if shutdown.is_cancelled() {
                return Ok(self.outcome(0, "shut down while starting".into(), None));
            }
        }
        let ready_s = self.started.elapsed().as_secs_f64();
        tracing::info!(seconds = ready_s, "every service is up");
        self.write_state();
        let mut outcome = self.watch(shutdown).await?;
        outcome.ready_s = Some(ready_s);
        Ok(outcome)
    }

    fn announce_plan(&self) {
        if !self.options.echo {
            return;
        }
        let mut lines = vec![format!(
            "tgrpo launch: run {} in {} (config {}, state {})",
            self.plan.config.run_id,
            self.plan.config.output_dir.display(),
            self.plan.config_path.display(),
            self.state_file.display()
        )];
        for service in &self.services {
            let plan = &service.plan;
            let listen = match (&plan.role, plan.listen) {
                (Role::Nats, Some(address)) => format!("nats://{address}"),
                (_, Some(address)) => format!("grpc {address}"),
                (_, None) => "-".to_string(),
            };
            let metrics = plan.metrics.map_or_else(String::new, |address| {
                format!("  metrics http://{address}/metrics")
            });
            lines.push(format!("  {:<14} {listen}{metrics}", plan.name));
        }
        if !self
            .services
            .iter()
            .any(|service| service.plan.role == Role::Nats)
        {
            lines.push(format!(
                "  {:<14} {} (external)",
                "nats", self.plan.nats_url
            ));
        }
        println!("{}", lines.join("\n"));
    }

    async fn start(&mut self, index: usize) -> Result<()> {
        let launch_dir = self.plan.launch_dir.clone();
        let service = &mut self.services[index];
        let spec = ChildSpec {
            name: service.plan.name.clone(),
            program: service.plan.program.clone(),
            args: service.plan.args.clone(),
            env: vec![(LAUNCH_ID_ENV.to_string(), self.launch_id.clone())],
            // The launcher's own metrics address: every service gets its own or none.
            env_remove: vec![METRICS_LISTEN_ENV.to_string()],
            log_file: plan::log_file(&launch_dir, &service.plan.name),
            echo: self.options.echo,
        };
        let child = RunningChild::spawn(&spec).await?;
        tracing::info!(service = %spec.name, pid = child.pid(), restarts = service.restarts, "service started");
        service.child = Some(child);
        service.restart_at = None;
        self.write_state();
        Ok(())
    }

    async fn wait_ready(&mut self, index: usize, shutdown: &CancellationToken) -> Result<()> {
        let deadline = Instant::now() + self.options.ready_timeout;
        let name = self.services[index].plan.name.clone();
        let readiness = self.services[index].plan.readiness.clone();
        let mut last_answer = String::from("no answer yet");
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let exited = self.services[index]
                .child
                .as_mut()
                .and_then(RunningChild::try_status);
            if let Some(status) = exited {
                let log = plan::log_file(&self.plan.launch_dir, &name);
                return Err(LaunchError::NotReady {
                    service: name,
                    reason: format!(
                        "it exited while starting ({}); its last lines:\n{}",
                        describe_status(&status),
                        tail(&log, 15)
                    ),
                });
            }
            let ready = match &readiness {
                Readiness::Started => true,
                Readiness::Nats(address) => match health::nats_greeting(*address, POLL * 5).await {
                    Ok(greeting) if greeting.jetstream => true,
                    Ok(_) => {
                        return Err(LaunchError::NotReady {
                            service: name,
                            reason: "the server runs without JetStream (start it with -js)".into(),
                        });
                    }
                    Err(err) => {
                        last_answer = err;
                        false
                    }
                },
                Readiness::Grpc(address) => {
                    match health::grpc_status(&address.to_string(), "", POLL * 5).await {
                        Ok(ServingStatus::Serving) => true,
                        Ok(status) => {
                            last_answer = format!("health says {}", status.as_str_name());
                            false
                        }
                        Err(err) => {
                            last_answer = err;
                            false
                        }
                    }
                }
            };
            if ready {
                tracing::info!(service = %name, seconds = self.started.elapsed().as_secs_f64(), "service ready");
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LaunchError::NotReady {
                    service: name,
                    reason: format!(
                        "not healthy after {:?}: {last_answer}",
                        self.options.ready_timeout
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Watches the running services until the run ends.
    async fn watch(&mut self, shutdown: &CancellationToken) -> Result<LaunchOutcome> {
        let mut learner_client: Option<LearnerClient<tonic::transport::Channel>> = None;
        let mut next_status_poll = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    tracing::info!("shutdown requested: stopping the services in order");
                    self.stop_all().await;
                    let learner = self.learner().last_status;
                    let code = learner.as_ref().map_or(0, exit_code);
                    return Ok(self.outcome(code, "shut down by a signal (resume with --resume)".into(), learner));
                }
                () = tokio::time::sleep(POLL) => {}
            }
            if let Some(outcome) = self.reap().await? {
                return Ok(outcome);
            }
            self.restart_due().await?;
            if self.first_step_s.is_none() && Instant::now() >= next_status_poll {
                next_status_poll = Instant::now() + Duration::from_secs(1);
                self.poll_first_step(&mut learner_client).await;
            }
        }
    }

    fn learner(&self) -> &Service {
        self.services
            .iter()
            .find(|service| service.plan.role == Role::Learner)
            .expect("every plan has a learner")
    }

    /// Looks at every child; decides what each exit means.
    async fn reap(&mut self) -> Result<Option<LaunchOutcome>> {
        for index in 0..self.services.len() {
            let Some(status) = self.services[index]
                .child
                .as_mut()
                .and_then(RunningChild::try_status)
            else {
                continue;
            };
            let mut child = self.services[index].child.take().expect("checked above");
            // Collect the last output lines.
            let _ = child.wait().await;
            let service = &mut self.services[index];
            service.last_status = Some(status);
            let name = service.plan.name.clone();
            let role = service.plan.role;
            let described = describe_status(&status);
            if status.success() && role == Role::Learner {
                tracing::info!(service = %name, "the learner finished the run");
                self.write_state();
                return Ok(Some(self.outcome(
                    0,
                    "the learner finished the run".into(),
                    Some(status),
                )));
            }
            if status.success() && role == Role::Rollout {
                tracing::info!(service = %name, "rollout worker finished");
                service.finished = true;
                self.write_state();
                continue;
            }
            if service.restarts < self.options.max_restarts {
                let delay = restart_delay(service.restarts);
                tracing::warn!(service = %name, status = %described, restart_in_s = delay.as_secs_f64(), restarts_so_far = service.restarts, "service exited; restarting it");
                service.restart_at = Some(Instant::now() + delay);
                self.write_state();
                continue;
            }
            service.given_up = true;
            let sibling_alive = self
                .services
                .iter()
                .any(|other| other.plan.role == role && other.alive());
            self.write_state();
            match role {
                Role::Learner => {
                    tracing::error!(service = %name, status = %described, "the learner exited and has no restarts left");
                    return Ok(Some(self.outcome(
                        exit_code(&status),
                        format!("the learner exited ({described}) with no restarts left"),
                        Some(status),
                    )));
                }
                Role::TeacherProxy => {
                    tracing::error!(service = %name, status = %described, "the teacher proxy is down for good; training goes on without it");
                }
                _ if sibling_alive => {
                    tracing::error!(service = %name, status = %described, "service down for good; its siblings carry on");
                }
                _ => {
                    tracing::error!(service = %name, status = %described, "service down for good and no other of its kind is left: stopping the run");
                    return Ok(Some(self.outcome(
                        1,
                        format!(
                            "{name} exited ({described}) with no restarts left and no replacement"
                        ),
                        self.learner().last_status,
                    )));
                }
            }
        }
        Ok(None)
    }

    async fn restart_due(&mut self) -> Result<()> {
        let now = Instant::now();
        for index in 0..self.services.len() {
            let due = self.services[index].restart_at.is_some_and(|at| at <= now);
            if !due {
                continue;
            }
            let service = &mut self.services[index];
            service.restarts += 1;
            if service.plan.role == Role::Learner
                && !service.plan.args.iter().any(|arg| arg == "--resume")
            {
                // A restarted learner continues from its newest checkpoint.
                service.plan.args.push("--resume".into());
            }
            if let Err(err) = self.start(index).await {
                tracing::error!(%err, "restart failed");
                let service = &mut self.services[index];
                service.restart_at = (service.restarts < self.options.max_restarts)
                    .then(|| Instant::now() + restart_delay(service.restarts));
                service.given_up = service.restart_at.is_none();
            }
        }
        Ok(())
    }

    async fn poll_first_step(
        &mut self,
        client: &mut Option<LearnerClient<tonic::transport::Channel>>,
    ) {
        if client.is_none() {
            let Ok(endpoint) =
                tonic::transport::Endpoint::from_shared(self.plan.learner_endpoint.clone())
            else {
                return;
            };
            let endpoint = endpoint
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2));
            match endpoint.connect().await {
                Ok(channel) => *client = Some(LearnerClient::new(channel)),
                Err(_) => return,
            }
        }
        let Some(connected) = client.as_mut() else {
            return;
        };
        match connected.status(lpb::StatusRequest {}).await {
            Ok(response) if response.get_ref().step >= 1 => {
                let seconds = self.started.elapsed().as_secs_f64();
                self.first_step_s = Some(seconds);
                tracing::info!(seconds, "first optimizer step done");
                self.write_state();
            }
            Ok(_) => {}
            Err(_) => *client = None,
        }
    }

    /// Stops every running service, dependents first; services of one role together.
    async fn stop_all(&mut self) {
        let mut ranks: Vec<u8> = self
            .services
            .iter()
            .map(|service| service.plan.role.stop_rank())
            .collect();
        ranks.sort_unstable();
        ranks.dedup();
        let grace = self.options.stop_grace;
        for rank in ranks {
            let stops = self
                .services
                .iter_mut()
                .filter(|service| service.plan.role.stop_rank() == rank)
                .filter_map(|service| {
                    service.restart_at = None;
                    let mut child = service.child.take()?;
                    let name = service.plan.name.clone();
                    Some(async move {
                        let status = child.stop(grace).await;
                        (name, status)
                    })
                });
            let results = futures::future::join_all(stops).await;
            for (name, status) in results {
                match status {
                    Ok(status) => {
                        tracing::info!(service = %name, status = %describe_status(&status), "service stopped");
                        if let Some(service) = self
                            .services
                            .iter_mut()
                            .find(|service| service.plan.name == name)
                        {
                            service.last_status = Some(status);
                        }
                    }
                    Err(err) => {
                        tracing::error!(service = %name, %err, "could not wait for the service")
                    }
                }
            }
        }
    }

    fn outcome(
        &self,
        exit_code: i32,
        reason: String,
        learner: Option<ExitStatus>,
    ) -> LaunchOutcome {
        LaunchOutcome {
            exit_code,
            reason,
            learner_status: learner.as_ref().map(describe_status),
            first_step_s: self.first_step_s,
            ready_s: None,
            restarts: BTreeMap::new(),
            already_done: false,
            final_model: PathBuf::new(),
            state_file: self.state_file.clone(),
        }
    }

    fn write_state(&self) {
        let state = StateFile {
            launcher_pid: std::process::id(),
            launch_id: &self.launch_id,
            config: self.plan.config_path.display().to_string(),
            nats_url: &self.plan.nats_url,
            learner_endpoint: &self.plan.learner_endpoint,
            first_step_s: self.first_step_s,
            services: self
                .services
                .iter()
                .map(|service| {
                    let pid = service.child.as_ref().map(RunningChild::pid);
                    let status = if let Some(pid) = pid {
                        if is_alive(pid) { "running" } else { "exited" }.to_string()
                    } else if service.finished {
                        "finished".to_string()
                    } else if service.restart_at.is_some() {
                        "restarting".to_string()
                    } else if service.given_up {
                        "given up".to_string()
                    } else {
                        service
                            .last_status
                            .as_ref()
                            .map_or_else(|| "not started".to_string(), describe_status)
                    };
                    ServiceState {
                        name: service.plan.name.clone(),
                        role: service.plan.role,
                        pid,
                        listen: service.plan.listen,
                        metrics: service
                            .plan
                            .metrics
                            .map(|address| format!("http://{address}/metrics")),
                        restarts: service.restarts,
                        status,
                        log: plan::log_file(&self.plan.launch_dir, &service.plan.name)
                            .display()
                            .to_string(),
                    }
                })
                .collect(),
        };
        let Ok(text) = serde_json::to_string_pretty(&state) else {
            return;
        };
        // Written aside and renamed, so a reader never sees half a file.
        let temporary = self.state_file.with_extension("json.tmp");
        if std::fs::write(&temporary, text).is_ok() {
            let _ = std::fs::rename(&temporary, &self.state_file);
        }
    }
}

fn restart_delay(restarts_so_far: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1 << restarts_so_far.min(5))
        .min(MAX_RESTART_DELAY)
}

/// The last `lines` lines of a log file (for error messages).
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_double_to_the_cap() {
        let delays: Vec<u64> = (0..8).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
