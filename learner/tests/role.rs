//! The `tgrpo learner` role end to end, from its config: a tiny HF model directory, a
//! prompt file, a teacher-traces file, a private nats-server for the adapter broadcast,
//! and a scripted rollout worker over loopback gRPC that answers every lease with groups
//! tokenised by the same chat template. The run completes; every adapter version reaches a
//! NATS subscriber verified and loadable; `final_model/` is a PEFT directory of the same
//! adapter.

use std::time::Duration;

use candle_core::{DType, Device};
use tgrpo_broadcast::{Broadcast, BroadcastConfig, StorageKind};
use tgrpo_dataset::Problem;
use tgrpo_learner::{LearnerConfig, PromptsFormat, StopReason};
use tgrpo_policy::chat::Message;
use tgrpo_policy::{Family, LoadOptions, LoraAdapter, LoraConfig, ModelSource, Policy, tiny};
use tgrpo_proto::learner as pb;
use tgrpo_proto::learner::learner_client::LearnerClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn problems() -> Vec<Problem> {
    (0..4)
        .map(|index| Problem {
            task_id: format!("{}", 11 + index),
            text: format!("Write a function add_{index}(x) that returns x + {index}."),
            reference: Some(format!("def add_{index}(x):\n    return x + {index}")),
            tests: vec![format!("assert add_{index}(1) == {}", 1 + index)],
            setup_code: String::new(),
            format: Default::default(),
            entry_point: Some(format!("add_{index}")),
            prompt: None,
        })
        .collect()
}

fn traces_jsonl(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|problem| {
            serde_json::json!({
                "problem_id": problem.task_id,
                "sample_index": 0,
                "messages": [],
                "thinking": "Return the sum.",
                "answer": format!("```python\n{}\n```", problem.reference.as_ref().unwrap()),
                "code": problem.reference,
                "raw_text": "",
                "finish_reason": "stop",
                "teacher_model": "test",
                "request_hash": format!("h{}", problem.task_id),
                "passed": true,
                "reward": 1.0,
            })
            .to_string()
                + "\n"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_trains_from_its_config_and_broadcasts_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    tiny::write_hf_dir(&model_dir, Family::Qwen2, 3).unwrap();
    let problems = problems();
    let prompts_path = dir.path().join("train.jsonl");
    tgrpo_dataset::jsonl::write_atomic(&prompts_path, &problems).unwrap();
    let traces_path = dir.path().join("traces.jsonl");
    std::fs::write(&traces_path, traces_jsonl(&problems)).unwrap();

    let mut config = LearnerConfig::default();
    config.learner.model = model_dir.display().to_string();
    config.learner.prompts_path = prompts_path;
    config.learner.prompts_format = PromptsFormat::Problems;
    config.learner.run_id = "role-test".into();
    config.learner.finish_linger_s = 0.5;
    config.dual_source.teacher_traces_path = traces_path;
    config.grpo.num_generations = 2;
    config.grpo.max_new_tokens = 8;
    config.training.prompts_per_step = 2;
    config.training.teacher_traces_per_step = 2;
    config.training.gradient_accumulation_steps = 1;
    config.training.save_every_steps = 1;
    config.training.output_dir = dir.path().join("outputs");
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        ..Default::default()
    };

    let nats = tgrpo_broadcast::testing::NatsServer::start().await.unwrap();
    let broadcast_config = BroadcastConfig {
        url: nats.url(),
        storage: StorageKind::Memory,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let subscriber_side = Broadcast::connect_nats("role-test", &broadcast_config)
        .await
        .unwrap();
    let mut subscriber = subscriber_side.subscribe(&shutdown);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let run = {
        let config = config.clone();
        let lora = lora.clone();
        let broadcast_config = broadcast_config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tgrpo_learner::run(&config, &lora, Some(&broadcast_config), listener, shutdown).await
        })
    };

    // The scripted worker: prompts rendered like a rollout worker's, two completions.
    let policy = Policy::load(
        &ModelSource::Dir(model_dir.clone()),
        &LoadOptions::default(),
    )
    .unwrap();
    let mut client = loop {
        match LearnerClient::connect(format!("http://{address}")).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut answered = 0;
    loop {
        let lease = match client
            .next_prompts(pb::NextPromptsRequest {
                worker_id: "script".into(),
                max_prompts: 0,
            })
            .await
        {
            Ok(response) => response.into_inner(),
            // The learner is gone: its own error says why.
            Err(status) => panic!("{status}; the learner ended with {:?}", run.await),
        };
        if lease.finished {
            break;
        }
        if lease.prompts.is_empty() {
            tokio::time::sleep(Duration::from_secs_f64(lease.retry_after_s)).await;
            continue;
        }
        let groups: Vec<pb::ScoredGroup> = lease
            .prompts
            .iter()
            .map(|item| {
                let problem =
                    tgrpo_learner::coordinator::problem_from_proto(item.problem.clone().unwrap());
                let prompt_tokens = policy
                    .chat_prompt(&[Message::user(tgrpo_dataset::prompt::user_message(&problem))])
                    .unwrap();
                pb::ScoredGroup {
                    item_id: item.item_id.clone(),
                    prompt_id: problem.task_id.clone(),
                    prompt_tokens,
                    completions: (0..2u32)
                        .map(|index| pb::ScoredCompletion {
                            tokens: vec![70 + index, 80, 90 + index],
                            behaviour_logprobs: vec![-3.0; 3],
                            reward: f64::from(index),
                            ..Default::default()
                        })
                        .collect(),
                    adapter_version: lease.adapter_version,
                    worker_id: "script".into(),
                    lease_id: lease.lease_id.clone(),
                    skipped: String::new(),
                }
            })
            .collect();
        let response = client
            .submit_groups(tokio_stream::iter(groups))
            .await
            .unwrap()
            .into_inner();
        answered += response.accepted;
    }
    assert!(answered >= 4);

    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.reason, StopReason::Completed);
    assert_eq!((summary.steps, summary.adapter_version), (2, 2));
    let generation = tokio::time::timeout(Duration::from_secs(20), subscriber.wait_for_version(2))
        .await
        .unwrap()
        .unwrap();
    let model_config = policy.model().config();
    let published = LoraAdapter::from_safetensors_bytes(
        &generation.bytes,
        model_config,
        None,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let (saved, base) = LoraAdapter::load_peft(
        &config.training.output_dir.join("final_model"),
        model_config,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(
        base.as_deref(),
        Some(model_dir.display().to_string().as_str())
    );
    assert_eq!(saved.config(), &lora);
    for ((name, a), (_, b)) in published.named_tensors().iter().zip(saved.named_tensors()) {
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{name}"
        );
    }
    // Training moved the adapter away from its B = 0 start.
    assert!(
        saved
            .named_tensors()
            .iter()
            .filter(|(name, _)| name.contains("lora_B"))
            .any(|(_, b)| b
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0)
    );
    let metrics =
        tgrpo_learner::metrics::read_metrics(&config.training.output_dir.join("metrics.jsonl"))
            .unwrap();
    assert_eq!(metrics.len(), 2);
    assert!(
        metrics
            .iter()
            .all(|m| m.loss_teacher_sft.is_some() && m.loss_grpo.is_some())
    );
    shutdown.cancel();
}
