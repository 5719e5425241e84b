//! What `tgrpo launch` starts: the services of a run on one host, their loopback ports,
//! their command lines, and the one config file they all read.
//!
//! Every role reads the same TOML through its `--config FILE` (the run config with the
//! launcher's choices filled in: the resolved model, the learner's endpoint, the
//! executors' endpoints, the NATS URL), written to `output_dir/launch/config.toml`; the
//! command lines add only what differs between processes of one role (listen address,
//! worker id, sandbox uid range). The start order follows the dependencies:
//!
//! ```text
//! nats-server ─┐
//! executor ×M ─┼─► teacher proxy ─► learner ─► rollout worker ×N
//! ```
//!
//! The teacher proxy serves the configured teacher (`[synthesis] teacher = "http"` or
//! `"local"`); with the reference teacher (the CPU demo's oracle, which only the synthesis
//! stage can use) there is nothing to serve and it is left out.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tgrpo_pipeline::TgrpoConfig;
use tgrpo_pipeline::config::TeacherKind;

use crate::error::{LaunchError, Result};

/// Where the nats-server comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsMode {
    /// Start this nats-server binary on a free loopback port, JetStream on, its store in
    /// `output_dir/launch/nats/` (so a restarted server keeps the adapters).
    Spawn {
        /// The `nats-server` binary.
        binary: PathBuf,
    },
    /// Use a running server (JetStream must be enabled).
    External {
        /// Its URL.
        url: String,
    },
}

impl NatsMode {
    /// `nats-server` from `$NATS_SERVER`, `/usr/sbin/nats-server` or `PATH`.
    pub fn find_binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("NATS_SERVER") {
            return Some(PathBuf::from(path));
        }
        let default = PathBuf::from("/usr/sbin/nats-server");
        if default.is_file() {
            return Some(default);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|candidate| candidate.is_file())
        })
    }
}

/// The launcher's own choices (flags of `tgrpo launch`).
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The `tgrpo` binary every role runs as.
    pub binary: PathBuf,
    /// Rollout worker processes.
    pub rollout_workers: usize,
    /// Executor processes.
    pub executors: usize,
    /// Sandbox slots per executor (0: the config's `[executor] slots`).
    pub executor_slots: usize,
    /// Start the teacher proxy (when the config's teacher can be served: not the
    /// reference teacher).
    pub teacher_proxy: bool,
    /// The NATS server.
    pub nats: NatsMode,
    /// Continue from the newest checkpoint (`--resume` for the learner).
    pub resume: bool,
    /// Restarts allowed per service after it crashed (the learner restarts with
    /// `--resume`). A service with none left that has no live sibling ends the run.
    pub max_restarts: u32,
    /// Serve Prometheus `/metrics` from every tgrpo service on a loopback port (passes
    /// the global `--metrics-listen ADDRESS` flag to each; off by default).
    pub metrics: bool,
    /// How long a service may take to report healthy (the learner loads its model first).
    pub ready_timeout: Duration,
    /// How long a service may take to stop after SIGTERM before it is killed.
    pub stop_grace: Duration,
    /// Copy every service's output, prefixed, to the launcher's stdout/stderr.
    pub echo: bool,
}

impl LaunchOptions {
    /// Defaults for `binary`: 2 workers, 2 executors, the teacher proxy, a private
    /// nats-server, 3 restarts, no metrics endpoints.
    pub fn new(binary: PathBuf) -> Self {
        Self {
            binary,
            rollout_workers: 2,
            executors: 2,
            executor_slots: 0,
            teacher_proxy: true,
            nats: NatsMode::Spawn {
                binary: NatsMode::find_binary()
                    .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server")),
            },
            resume: false,
            max_restarts: 3,
            metrics: false,
            ready_timeout: Duration::from_secs(600),
            stop_grace: Duration::from_secs(60),
            echo: true,
        }
    }
}

/// The kind of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The NATS server of the adapter broadcast.
    Nats,
    /// A sandboxed executor.
    Executor,
    /// The teacher proxy.
    TeacherProxy,
    /// The learner.
    Learner,
    /// A rollout worker.
    Rollout,
}

impl Role {
    /// Services of this role stop in this order (dependents first).
    pub fn stop_rank(self) -> u8 {
        match self {
            Role::Rollout => 0,
            Role::Learner => 1,
            Role::TeacherProxy => 2,
            Role::Executor => 3,
            Role::Nats => 4,
        }
    }
}

/// How the launcher knows a service is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// `grpc.health.v1` answers SERVING for the whole server.
    Grpc(SocketAddr),
    /// The NATS greeting says JetStream is on.
    Nats(SocketAddr),
    /// Started is ready (a client such as a rollout worker).
    Started,
}

