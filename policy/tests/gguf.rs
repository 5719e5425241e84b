//! A GGUF file written here (from the tiny random weights, as llama.cpp's converter lays
//! them out) loads to the same logits as candle-transformers' quantized model of the same
//! file, and, unquantized, to the same logits as the HF safetensors checkpoint.

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use std::collections::HashMap;
use std::path::Path;
use tgrpo_policy::loading::load_gguf;
use tgrpo_policy::{Family, ForwardMode, LoadOptions, ModelConfig, tiny};

const TOKENS: [u32; 10] = [12, 250, 3, 77, 140, 9, 33, 201, 5, 64];

/// llama.cpp's `permute` for Llama q/k rows: HF `(heads, 2, d/2)` → GGUF `(heads, d/2, 2)`.
fn permute(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn write_gguf(path: &Path, cfg: &ModelConfig, weights: &HashMap<String, Tensor>, dtype: GgmlDType) {
    let arch = cfg.family.as_str();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, t: &Tensor, quantize: bool| {
        let q = QTensor::quantize(t, if quantize { dtype } else { GgmlDType::F32 }).unwrap();
        tensors.push((name, q));
    };
    add(
        "token_embd.weight".into(),
        &weights["model.embed_tokens.weight"],
        true,
    );
    add(
        "output_norm.weight".into(),
        &weights["model.norm.weight"],
        false,
    );
    if let Some(head) = weights.get("lm_head.weight") {
        add("output.weight".into(), head, true);
    }
    for l in 0..cfg.num_hidden_layers {
        let w = |n: &str| &weights[&format!("model.layers.{l}.{n}")];
        let llama = cfg.family == Family::Llama;
        let q = if llama {
            permute(w("self_attn.q_proj.weight"), cfg.num_attention_heads)
        } else {
            w("self_attn.q_proj.weight").clone()
        };
        let k = if llama {
            permute(w("self_attn.k_proj.weight"), cfg.num_key_value_heads)
        } else {
            w("self_attn.k_proj.weight").clone()
        };
        add(format!("blk.{l}.attn_q.weight"), &q, true);
        add(format!("blk.{l}.attn_k.weight"), &k, true);
        add(
            format!("blk.{l}.attn_v.weight"),
            w("self_attn.v_proj.weight"),
            true,
        );
        add(
            format!("blk.{l}.attn_output.weight"),
            w("self_attn.o_proj.weight"),
            true,
        );
        if cfg.qkv_bias {
            add(
                format!("blk.{l}.attn_q.bias"),
                w("self_attn.q_proj.bias"),
                false,
            );
            add(
                format!("blk.{l}.attn_k.bias"),
                w("self_attn.k_proj.bias"),
                false,
            );
            add(
                format!("blk.{l}.attn_v.bias"),
                w("self_attn.v_proj.bias"),
                false,
            );
        }
        add(
            format!("blk.{l}.ffn_gate.weight"),
            w("mlp.gate_proj.weight"),
            true,
        );
        add(
            format!("blk.{l}.ffn_up.weight"),
            w("mlp.up_proj.weight"),
            true,
        );
        add(
            format!("blk.{l}.ffn_down.weight"),
            w("mlp.down_proj.weight"),
            true,
        );
        add(
            format!("blk.{l}.attn_norm.weight"),
            w("input_layernorm.weight"),
            false,
        );
        add(
            format!("blk.{l}.ffn_norm.weight"),
            w("post_attention_layernorm.weight"),
            false,
        );
    }
    use gguf_file::Value;
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            format!("{arch}.context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        (
            format!("{arch}.embedding_length"),
            Value::U32(cfg.hidden_size as u32),
        ),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (
            format!("{arch}.block_count"),
            Value::U32(cfg.num_hidden_layers as u32),
        ),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(cfg.num_attention_heads as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(cfg.num_key_value_heads as u32),
        ),
        (
            format!("{arch}.rope.dimension_count"),
            Value::U32(cfg.head_dim as u32),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(cfg.eos_token_id[0]),
        ),
    ];
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &md, &ts).unwrap();
}

