//! Adapter I/O and lifecycle: PEFT directory and bytes round trips give identical logits,
//! a PEFT-written adapter loads, merging equals the unmerged adapter, trainable vars follow
//! PEFT names, and swapping adapters under concurrent samplers is atomic.

use candle_core::{DType, Device, Tensor};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tgrpo_policy::peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, safetensors_bytes};
use tgrpo_policy::{
    Family, ForwardMode, GenerationRequest, LoadOptions, LoraAdapter, LoraConfig, LoraInit,
    LoraTarget, Model, ModelSource, Policy, SamplingParams, TrainableAdapter, tiny,
};

const TOKENS: [u32; 9] = [4, 8, 15, 16, 23, 42, 108, 200, 7];

fn logits(model: &Model, adapter: Option<&LoraAdapter>) -> Tensor {
    let tokens = Tensor::new(&TOKENS[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&tokens, adapter, ForwardMode::Inference)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn random_adapter(model: &Model, targets: Vec<LoraTarget>, seed: u64) -> LoraAdapter {
    let cfg = LoraConfig {
        r: 4,
        alpha: 16.0,
        dropout: 0.1,
        target_modules: targets,
        use_rslora: false,
    };
    LoraAdapter::init(
        model.config(),
        &cfg,
        LoraInit::Random { bound: 1.0 },
        seed,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

#[test]
fn peft_directory_round_trip_is_exact_and_peft_shaped() {
    let model = tiny::model(Family::Qwen2, 1, &Device::Cpu, DType::F32).unwrap();
    let adapter = random_adapter(&model, LoraTarget::ALL.to_vec(), 3);
    let dir = tempfile::tempdir().unwrap();
    adapter
        .save_peft(dir.path(), "Qwen/Qwen2.5-Coder-1.5B-Instruct")
        .unwrap();

    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 16.0);
    assert_eq!(config["lora_dropout"], 0.1);
    assert_eq!(config["bias"], "none");
    assert_eq!(config["fan_in_fan_out"], false);
    assert_eq!(
        config["base_model_name_or_path"],
        "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    );
    assert_eq!(
        config["target_modules"],
        serde_json::json!([
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj"
        ])
    );

    let bytes = std::fs::read(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let stored = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    assert_eq!(stored.len(), 2 * 7 * 2);
    let a = &stored["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"];
    assert_eq!(a.dims(), [4, 128]); // (r, in_features)
    let b = &stored["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"];
    assert_eq!(b.dims(), [32, 4]); // (out_features = 2 kv heads x 16, r)

    let (loaded, base) =
        LoraAdapter::load_peft(dir.path(), model.config(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(base.as_deref(), Some("Qwen/Qwen2.5-Coder-1.5B-Instruct"));
    assert_eq!(loaded.config(), adapter.config());
    assert_eq!(
        max_abs_diff(
            &logits(&model, Some(&adapter)),
            &logits(&model, Some(&loaded))
        ),
        0.0
    );
}

#[test]
fn bytes_round_trip_is_exact_and_deterministic() {
    let model = tiny::model(Family::Llama, 1, &Device::Cpu, DType::F32).unwrap();
    let adapter = random_adapter(
        &model,
        vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
        4,
    );
    let bytes = adapter.to_safetensors_bytes("tiny").unwrap();
    assert_eq!(bytes, adapter.to_safetensors_bytes("tiny").unwrap());
    let back =
        LoraAdapter::from_safetensors_bytes(&bytes, model.config(), None, &Device::Cpu, DType::F32)
            .unwrap();
    assert_eq!(
        back.config().target_modules,
        vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down]
    );
    assert_eq!(
        max_abs_diff(
            &logits(&model, Some(&adapter)),
            &logits(&model, Some(&back))
        ),
        0.0
    );
    // Truncated bytes are an error, not a panic or a half adapter.
    let err = LoraAdapter::from_safetensors_bytes(
        &bytes[..bytes.len() / 2],
        model.config(),
        None,
        &Device::Cpu,
        DType::F32,
    );
    assert!(err.is_err());
    // An adapter for a different model shape is rejected naming the tensor.
    let mut other_cfg = model.config().clone();
    other_cfg.intermediate_size = 96;
    let err =
        LoraAdapter::from_safetensors_bytes(&bytes, &other_cfg, None, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("mlp.down_proj.lora_A.weight") && err.contains("shape"),
        "{err}"
    );
}

/// An adapter as PEFT writes it: bf16 tensors, a config with PEFT's extra keys and its own
/// target order, no metadata of ours.
#[test]
fn a_peft_written_adapter_loads() {
    let model = tiny::model(Family::Qwen2, 1, &Device::Cpu, DType::F32).unwrap();
    let ours = random_adapter(
        &model,
        vec![LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O],
        5,
    );
    let dir = tempfile::tempdir().unwrap();
    let bf16: Vec<(String, Tensor)> = ours
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::BF16).unwrap()))
        .collect();
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    std::fs::write(
        dir.path().join(ADAPTER_WEIGHTS_FILE),
        safetensors_bytes(&bf16, &metadata).unwrap(),
    )
    .unwrap();
    let peft_config = r#"{
  "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
  "bias": "none", "corda_config": null, "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false,
  "inference_mode": true, "init_lora_weights": true, "layer_replication": null, "layers_pattern": null,
  "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 16, "lora_bias": false, "lora_dropout": 0.05,
  "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null, "peft_type": "LORA",
  "r": 4, "rank_pattern": {}, "revision": null, "target_modules": ["v_proj", "o_proj", "q_proj", "k_proj"],
  "task_type": "CAUSAL_LM", "trainable_token_indices": null, "use_dora": false, "use_rslora": false
}"#;
    std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), peft_config).unwrap();
    let (loaded, _) =
        LoraAdapter::load_peft(dir.path(), model.config(), &Device::Cpu, DType::F32).unwrap();
    let expected = logits(&model, Some(&ours));
    let got = logits(&model, Some(&loaded));
    // bf16 storage rounds the weights: close, not identical.
    let diff = max_abs_diff(&expected, &got);
    assert!(diff < 0.05 && diff > 0.0, "{diff}");
    // A tensor missing from the file is named.
    let mut missing = bf16.clone();
    missing.retain(|(n, _)| !n.contains("layers.1.self_attn.o_proj.lora_B"));
    std::fs::write(
        dir.path().join(ADAPTER_WEIGHTS_FILE),
        safetensors_bytes(&missing, &metadata).unwrap(),
    )
    .unwrap();
    let err = LoraAdapter::load_peft(dir.path(), model.config(), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight")
            && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn merged_weights_equal_the_unmerged_adapter() {
    for family in [Family::Qwen2, Family::Llama] {
        let model = tiny::model(family, 2, &Device::Cpu, DType::F32).unwrap();
        let adapter = random_adapter(&model, LoraTarget::ALL.to_vec(), 6);
        let merged = model.merge_adapter(&adapter).unwrap();
        let diff = max_abs_diff(&logits(&model, Some(&adapter)), &logits(&merged, None));
        assert!(diff < 1e-4, "{family:?}: {diff}");
        // The base model is untouched.
        assert!(max_abs_diff(&logits(&model, None), &logits(&merged, None)) > 1e-3);
        // The merged model exports as an HF checkpoint that loads back to the same logits.
        let dir = tempfile::tempdir().unwrap();
        tiny::write_hf_dir(dir.path(), family, 2).unwrap();
        let weights: std::collections::HashMap<String, Tensor> =
            merged.named_weights().into_iter().collect();
        candle_core::safetensors::save(&weights, dir.path().join("model.safetensors")).unwrap();
        let (reloaded, _) =
            tgrpo_policy::loading::load_dir(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(
            max_abs_diff(&logits(&merged, None), &logits(&reloaded, None)),
            0.0
        );
    }
}

#[test]
fn trainable_vars_are_peft_named_and_snapshots_are_detached() {
    let model = tiny::model(Family::Qwen2, 1, &Device::Cpu, DType::F32).unwrap();
    let cfg = LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        target_modules: vec![LoraTarget::Q, LoraTarget::Up],
        use_rslora: false,
    };
    let trainable =
        TrainableAdapter::new(model.config(), &cfg, 9, &Device::Cpu, DType::F32).unwrap();
    let names: Vec<&str> = trainable.vars().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
            "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight",
            "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight",
            "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
            "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight",
            "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight",
        ]
    );
    // PEFT init: B = 0, so the adapted model is the base model.
    assert_eq!(
        max_abs_diff(
            &logits(&model, None),
            &logits(&model, Some(trainable.adapter()))
        ),
        0.0
    );
    let snapshot = trainable.snapshot().unwrap();
    let other = LoraAdapter::init(
        model.config(),
        &cfg,
        LoraInit::Random { bound: 1.0 },
        1,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    trainable.assign(&other).unwrap();
    // The vars changed in place (forward sees it), the snapshot did not.
    assert_eq!(
        max_abs_diff(
            &logits(&model, Some(&other)),
            &logits(&model, Some(trainable.adapter()))
        ),
        0.0
    );
    assert_eq!(
        max_abs_diff(&logits(&model, None), &logits(&model, Some(&snapshot))),
        0.0
    );
}

#[test]
fn adapter_swaps_are_atomic_for_concurrent_samplers() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_hf_dir(dir.path(), Family::Qwen2, 8).unwrap();
    let policy = Policy::load(
        &ModelSource::Dir(dir.path().to_path_buf()),
        &LoadOptions::default(),
    )
    .unwrap();
    let a = random_adapter(policy.model(), LoraTarget::ALL.to_vec(), 1);
    let b = random_adapter(policy.model(), LoraTarget::ALL.to_vec(), 2);
    let requests = vec![GenerationRequest {
        prompt: vec![10, 11, 12],
        params: SamplingParams {
            max_new_tokens: 8,
            ignore_eos: true,
            ..SamplingParams::greedy(8)
        },
    }];
    let expected_a = policy.generate_with(&requests, Some(&a)).unwrap()[0]
        .tokens
        .clone();
    let expected_b = policy.generate_with(&requests, Some(&b)).unwrap()[0]
        .tokens
        .clone();
    assert_ne!(expected_a, expected_b);
    let bytes_a = a.to_safetensors_bytes("tiny").unwrap();
    let bytes_b = b.to_safetensors_bytes("tiny").unwrap();
    policy.install_adapter_bytes(0, &bytes_a, None).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let swapper = {
            let (policy, stop) = (policy.clone(), stop.clone());
            let (bytes_a, bytes_b) = (&bytes_a, &bytes_b);
            scope.spawn(move || {
                let mut version = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    version += 1;
                    let bytes = if version.is_multiple_of(2) {
                        bytes_a
                    } else {
                        bytes_b
                    };
                    policy.install_adapter_bytes(version, bytes, None).unwrap();
                }
                version
            })
        };
        let mut seen = [0usize; 2];
        for _ in 0..60 {
            let (version, out) = policy.generate(&requests).unwrap();
            let version = version.expect("an adapter is installed");
            let expected = if version % 2 == 0 {
                &expected_a
            } else {
                &expected_b
            };
            assert_eq!(
                &out[0].tokens, expected,
                "version {version} produced a mixed output"
            );
            seen[(version % 2) as usize] += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        println!(
            "{swaps} swaps; samples with a: {}, with b: {}",
            seen[0], seen[1]
        );
        assert!(swaps > 10);
    });
    // A bad payload leaves the installed adapter in place.
    let before = policy.adapter_slot().version();
    assert!(
        policy
            .install_adapter_bytes(999, b"not safetensors", None)
            .is_err()
    );
    assert_eq!(policy.adapter_slot().version(), before);
}

#[test]
fn shared_types_are_send_and_sync() {
    // Rollout workers move these into blocking tasks and share them across threads.
    fn shared<T: Send + Sync + Clone>() {}
    shared::<Policy>();
    shared::<Model>();
    shared::<LoraAdapter>();
    shared::<TrainableAdapter>();
    shared::<tgrpo_policy::AdapterSlot>();
}