/// One service to run.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    /// Unique name (`learner`, `executor-1`, …): log prefix and log file name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The program (the `tgrpo` binary or `nats-server`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Where it listens, if it serves.
    pub listen: Option<SocketAddr>,
    /// Where its Prometheus endpoint is.
    pub metrics: Option<SocketAddr>,
    /// How readiness is checked.
    pub readiness: Readiness,
}

/// Everything `tgrpo launch` starts, in start order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The services in start order.
    pub services: Vec<ServicePlan>,
    /// The effective run config every role reads.
    pub config: TgrpoConfig,
    /// `output_dir/launch/config.toml`.
    pub config_path: PathBuf,
    /// `output_dir/launch/`.
    pub launch_dir: PathBuf,
    /// The NATS URL every role uses.
    pub nats_url: String,
    /// The learner's gRPC endpoint.
    pub learner_endpoint: String,
}

impl Plan {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServicePlan> {
        self.services.iter().find(|service| service.name == name)
    }
}

/// Reserves `count` distinct free ports on 127.0.0.1 (all held until every one is picked,
/// so none repeats).
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)).map_err(LaunchError::Ports))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|address| address.port())
                .map_err(LaunchError::Ports)
        })
        .collect()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The launch directory of a run.
pub fn launch_dir(config: &TgrpoConfig) -> PathBuf {
    config.output_dir.join("launch")
}

/// Plans the services of `config` (whose `[model] source` is already resolved to
/// something every process can load). Picks the ports; writes nothing.
pub fn plan(config: &TgrpoConfig, options: &LaunchOptions) -> Result<Plan> {
    if options.rollout_workers == 0 {
        return Err(LaunchError::Config(
            "--rollout-workers must be at least 1".into(),
        ));
    }
    if options.executors == 0 {
        return Err(LaunchError::Config("--executors must be at least 1".into()));
    }
    let teacher_proxy = options.teacher_proxy && serves_teacher(config);
    let metrics_ports = if options.metrics {
        options.executors + options.rollout_workers + 1 + usize::from(teacher_proxy)
    } else {
        0
    };
    let nats_port_needed = usize::from(matches!(options.nats, NatsMode::Spawn { .. }));
    let total =
        nats_port_needed + options.executors + 1 + usize::from(teacher_proxy) + metrics_ports;
    let mut ports = free_ports(total)?.into_iter();
    let mut next_port = || ports.next().expect("enough ports were reserved");

    let launch_dir = launch_dir(config);
    let config_path = launch_dir.join("config.toml");
    let mut services = Vec::new();

    let nats_url = match &options.nats {
        NatsMode::Spawn { binary } => {
            let port = next_port();
            let address = loopback(port);
            let store = launch_dir.join("nats");
            services.push(ServicePlan {
                name: "nats".into(),
                role: Role::Nats,
                program: binary.clone(),
                args: vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string().into(),
                    "-js".into(),
                    "-sd".into(),
                    store.into_os_string(),
                ],
                listen: Some(address),
                metrics: None,
                readiness: Readiness::Nats(address),
            });
            format!("nats://{address}")
        }
        NatsMode::External { url } => url.clone(),
    };

    let executor_addresses: Vec<SocketAddr> = (0..options.executors)
        .map(|_| loopback(next_port()))
        .collect();
    let teacher_address = teacher_proxy.then(|| loopback(next_port()));
    let learner_address = loopback(next_port());
    let mut metrics_addresses: Vec<SocketAddr> =
        (0..metrics_ports).map(|_| loopback(next_port())).collect();
    let mut take_metrics = || (!metrics_addresses.is_empty()).then(|| metrics_addresses.remove(0));

    // The effective config every role reads.
    let mut effective = config.clone();
    effective.broadcast.url.clone_from(&nats_url);
    effective.rollout.learner_endpoint = format!("http://{learner_address}");
    effective.rollout.executor_endpoints =
        executor_addresses.iter().map(ToString::to_string).collect();
    if options.resume {
        effective.training.resume = true;
    }

    let executor = &config.executor;
    let slots = if options.executor_slots > 0 {
        options.executor_slots
    } else {
        executor.slots
    };
    let effective_slots = if slots == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        slots
    };
    // Each executor runs its programs as its own uids: two per slot, never shared.
    let uid_stride = u32::try_from(2 * effective_slots).unwrap_or(u32::MAX);
    for (index, address) in executor_addresses.iter().enumerate() {
        let metrics = take_metrics();
        let uid_base = executor
            .uid_base
            .saturating_add(uid_stride.saturating_mul(index as u32));
        let mut args = global_args(metrics);
        args.extend(
            [
                "executor".to_string(),
                "--config".into(),
                config_path.display().to_string(),
                "--listen".into(),
                address.to_string(),
                "--uid-base".into(),
                uid_base.to_string(),
            ]
            .map(OsString::from),
        );
        if options.executor_slots > 0 {
            args.push("--slots".into());
            args.push(options.executor_slots.to_string().into());
        }
        services.push(ServicePlan {
            name: format!("executor-{index}"),
            role: Role::Executor,
            program: options.binary.clone(),
            args,
            listen: Some(*address),
            metrics,
            readiness: Readiness::Grpc(*address),
        });
    }

    if let Some(address) = teacher_address {
        let metrics = take_metrics();
        let mut args = global_args(metrics);
        args.extend(
            [
                "teacher-proxy".to_string(),
                "--config".into(),
                config_path.display().to_string(),
                "--listen".into(),
                address.to_string(),
            ]
            .map(OsString::from),
        );
        services.push(ServicePlan {
            name: "teacher-proxy".into(),
            role: Role::TeacherProxy,
            program: options.binary.clone(),
            args,
            listen: Some(address),
            metrics,
            readiness: Readiness::Grpc(address),
        });
    }

    let metrics = take_metrics();
    let mut args = global_args(metrics);
    args.extend(
        [
            "learner".to_string(),
            "--config".into(),
            config_path.display().to_string(),
            "--listen".into(),
            learner_address.to_string(),
        ]
        .map(OsString::from),
    );
    if effective.training.resume {
        args.push("--resume".into());
    }
    services.push(ServicePlan {
        name: "learner".into(),
        role: Role::Learner,
        program: options.binary.clone(),
        args,
        listen: Some(learner_address),
        metrics,
        readiness: Readiness::Grpc(learner_address),
    });

    for index in 0..options.rollout_workers {
        let metrics = take_metrics();
        let mut args = global_args(metrics);
        args.extend(
            [
                "rollout".to_string(),
                "--config".into(),
                config_path.display().to_string(),
                "--worker-id".into(),
                format!("rollout-{index}"),
            ]
            .map(OsString::from),
        );
        services.push(ServicePlan {
            name: format!("rollout-{index}"),
            role: Role::Rollout,
            program: options.binary.clone(),
            args,
            listen: None,
            metrics,
            readiness: Readiness::Started,
        });
    }

    Ok(Plan {
        services,
        config: effective,
        config_path,
        launch_dir,
        nats_url,
        learner_endpoint: format!("http://{learner_address}"),
    })
}

