//! deploy/ stays in step with the code (no container engine or cluster here to try it):
//! every YAML file parses; every tgrpo command line in the compose file and the
//! Kubernetes manifests is accepted by the real binary (its arguments followed by
//! `--help`: clap rejects an unknown subcommand, flag or bad value before it prints help);
//! the run configs (the ConfigMap's and the compose file's) load as `TgrpoConfig`; and the
//! hosts they name are services those files define.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;
use tgrpo_pipeline::config::{NoEnv, TgrpoConfig};

const TGRPO: &str = env!("CARGO_BIN_EXE_tgrpo");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every `.yml`/`.yaml` file under deploy/, merge keys applied.
fn yaml_documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    let mut stack = vec![deploy_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "yml" || ext == "yaml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 5,
        "deploy/ has too few YAML files: {files:?}"
    );
    let mut documents = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut value = Value::deserialize(document)
                .unwrap_or_else(|err| panic!("{} is not valid YAML: {err}", path.display()));
            value
                .apply_merge()
                .unwrap_or_else(|err| panic!("{}: merge keys: {err}", path.display()));
            if !value.is_null() {
                documents.push((path.clone(), value));
            }
        }
    }
    documents
}

/// A tgrpo container: where it is, its arguments (after the image's `tgrpo` entrypoint),
/// and the directories mounted into it.
#[derive(Debug)]
struct TgrpoCommand {
    origin: String,
    args: Vec<String>,
    mounts: BTreeSet<String>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) => text.clone(),
                    Value::Number(number) => number.to_string(),
                    other => panic!("a non-string command argument: {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_tgrpo_image(value: &Value) -> bool {
    value.as_str().is_some_and(|image| {
        image
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("tgrpo:"))
    })
}

