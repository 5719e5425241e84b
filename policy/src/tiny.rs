//! Tiny random-weight models for tests and the CPU demo (public, not `cfg(test)`: other
//! crates' tests load a real model through the real code path in milliseconds).
//!
//! [`write_hf_dir`] writes a complete HF-format model directory — `config.json`,
//! `model.safetensors`, `tokenizer.json` (a byte-level BPE with ChatML special tokens),
//! `tokenizer_config.json` (with a Qwen-style chat template) and `generation_config.json` —
//! that every loader in this crate, candle-transformers and HF transformers can read.
//! Weights are seeded: the same `(family, seed)` always gives the same files.

use crate::config::{Family, ModelConfig};
use crate::error::{CandleContext, PolicyError, Result};
use crate::loading::{LoadOptions, model_from_tensors};
use crate::model::Model;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;

/// Extra BPE merges on top of the 256 byte tokens, so tokenization is BPE-like rather than
/// byte-per-token (pairs are in GPT-2 byte-level notation: `Ġ` is a space, `Ċ` a newline).
const MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("r", "e"),
    ("o", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("Ġ", "s"),
    ("a", "t"),
    ("Ġ", "a"),
    ("e", "n"),
    ("Ġ", "c"),
    ("i", "t"),
    ("i", "s"),
    ("a", "n"),
    ("o", "r"),
    ("e", "s"),
    ("Ġ", "f"),
    ("e", "d"),
    ("Ġ", "p"),
    ("Ġ", "r"),
    ("Ġ", "Ġ"),
    ("ĠĠ", "ĠĠ"),
    ("d", "e"),
    ("Ġ", "d"),
    ("Ġ", "i"),
    ("Ġ", "n"),
    ("l", "e"),
    ("Ġ", "re"),
    ("u", "r"),
    ("Ġre", "t"),
    ("Ġret", "ur"),
    ("Ġretur", "n"),
    ("Ġ", "de"),
    ("Ġde", "f"),
    ("Ġ", "x"),
    ("Ġ", "="),
    ("(", ")"),
    (")", ":"),
    ("Ċ", "ĠĠĠĠ"),
];

/// The ChatML special tokens, in id order after the BPE vocabulary.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A Qwen2.5-style chat template (default system prompt, ChatML turns).
pub const CHAT_TEMPLATE: &str = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if message['role'] != 'system' %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// GPT-2's reversible byte → printable-char map used by byte-level BPE.
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in printable.into_iter().zip(chars) {
        map[b as usize] = char::from_u32(c).expect("valid scalar");
    }
    map
}

/// Number of tokens of the tiny tokenizer (bytes + merges + special tokens); equals the
/// tiny models' `vocab_size`.
pub fn vocab_size() -> usize {
    256 + MERGES.len() + SPECIAL_TOKENS.len()
}

/// The id of a special token of the tiny tokenizer.
pub fn special_token_id(token: &str) -> Option<u32> {
    SPECIAL_TOKENS
        .iter()
        .position(|t| *t == token)
        .map(|i| (256 + MERGES.len() + i) as u32)
}