/// candle-transformers' quantized model: last-position logits after each prefix.
fn reference_logits(path: &Path, family: Family) -> Vec<Tensor> {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut out = Vec::new();
    match family {
        Family::Qwen2 => {
            let mut m =
                quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
            for (pos, &t) in TOKENS.iter().enumerate() {
                let x = Tensor::new(&[t], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                out.push(m.forward(&x, pos).unwrap().flatten_all().unwrap());
            }
        }
        Family::Llama => {
            let mut m =
                quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
            for (pos, &t) in TOKENS.iter().enumerate() {
                let x = Tensor::new(&[t], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                out.push(m.forward(&x, pos).unwrap().flatten_all().unwrap());
            }
        }
    }
    out
}

fn ours(model: &tgrpo_policy::Model) -> Tensor {
    let tokens = Tensor::new(&TOKENS[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&tokens, None, ForwardMode::Inference)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

fn check(family: Family, dtype: GgmlDType, tolerance: f32) {
    let cfg = tiny::config(family);
    let weights = tiny::random_weights(&cfg, 13).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &cfg, &weights, dtype);
    let (model, files) = load_gguf(&path, &LoadOptions::default()).unwrap();
    assert_eq!(files.gguf.as_deref(), Some(path.as_path()));
    // Config recovered from the metadata.
    let got_cfg = model.config();
    assert_eq!(
        (
            got_cfg.family,
            got_cfg.num_hidden_layers,
            got_cfg.num_key_value_heads
        ),
        (family, 2, 2)
    );
    assert_eq!(got_cfg.tie_word_embeddings, cfg.tie_word_embeddings);
    assert_eq!(got_cfg.qkv_bias, cfg.qkv_bias);
    let logits = ours(&model);
    let reference = reference_logits(&path, family);
    let mut worst = 0f32;
    for (pos, expected) in reference.iter().enumerate() {
        let d = (logits.i(pos).unwrap() - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        worst = worst.max(d);
        // Same prediction at every position (unquantized; 8-bit activations can flip near ties).
        if dtype == GgmlDType::F32 {
            assert_eq!(
                logits
                    .i(pos)
                    .unwrap()
                    .argmax(0)
                    .unwrap()
                    .to_scalar::<u32>()
                    .unwrap(),
                expected.argmax(0).unwrap().to_scalar::<u32>().unwrap(),
                "{family:?} {dtype:?} position {pos}"
            );
        }
    }
    println!("{family:?} {dtype:?}: ours vs candle quantized max |diff| {worst:e}");
    assert!(worst < tolerance, "{family:?} {dtype:?}: {worst}");
    if dtype == GgmlDType::F32 {
        // Unquantized, the GGUF model is the safetensors model (q/k un-permuted for Llama).
        let hf = tiny::model(family, 13, &Device::Cpu, DType::F32).unwrap();
        let d = (ours(&hf) - &logits)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{family:?}: gguf vs safetensors");
    }
}

#[test]
fn gguf_f32_matches_candle_quantized_models() {
    check(Family::Qwen2, GgmlDType::F32, 1e-4);
    check(Family::Llama, GgmlDType::F32, 1e-4);
}

#[test]
fn gguf_q8_0_matches_candle_quantized_models_within_quantization_error() {
    // candle's quantized matmul also rounds the activations to 8 bits; we dequantize the
    // weights once and multiply in f32. Logits are O(3): allow 0.15 (a wrong layout or
    // missing un-permutation gives differences of the logits' own size).
    check(Family::Qwen2, GgmlDType::Q8_0, 0.15);
    check(Family::Llama, GgmlDType::Q8_0, 0.15);
}

#[test]
fn a_gguf_without_its_architecture_is_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &[], &[("token_embd.weight", &t)]).unwrap();
    let err = load_gguf(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("general.architecture") && err.contains("bad.gguf"),
        "{err}"
    );
}
