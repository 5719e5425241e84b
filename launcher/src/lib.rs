//! tgrpo-launcher: running tgrpo as separate processes on one host.
//!
//! **`tgrpo launch`** ([`supervisor::launch`]) starts the learner, N rollout workers, M
//! executors, the teacher proxy and a nats-server as separate processes from one run
//! config, on loopback ports the launcher picks, each started once the services it
//! depends on report healthy (gRPC health; NATS's greeting with JetStream), with prefixed
//! logs, restarts of crashed services (the learner with `--resume`), ordered shutdown on
//! SIGINT/SIGTERM, and the learner's exit status as its own. This is the distributed mode
//! of DESIGN.md on one machine: the same roles, the same config file, real gRPC and NATS
//! between them; on a cluster the same roles run as pods.
//!
//! # Layout
//! - [`plan`]: the services of a launch, their ports and command lines, the shared config.
//! - [`process`]: one supervised child (process group, parent-death signal, prefixed
//!   output, SIGTERM then SIGKILL).
//! - [`health`]: readiness probes (gRPC health, NATS greeting).
//! - [`supervisor`]: start in order, watch, restart, stop in order; the state file.
//! - [`checks`]: `tgrpo check executor|model|lora|nats|all`, one PASS/FAIL line each.
//! - [`metrics_endpoint`]: the Prometheus recorder and `/metrics` (`--metrics-listen`).
//! - [`error`]: [`LaunchError`], naming the service or file that failed.
//! - `sys`: the one `unsafe` block (the child's parent-death signal before `exec`).

#![deny(unsafe_code)]

pub mod checks;
pub mod error;
pub mod health;
pub mod metrics_endpoint;
pub mod plan;
pub mod process;
pub mod supervisor;
mod sys;

pub use error::{LaunchError, Result};
pub use plan::{LaunchOptions, NatsMode, Plan, Role};
pub use supervisor::{LAUNCH_ID_ENV, LaunchOutcome, launch, prepare};