/// `tokenizer.json` of the tiny byte-level BPE tokenizer.
pub fn tokenizer_json() -> String {
    let byte_chars = bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (id, c) in byte_chars.iter().enumerate() {
        vocab.insert(c.to_string(), id.into());
    }
    for (i, (a, b)) in MERGES.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), (256 + i).into());
    }
    let merges: Vec<String> = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let added: Vec<serde_json::Value> = SPECIAL_TOKENS
        .iter()
        .map(|t| {
            serde_json::json!({"id": special_token_id(t), "content": t, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    serde_json::to_string_pretty(&serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    }))
    .expect("static json")
}

/// The tiny config of a family: 2 layers, hidden 64, 4 query / 2 KV heads (GQA), head dim
/// 16. Qwen2 ties the LM head and has q/k/v biases; Llama has an untied head.
pub fn config(family: Family) -> ModelConfig {
    let im_end = special_token_id("<|im_end|>").expect("special token");
    let eot = special_token_id("<|endoftext|>").expect("special token");
    ModelConfig {
        family,
        vocab_size: vocab_size(),
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        max_position_embeddings: 1024,
        rope_theta: 10_000.0,
        rope_scaling: None,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: family == Family::Qwen2,
        qkv_bias: family == Family::Qwen2,
        o_bias: false,
        bos_token_id: Some(eot),
        eos_token_id: vec![im_end, eot],
    }
}

/// The HF `config.json` for `cfg` (with the extra keys candle-transformers' Qwen2/Llama
/// configs require).
pub fn hf_config_json(cfg: &ModelConfig) -> serde_json::Value {
    let mut json = serde_json::json!({
        "architectures": [match cfg.family { Family::Qwen2 => "Qwen2ForCausalLM", Family::Llama => "LlamaForCausalLM" }],
        "model_type": cfg.family.as_str(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id.first(),
        "torch_dtype": "float32",
        "rope_scaling": null,
    });
    if let Some(obj) = json.as_object_mut() {
        match cfg.family {
            Family::Qwen2 => {
                obj.insert("sliding_window".into(), cfg.max_position_embeddings.into());
                obj.insert("max_window_layers".into(), cfg.num_hidden_layers.into());
                obj.insert("use_sliding_window".into(), false.into());
            }
            Family::Llama => {
                obj.insert("attention_bias".into(), cfg.qkv_bias.into());
                obj.insert("mlp_bias".into(), false.into());
            }
        }
    }
    json
}

/// Seeded random weights for `cfg`, HF-named, f32 on CPU. Scales keep activations O(1)
/// so the logits are far from uniform (sampling and greedy tests see real structure).
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensor = |shape: &[usize], center: f32, bound: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| center + (rng.random::<f32>() * 2.0 - 1.0) * bound)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).ctx(|| "tiny weights".to_string())
    };
    let h = cfg.hidden_size;
    let q_dim = cfg.num_attention_heads * cfg.head_dim;
    let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".to_string(),
        tensor(&[cfg.vocab_size, h], 0.0, 0.3)?,
    );
    for layer in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        let lin = |rows: usize, cols: usize| (rows, cols, 1.5 / (cols as f32).sqrt());
        for (name, (rows, cols, bound)) in [
            ("self_attn.q_proj", lin(q_dim, h)),
            ("self_attn.k_proj", lin(kv_dim, h)),
            ("self_attn.v_proj", lin(kv_dim, h)),
            ("self_attn.o_proj", lin(h, q_dim)),
            ("mlp.gate_proj", lin(i, h)),
            ("mlp.up_proj", lin(i, h)),
            ("mlp.down_proj", lin(h, i)),
        ] {
            w.insert(
                format!("{p}.{name}.weight"),
                tensor(&[rows, cols], 0.0, bound)?,
            );
        }
        if cfg.qkv_bias {
            w.insert(
                format!("{p}.self_attn.q_proj.bias"),
                tensor(&[q_dim], 0.0, 0.1)?,
            );
            w.insert(
                format!("{p}.self_attn.k_proj.bias"),
                tensor(&[kv_dim], 0.0, 0.1)?,
            );
            w.insert(
                format!("{p}.self_attn.v_proj.bias"),
                tensor(&[kv_dim], 0.0, 0.1)?,
            );
        }
        if cfg.o_bias {
            w.insert(
                format!("{p}.self_attn.o_proj.bias"),
                tensor(&[h], 0.0, 0.1)?,
            );
        }
        w.insert(
            format!("{p}.input_layernorm.weight"),
            tensor(&[h], 1.0, 0.2)?,
        );
        w.insert(
            format!("{p}.post_attention_layernorm.weight"),
            tensor(&[h], 1.0, 0.2)?,
        );
    }
    w.insert("model.norm.weight".to_string(), tensor(&[h], 1.0, 0.2)?);
    if !cfg.tie_word_embeddings {
        w.insert(
            "lm_head.weight".to_string(),
            tensor(&[cfg.vocab_size, h], 0.0, 0.3)?,
        );
    }
    Ok(w)
}

/// A tiny random model in memory (no files), in `dtype` on `device`.
pub fn model(family: Family, seed: u64, device: &Device, dtype: DType) -> Result<Model> {
    let cfg = config(family);
    let weights = random_weights(&cfg, seed)?;
    model_from_tensors(
        &cfg,
        weights,
        &LoadOptions {
            device: device.clone(),
            dtype,
        },
        "tiny model",
    )
}

/// Writes a complete tiny HF model directory into `dir` (created if needed).
pub fn write_hf_dir(dir: &Path, family: Family, seed: u64) -> Result<()> {
    write_hf_dir_with(dir, &config(family), seed)
}

/// Like [`write_hf_dir`] with a custom config (its `vocab_size` must be at least
/// [`vocab_size`] so the tokenizer's ids fit).
pub fn write_hf_dir_with(dir: &Path, cfg: &ModelConfig, seed: u64) -> Result<()> {
    if cfg.vocab_size < vocab_size() {
        return Err(PolicyError::config(
            "tiny",
            "vocab_size",
            format!("{} < tokenizer size {}", cfg.vocab_size, vocab_size()),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| PolicyError::io(dir, e))?;
    let write = |name: &str, text: String| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| PolicyError::io(&path, e))
    };
    write(
        "config.json",
        serde_json::to_string_pretty(&hf_config_json(cfg)).expect("json"),
    )?;
    let weights = random_weights(cfg, seed)?;
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&weights, &path)
        .ctx(|| format!("writing {}", path.display()))?;
    write("tokenizer.json", tokenizer_json())?;
    let tokenizer_config = serde_json::json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.max_position_embeddings,
        "tokenizer_class": "Qwen2Tokenizer",
        "split_special_tokens": false,
        "errors": "replace",
    });
    write(
        "tokenizer_config.json",
        serde_json::to_string_pretty(&tokenizer_config).expect("json"),
    )?;
    let generation_config = serde_json::json!({
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": special_token_id("<|endoftext|>"),
    });
    write(
        "generation_config.json",
        serde_json::to_string_pretty(&generation_config).expect("json"),
    )?;
    Ok(())
}
