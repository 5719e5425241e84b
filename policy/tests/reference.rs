//! With the adapter off, our logits equal candle-transformers' own `qwen2` and `llama`
//! models on the same random weights, in both the fused (inference) and the differentiable
//! (train) formulation.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, qwen2};
use tgrpo_policy::{Family, ForwardMode, LoraAdapter, LoraConfig, LoraInit, tiny};

const TOKENS: [u32; 12] = [5, 77, 298, 12, 256, 1, 99, 180, 42, 7, 290, 31];

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

fn ours(family: Family, mode_train: bool) -> Tensor {
    let model = tiny::model(family, 11, &Device::Cpu, DType::F32).unwrap();
    let tokens = Tensor::new(&TOKENS[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mode = if mode_train {
        ForwardMode::train_no_dropout()
    } else {
        ForwardMode::Inference
    };
    model
        .forward(&tokens, None, mode)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

#[test]
fn qwen2_logits_match_candle_transformers() {
    let cfg = tiny::config(Family::Qwen2);
    let weights = tiny::random_weights(&cfg, 11).unwrap();
    let reference_cfg: qwen2::Config = serde_json::from_value(tiny::hf_config_json(&cfg)).unwrap();
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
    let mut reference = qwen2::Model::new(&reference_cfg, vb).unwrap();
    let tokens = Tensor::new(&TOKENS[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let hidden = reference
        .forward(&tokens, 0, None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    // Tied head: logits = hidden @ embed^T.
    let expected = hidden
        .matmul(&weights["model.embed_tokens.weight"].t().unwrap())
        .unwrap();
    for train in [false, true] {
        let got = ours(Family::Qwen2, train);
        let diff = max_abs_diff(&got, &expected);
        let scale = expected
            .abs()
            .unwrap()
            .max_keepdim(1)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!("qwen2 train={train}: max |diff| {diff:e} (logit scale {scale})");
        assert!(diff < 1e-4, "qwen2 train={train}: max |diff| {diff}");
    }
}

#[test]
fn llama_logits_match_candle_transformers_position_by_position() {
    let cfg = tiny::config(Family::Llama);
    let weights = tiny::random_weights(&cfg, 11).unwrap();
    let raw: llama::LlamaConfig = serde_json::from_value(tiny::hf_config_json(&cfg)).unwrap();
    let reference_cfg = raw.into_config(false);
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let reference = llama::Llama::load(vb, &reference_cfg).unwrap();
    let mut cache = llama::Cache::new(true, DType::F32, &reference_cfg, &Device::Cpu).unwrap();
    // Prefill the first 5 tokens at once, then one token at a time through its KV cache.
    let mut expected_rows = Vec::new();
    let first = Tensor::new(&TOKENS[..5], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    expected_rows.push((
        4,
        reference
            .forward(&first, 0, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap(),
    ));
    for (pos, &tok) in TOKENS.iter().enumerate().skip(5) {
        let x = Tensor::new(&[tok], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        expected_rows.push((
            pos,
            reference
                .forward(&x, pos, &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap(),
        ));
    }
    for train in [false, true] {
        let got = ours(Family::Llama, train);
        let mut worst = 0f32;
        for (pos, expected) in &expected_rows {
            worst = worst.max(max_abs_diff(&got.i(*pos).unwrap(), expected));
        }
        println!("llama train={train}: max |diff| {worst:e}");
        assert!(worst < 1e-4, "llama train={train}: max |diff| {worst}");
    }
}

#[test]
fn a_zero_initialised_adapter_changes_nothing_and_a_random_one_does() {
    let model = tiny::model(Family::Qwen2, 3, &Device::Cpu, DType::F32).unwrap();
    let tokens = Tensor::new(&TOKENS[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let base = model
        .forward(&tokens, None, ForwardMode::Inference)
        .unwrap();
    let cfg = LoraConfig {
        r: 4,
        ..Default::default()
    };
    let peft = LoraAdapter::init(
        model.config(),
        &cfg,
        LoraInit::Peft,
        1,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let with_peft = model
        .forward(&tokens, Some(&peft), ForwardMode::Inference)
        .unwrap();
    assert!(max_abs_diff(&base, &with_peft) == 0.0);
    let random = LoraAdapter::init(
        model.config(),
        &cfg,
        LoraInit::Random { bound: 1.0 },
        1,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let with_random = model
        .forward(&tokens, Some(&random), ForwardMode::Inference)
        .unwrap();
    assert!(max_abs_diff(&base, &with_random) > 1e-2);
    // Switching the adapter off again gives the base logits exactly: nothing was modified.
    let again = model
        .forward(&tokens, None, ForwardMode::Inference)
        .unwrap();
    assert_eq!(max_abs_diff(&base, &again), 0.0);
}

#[test]
fn bf16_runs_and_stays_close_to_f32() {
    // The CUDA path runs bf16; the same ops (fused and differentiable) run on the CPU.
    let f32_model = tiny::model(Family::Qwen2, 11, &Device::Cpu, DType::F32).unwrap();
    let bf16_model = tiny::model(Family::Qwen2, 11, &Device::Cpu, DType::BF16).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let adapter = LoraAdapter::init(
        f32_model.config(),
        &cfg,
        LoraInit::Random { bound: 1.0 },
        1,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let tokens = Tensor::new(&TOKENS[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    // candle-transformers' own qwen2 differs from itself by ~0.05 between bf16 and f32 here
    // (logits up to ~5): allow twice that.
    for adapter in [None, Some(&adapter)] {
        let expected = f32_model
            .forward(&tokens, adapter, ForwardMode::Inference)
            .unwrap();
        for mode in [ForwardMode::Inference, ForwardMode::train_no_dropout()] {
            let got = bf16_model.forward(&tokens, adapter, mode).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let diff = max_abs_diff(&got.to_dtype(DType::F32).unwrap(), &expected);
            println!(
                "bf16 vs f32 (adapter: {}) max |diff| {diff}",
                adapter.is_some()
            );
            assert!(diff < 0.1, "{diff}");
        }
    }
    let request = tgrpo_policy::GenerationRequest {
        prompt: TOKENS.to_vec(),
        params: tgrpo_policy::SamplingParams::greedy(5),
    };
    let out = bf16_model
        .generate(&[request], Some(&adapter), None, &[])
        .unwrap();
    assert_eq!(out[0].tokens.len(), 5);
}