/// The tgrpo containers of a Kubernetes object (pod templates, init containers too).
fn k8s_commands(path: &Path, document: &Value, out: &mut Vec<TgrpoCommand>) {
    let kind = document["kind"].as_str().unwrap_or("?");
    let name = document["metadata"]["name"].as_str().unwrap_or("?");
    let pod = &document["spec"]["template"]["spec"];
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod[list].as_sequence() else {
            continue;
        };
        for container in containers {
            if !is_tgrpo_image(&container["image"]) {
                continue;
            }
            assert!(
                container["command"].is_null(),
                "{kind} {name}: tgrpo containers keep the image's entrypoint (give `args`)"
            );
            let mounts = container["volumeMounts"]
                .as_sequence()
                .map(|mounts| {
                    mounts
                        .iter()
                        .filter_map(|mount| mount["mountPath"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            out.push(TgrpoCommand {
                origin: format!(
                    "{} {kind} {name} container {}",
                    path.display(),
                    container["name"].as_str().unwrap_or("?")
                ),
                args: strings(&container["args"]),
                mounts,
            });
        }
    }
}

/// The tgrpo services of the compose file.
fn compose_commands(path: &Path, document: &Value, out: &mut Vec<TgrpoCommand>) {
    let services = document["services"].as_mapping().unwrap();
    for (name, service) in services {
        if !is_tgrpo_image(&service["image"]) {
            continue;
        }
        assert!(
            service["entrypoint"].is_null(),
            "compose service {name:?} overrides the entrypoint"
        );
        let mounts = service["volumes"]
            .as_sequence()
            .map(|volumes| {
                volumes
                    .iter()
                    .filter_map(|volume| volume.as_str())
                    .filter_map(|volume| volume.split(':').nth(1))
                    .map(|target| {
                        Path::new(target)
                            .parent()
                            .map(|dir| dir.display().to_string())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(TgrpoCommand {
            origin: format!("{} service {}", path.display(), name.as_str().unwrap()),
            args: strings(&service["command"]),
            mounts,
        });
    }
}

fn tgrpo_commands(documents: &[(PathBuf, Value)]) -> Vec<TgrpoCommand> {
    let mut commands = Vec::new();
    for (path, document) in documents {
        if document["services"].is_mapping() {
            compose_commands(path, document, &mut commands);
        } else {
            k8s_commands(path, document, &mut commands);
        }
    }
    commands
}

#[test]
fn every_tgrpo_command_line_in_deploy_is_accepted_by_the_binary() {
    let documents = yaml_documents();
    let commands = tgrpo_commands(&documents);
    let roles: BTreeSet<String> = commands
        .iter()
        .filter_map(|command| {
            command
                .args
                .iter()
                .find(|arg| !arg.starts_with('-') && !arg.contains(':') && !arg.contains('/'))
                .cloned()
        })
        .collect();
    for role in [
        "executor",
        "learner",
        "rollout",
        "teacher-proxy",
        "data",
        "synthesis",
        "check",
    ] {
        assert!(
            roles.contains(role),
            "no deploy file runs `tgrpo {role}`: {roles:?}"
        );
    }
    for command in &commands {
        assert!(!command.args.is_empty(), "{}: no arguments", command.origin);
        let output = Command::new(TGRPO)
            .args(&command.args)
            .arg("--help")
            .env_remove("TGRPO_CONFIG")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: `tgrpo {}` is not accepted:\n{}",
            command.origin,
            command.args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        // The config file the command names is mounted into the container.
        if let Some(index) = command.args.iter().position(|arg| arg == "--config") {
            let file = Path::new(&command.args[index + 1]);
            let dir = file.parent().unwrap().display().to_string();
            assert!(
                command.mounts.contains(&dir),
                "{}: --config {} but nothing is mounted at {dir} ({:?})",
                command.origin,
                file.display(),
                command.mounts
            );
        }
    }
    // A wrong flag is refused, so the check above can fail.
    let refused = Command::new(TGRPO)
        .args(["executor", "--no-such-flag", "--help"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

fn load_config(text: &str, origin: &str) -> TgrpoConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tgrpo.toml");
    std::fs::write(&path, text).unwrap();
    let config = TgrpoConfig::load(Some(&path), &NoEnv, &[])
        .unwrap_or_else(|err| panic!("{origin} does not load as a run config: {err}"));
    config
        .validate()
        .unwrap_or_else(|err| panic!("{origin} is not a valid run config: {err}"));
    config
}

fn host_of(endpoint: &str) -> String {
    let rest = endpoint.split("://").last().unwrap();
    let authority = rest.split('/').next().unwrap();
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .to_string()
}

#[test]
fn the_kubernetes_config_map_holds_a_run_config_whose_hosts_are_services() {
    let documents = yaml_documents();
    let kinds_named = |kind: &str| -> Vec<&Value> {
        documents
            .iter()
            .filter(|(path, document)| {
                path.parent().unwrap().ends_with("k8s") && document["kind"].as_str() == Some(kind)
            })
            .map(|(_, document)| document)
            .collect()
    };
    let config_map = kinds_named("ConfigMap")
        .into_iter()
        .find(|document| document["metadata"]["name"].as_str() == Some("tgrpo-config"))
        .expect("a ConfigMap tgrpo-config");
    let text = config_map["data"]["tgrpo.toml"].as_str().unwrap();
    let config = load_config(text, "the tgrpo-config ConfigMap");
    assert_eq!(config.model.device, "cuda");

    let services: BTreeSet<String> = kinds_named("Service")
        .into_iter()
        .map(|service| service["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    for (key, endpoint) in [
        (
            "rollout.learner_endpoint",
            config.rollout.learner_endpoint.as_str(),
        ),
        ("broadcast.url", config.broadcast.url.as_str()),
        ("teacher.api_url", config.teacher.api_url.as_str()),
    ] {
        assert!(
            services.contains(&host_of(endpoint)),
            "{key} = {endpoint} is not a Service of deploy/k8s ({services:?})"
        );
    }
    // The executors: one stable name per StatefulSet replica, through its headless Service.
    let executors = kinds_named("StatefulSet")
        .into_iter()
        .find(|set| set["metadata"]["name"].as_str() == Some("tgrpo-executor"))
        .expect("the tgrpo-executor StatefulSet");
    let replicas = executors["spec"]["replicas"].as_u64().unwrap();
    let service = executors["spec"]["serviceName"].as_str().unwrap();
    assert!(services.contains(service));
    let expected: Vec<String> = (0..replicas)
        .map(|index| format!("tgrpo-executor-{index}.{service}:50051"))
        .collect();
    assert_eq!(config.rollout.executor_endpoints, expected);
    // Every tgrpo pod mounts the ConfigMap it reads.
    for kind in ["Deployment", "StatefulSet", "Job"] {
        for object in kinds_named(kind) {
            let volumes = object["spec"]["template"]["spec"]["volumes"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            let containers = object["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap();
            if containers.iter().any(|c| is_tgrpo_image(&c["image"])) {
                assert!(
                    volumes
                        .iter()
                        .any(|volume| volume["configMap"]["name"].as_str() == Some("tgrpo-config")),
                    "{kind} {:?} runs tgrpo without the tgrpo-config volume",
                    object["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn the_compose_run_config_loads_and_names_compose_services() {
    let path = deploy_dir().join("tgrpo-compose.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = load_config(&text, "deploy/tgrpo-compose.toml");
    let compose: Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy_dir().join("docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let project = compose["name"]
        .as_str()
        .expect("the compose project is named");
    let services: BTreeSet<String> = compose["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|key| key.as_str().unwrap().to_string())
        .collect();
    for endpoint in [
        &config.rollout.learner_endpoint,
        &config.broadcast.url,
        &config.teacher.api_url,
    ] {
        assert!(
            services.contains(&host_of(endpoint)),
            "{endpoint} is not a compose service ({services:?})"
        );
    }
    // Replicas of `executor` are reachable as PROJECT-executor-N.
    assert!(!config.rollout.executor_endpoints.is_empty());
    for endpoint in &config.rollout.executor_endpoints {
        let host = host_of(endpoint);
        let replica = host
            .strip_prefix(&format!("{project}-executor-"))
            .unwrap_or_else(|| panic!("{endpoint} is not a replica of the executor service"));
        assert!(replica.parse::<u32>().is_ok_and(|n| n >= 1), "{endpoint}");
    }
}

#[test]
fn the_dockerfile_builds_the_features_the_cli_has() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap(),
    )
    .unwrap();
    let features = manifest
        .get("features")
        .and_then(|features| features.as_table())
        .cloned()
        .unwrap_or_default();
    let package = manifest["package"]["name"].as_str().unwrap();
    let mut builds = 0;
    for line in dockerfile.lines() {
        let Some(rest) = line.trim().strip_prefix("cargo build") else {
            continue;
        };
        builds += 1;
        let words: Vec<&str> = rest.split_whitespace().collect();
        let at = |flag: &str| {
            words
                .iter()
                .position(|word| *word == flag)
                .map(|index| words[index + 1])
        };
        assert_eq!(at("-p"), Some(package), "{line}");
        if let Some(list) = at("--features") {
            for feature in list.split(',') {
                assert!(
                    features.contains_key(feature),
                    "{line}: no feature `{feature}` in cli/Cargo.toml"
                );
            }
        }
    }
    assert_eq!(builds, 2, "a CPU and a CUDA build");
    for target in ["AS cpu", "AS cuda"] {
        assert!(dockerfile.contains(target), "no `{target}` stage");
    }
    assert!(
        dockerfile.contains("python3"),
        "executors need python3 in the runtime image"
    );
}