/// Whether the teacher proxy can serve the config's teacher: the HTTP teacher or a local
/// model, not the reference teacher (an oracle for the synthesis stage only).
pub fn serves_teacher(config: &TgrpoConfig) -> bool {
    config.synthesis.teacher != TeacherKind::Reference
}

fn global_args(metrics: Option<SocketAddr>) -> Vec<OsString> {
    match metrics {
        Some(address) => vec!["--metrics-listen".into(), address.to_string().into()],
        None => Vec::new(),
    }
}

/// Writes the effective config where every role reads it.
pub fn write_config(plan: &Plan) -> Result<()> {
    std::fs::create_dir_all(&plan.launch_dir)
        .map_err(|err| LaunchError::io(&plan.launch_dir, err))?;
    let text = format!(
        "# Written by `tgrpo launch`: the run config with the launcher's choices (resolved\n# model, loopback endpoints, NATS URL). Every service of this launch reads it.\n{}",
        plan.config.to_toml_string()
    );
    std::fs::write(&plan.config_path, text).map_err(|err| LaunchError::io(&plan.config_path, err))
}

/// A service's log file.
pub fn log_file(launch_dir: &Path, name: &str) -> PathBuf {
    launch_dir.join("logs").join(format!("{name}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> LaunchOptions {
        let mut options = LaunchOptions::new(PathBuf::from("/opt/tgrpo"));
        options.nats = NatsMode::Spawn {
            binary: PathBuf::from("/usr/sbin/nats-server"),
        };
        options
    }

    fn args(service: &ServicePlan) -> Vec<String> {
        service
            .args
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    fn value_of(service: &ServicePlan, flag: &str) -> String {
        let args = args(service);
        let at = args
            .iter()
            .position(|arg| arg == flag)
            .unwrap_or_else(|| panic!("{} has no {flag}: {args:?}", service.name));
        args[at + 1].clone()
    }

    #[test]
    fn every_role_gets_the_one_config_file_and_its_own_address() {
        let mut config = TgrpoConfig {
            output_dir: PathBuf::from("/runs/exp"),
            ..TgrpoConfig::default()
        };
        config.executor.uid_base = 70_000;
        config.executor.slots = 3;
        let plan = plan(&config, &options()).unwrap();
        let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "nats",
                "executor-0",
                "executor-1",
                "teacher-proxy",
                "learner",
                "rollout-0",
                "rollout-1"
            ]
        );
        assert_eq!(
            plan.config_path,
            PathBuf::from("/runs/exp/launch/config.toml")
        );
        let config_path = plan.config_path.display().to_string();
        for service in &plan.services[1..] {
            assert_eq!(
                value_of(service, "--config"),
                config_path,
                "{}",
                service.name
            );
            assert!(!args(service).contains(&"--metrics-listen".to_string()));
        }
        // Every listener on its own loopback port.
        let mut ports: Vec<u16> = plan
            .services
            .iter()
            .filter_map(|service| service.listen.map(|address| address.port()))
            .collect();
        assert_eq!(ports.len(), 5);
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 5);
        // The effective config points every client at the planned servers.
        let nats = plan.service("nats").unwrap();
        assert_eq!(
            plan.config.broadcast.url,
            format!("nats://{}", nats.listen.unwrap())
        );
        assert_eq!(plan.nats_url, plan.config.broadcast.url);
        assert!(args(nats).contains(&"-js".to_string()));
        assert_eq!(
            plan.config.rollout.executor_endpoints,
            vec![
                plan.service("executor-0")
                    .unwrap()
                    .listen
                    .unwrap()
                    .to_string(),
                plan.service("executor-1")
                    .unwrap()
                    .listen
                    .unwrap()
                    .to_string()
            ]
        );
        let learner = plan.service("learner").unwrap();
        assert_eq!(
            plan.config.rollout.learner_endpoint,
            format!("http://{}", learner.listen.unwrap())
        );
        assert_eq!(
            value_of(learner, "--listen"),
            learner.listen.unwrap().to_string()
        );
        assert!(!args(learner).contains(&"--resume".to_string()));
        // Disjoint sandbox uid ranges: two uids per slot.
        assert_eq!(
            value_of(plan.service("executor-0").unwrap(), "--uid-base"),
            "70000"
        );
        assert_eq!(
            value_of(plan.service("executor-1").unwrap(), "--uid-base"),
            "70006"
        );
        assert_eq!(
            value_of(plan.service("rollout-1").unwrap(), "--worker-id"),
            "rollout-1"
        );
        assert_eq!(
            plan.service("rollout-0").unwrap().readiness,
            Readiness::Started
        );
    }

    #[test]
    fn options_shape_the_plan() {
        let mut config = TgrpoConfig::default();
        config.synthesis.teacher = TeacherKind::Reference;
        let mut options = options();
        options.rollout_workers = 3;
        options.executors = 1;
        options.executor_slots = 2;
        options.resume = true;
        options.metrics = true;
        options.nats = NatsMode::External {
            url: "nats://10.0.0.5:4222".into(),
        };
        let plan = plan(&config, &options).unwrap();
        let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        // The reference teacher is not served: no proxy.
        assert_eq!(
            names,
            [
                "executor-0",
                "learner",
                "rollout-0",
                "rollout-1",
                "rollout-2"
            ]
        );
        assert_eq!(plan.config.broadcast.url, "nats://10.0.0.5:4222");
        assert!(plan.config.training.resume);
        let learner = plan.service("learner").unwrap();
        assert!(args(learner).contains(&"--resume".to_string()));
        assert_eq!(
            value_of(plan.service("executor-0").unwrap(), "--slots"),
            "2"
        );
        // Metrics: the global flag comes before the subcommand, one port each.
        let metrics: Vec<SocketAddr> = plan.services.iter().map(|s| s.metrics.unwrap()).collect();
        for service in &plan.services {
            assert_eq!(args(service)[0], "--metrics-listen");
            assert_eq!(args(service)[1], service.metrics.unwrap().to_string());
        }
        let mut ports: Vec<u16> = metrics.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 5);
    }

    #[test]
    fn no_workers_or_executors_is_an_error_naming_the_flag() {
        let config = TgrpoConfig::default();
        let mut options = options();
        options.rollout_workers = 0;
        let err = plan(&config, &options).unwrap_err().to_string();
        assert!(err.contains("--rollout-workers"), "{err}");
        let mut options = self::tests::options();
        options.executors = 0;
        let err = plan(&config, &options).unwrap_err().to_string();
        assert!(err.contains("--executors"), "{err}");
    }

    #[test]
    fn the_written_config_loads_back_as_the_effective_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = TgrpoConfig {
            output_dir: dir.path().join("out"),
            ..TgrpoConfig::default()
        };
        config.sync_derived();
        let plan = plan(&config, &options()).unwrap();
        write_config(&plan).unwrap();
        let loaded =
            TgrpoConfig::load(Some(&plan.config_path), &tgrpo_pipeline::NoEnv, &[]).unwrap();
        assert_eq!(loaded, plan.config);
        assert_eq!(
            log_file(&plan.launch_dir, "executor-1"),
            dir.path().join("out/launch/logs/executor-1.log")
        );
    }
}
