//! Sampling throughput: tokens/s of our batched sampler at batch 1, 8 and 32 with a LoRA
//! adapter (r=64) attached, next to candle-transformers' own model generating from the
//! same weights at the same precision (f32), in the same process. Prints a table and the
//! two target ratios (batch-8 aggregate ≥ 4× batch-1; our batch-1 ≥ 0.8× the reference).
//!
//! ```sh
//! cargo bench -p tgrpo-policy --bench sample                 # tiny + the real GGUFs if present
//! TGRPO_BENCH_MODELS=tiny,smollm2 TGRPO_BENCH_NEW_TOKENS=32 cargo bench -p tgrpo-policy --bench sample
//! ```
//! The real models come from `../shared/tools/real-models.sh` (`~/.cache/tgrpo-models`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};
use std::path::PathBuf;
use std::time::Instant;
use tgrpo_policy::loading::load_gguf;
use tgrpo_policy::{
    Family, GenerationRequest, LoadOptions, LoraAdapter, LoraConfig, LoraInit, Model, ModelConfig,
    SamplingParams, tiny,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// candle-transformers' f32 model from our (already HF-layout) weights.
enum Reference {
    Qwen2(qwen2::ModelForCausalLM),
    Llama(llama::Llama, llama::Cache),
}

impl Reference {
    fn new(model: &Model) -> Reference {
        let cfg = model.config();
        let weights = model.named_weights().into_iter().collect();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        match cfg.family {
            Family::Qwen2 => {
                let c = qwen2::Config {
                    vocab_size: cfg.vocab_size,
                    hidden_size: cfg.hidden_size,
                    intermediate_size: cfg.intermediate_size,
                    num_hidden_layers: cfg.num_hidden_layers,
                    num_attention_heads: cfg.num_attention_heads,
                    num_key_value_heads: cfg.num_key_value_heads,
                    max_position_embeddings: cfg.max_position_embeddings.min(4096),
                    sliding_window: cfg.max_position_embeddings,
                    max_window_layers: cfg.num_hidden_layers,
                    tie_word_embeddings: cfg.tie_word_embeddings,
                    rope_theta: cfg.rope_theta,
                    rms_norm_eps: cfg.rms_norm_eps,
                    use_sliding_window: false,
                    hidden_act: candle_nn::Activation::Silu,
                };
                Reference::Qwen2(qwen2::ModelForCausalLM::new(&c, vb).unwrap())
            }
            Family::Llama => {
                let c = llama::Config {
                    hidden_size: cfg.hidden_size,
                    intermediate_size: cfg.intermediate_size,
                    vocab_size: cfg.vocab_size,
                    num_hidden_layers: cfg.num_hidden_layers,
                    num_attention_heads: cfg.num_attention_heads,
                    num_key_value_heads: cfg.num_key_value_heads,
                    use_flash_attn: false,
                    rms_norm_eps: cfg.rms_norm_eps,
                    rope_theta: cfg.rope_theta as f32,
                    bos_token_id: None,
                    eos_token_id: None,
                    rope_scaling: None,
                    max_position_embeddings: cfg.max_position_embeddings.min(4096),
                    tie_word_embeddings: cfg.tie_word_embeddings,
                };
                let cache = llama::Cache::new(true, DType::F32, &c, &Device::Cpu).unwrap();
                Reference::Llama(llama::Llama::load(vb, &c).unwrap(), cache)
            }
        }
    }

    /// Batch-1 generation of `new_tokens` tokens after `prompt`; returns (end-to-end
    /// tokens/s, decode-only tokens/s).
    fn generate(&mut self, cfg: &ModelConfig, prompt: &[u32], new_tokens: usize) -> (f64, f64) {
        let mut sampler = LogitsProcessor::new(1, Some(1.0), None);
        let start = Instant::now();
        let mut tokens = prompt.to_vec();
        let mut pos = 0;
        if let Reference::Llama(_, cache) = self {
            *cache = llama::Cache::new(true, DType::F32, &llama_cfg(cfg), &Device::Cpu).unwrap();
        }
        if let Reference::Qwen2(m) = self {
            m.clear_kv_cache();
        }
        let mut decode_start = Instant::now();
        for step in 0..new_tokens {
            if step == 1 {
                decode_start = Instant::now();
            }
            let input = Tensor::new(&tokens[pos..], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits = match self {
                Reference::Qwen2(m) => m.forward(&input, pos).unwrap(),
                Reference::Llama(m, cache) => m.forward(&input, pos, cache).unwrap(),
            };
            let logits = logits.flatten_all().unwrap();
            pos = tokens.len();
            tokens.push(sampler.sample(&logits).unwrap());
        }
        (
            new_tokens as f64 / start.elapsed().as_secs_f64(),
            (new_tokens - 1) as f64 / decode_start.elapsed().as_secs_f64(),
        )
    }
}

fn llama_cfg(cfg: &ModelConfig) -> llama::Config {
    llama::Config {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        vocab_size: cfg.vocab_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: cfg.max_position_embeddings.min(4096),
        tie_word_embeddings: cfg.tie_word_embeddings,
    }
}

/// candle-transformers' quantized model on the GGUF itself (for scale: not the same precision).
fn quantized_reference(
    path: &PathBuf,
    family: Family,
    prompt: &[u32],
    new_tokens: usize,
) -> (f64, f64) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut sampler = LogitsProcessor::new(1, Some(1.0), None);
    let mut tokens = prompt.to_vec();
    let mut pos = 0;
    let start;
    let mut decode_start = None;
    match family {
        Family::Qwen2 => {
            let mut m =
                quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
            start = Instant::now();
            for step in 0..new_tokens {
                if step == 1 {
                    decode_start = Some(Instant::now());
                }
                let input = Tensor::new(&tokens[pos..], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let logits = m.forward(&input, pos).unwrap().flatten_all().unwrap();
                pos = tokens.len();
                tokens.push(sampler.sample(&logits).unwrap());
            }
        }
        Family::Llama => {
            let mut m =
                quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
            start = Instant::now();
            for step in 0..new_tokens {
                if step == 1 {
                    decode_start = Some(Instant::now());
                }
                let input = Tensor::new(&tokens[pos..], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let logits = m.forward(&input, pos).unwrap().flatten_all().unwrap();
                pos = tokens.len();
                tokens.push(sampler.sample(&logits).unwrap());
            }
        }
    }
    let decode = decode_start
        .map(|d| (new_tokens - 1) as f64 / d.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    (new_tokens as f64 / start.elapsed().as_secs_f64(), decode)
}

/// Our sampler on `batch` distinct prompts: (end-to-end tokens/s, decode-only tokens/s).
fn ours(
    model: &Model,
    adapter: Option<&LoraAdapter>,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
) -> (f64, f64) {
    let vocab = model.config().vocab_size as u32;
    let requests: Vec<GenerationRequest> = (0..batch)
        .map(|b| GenerationRequest {
            // Distinct prompts (no shared prefill), all of the same length.
            prompt: (0..prompt_len)
                .map(|i| ((i * 31 + b * 997 + 7) as u32) % vocab)
                .collect(),
            params: SamplingParams {
                max_new_tokens: new_tokens,
                seed: b as u64,
                ignore_eos: true,
                ..Default::default()
            },
        })
        .collect();
    let start = Instant::now();
    let (out, stats) = model
        .generate_with_stats(&requests, adapter, None, &[])
        .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let total: usize = out.iter().map(|g| g.tokens.len()).sum();
    (
        total as f64 / elapsed,
        stats.decode_row_steps as f64 / stats.decode_secs,
    )
}

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore arguments.
    let models = std::env::var("TGRPO_BENCH_MODELS").unwrap_or_else(|_| "tiny,smollm2,qwen".into());
    let new_tokens = env_usize("TGRPO_BENCH_NEW_TOKENS", 64);
    let prompt_len = env_usize("TGRPO_BENCH_PROMPT", 32);
    let rounds = env_usize("TGRPO_BENCH_ROUNDS", 2);
    let batches: Vec<usize> = std::env::var("TGRPO_BENCH_BATCHES")
        .ok()
        .map(|s| s.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32]);
    let home = std::env::var("HOME").unwrap_or_default();
    let dir = PathBuf::from(home).join(".cache/tgrpo-models");
    println!(
        "sampling benchmark: prompt {prompt_len} tokens, {new_tokens} new tokens, f32 CPU, LoRA r=64 on all 7 projections"
    );
    println!("tokens/s as end-to-end (prefill included) / decode only; ratios on decode tokens/s");
    println!(
        "| model | ours B=1 | ours B=8 | ours B=32 | reference B=1 | ours/ref B=1 | B=8 / B=1 | ours B=1, no LoRA | candle quantized B=1 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for name in models.split(',') {
        let (model, gguf) = match name {
            "tiny" => (
                tiny::model(Family::Qwen2, 0, &Device::Cpu, DType::F32).unwrap(),
                None,
            ),
            "smollm2" | "qwen" => {
                let file = if name == "qwen" {
                    "qwen2.5-coder-0.5b-instruct-q4km.gguf"
                } else {
                    "SmolLM2-135M-Instruct.Q4_1.gguf"
                };
                let path = dir.join(file);
                if !path.is_file() {
                    println!(
                        "| {name} | skipped: {} absent (run ../shared/tools/real-models.sh) ||||||||",
                        path.display()
                    );
                    continue;
                }
                (
                    load_gguf(&path, &LoadOptions::default()).unwrap().0,
                    Some(path),
                )
            }
            other => {
                println!("| {other} | unknown model (tiny, smollm2, qwen) ||||||||");
                continue;
            }
        };
        let lora = LoraConfig {
            r: 64,
            alpha: 128.0,
            ..Default::default()
        };
        let adapter = LoraAdapter::init(
            model.config(),
            &lora,
            LoraInit::Random { bound: 0.01 },
            0,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        // Warm-up (allocations, thread pools).
        ours(&model, Some(&adapter), 1, prompt_len, 4);
        let mut reference = Reference::new(&model);
        let prompt: Vec<u32> = (0..prompt_len as u32)
            .map(|i| (i * 31 + 7) % model.config().vocab_size as u32)
            .collect();
        reference.generate(model.config(), &prompt, 4);
        // Batch 1, ours and the reference interleaved, best of `rounds`: the machine is
        // shared, and interleaving exposes both to the same background load.
        let best = |a: (f64, f64), b: (f64, f64)| (a.0.max(b.0), a.1.max(b.1));
        let (mut ours_1, mut ref_1, mut plain_1) = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0));
        for _ in 0..rounds {
            ours_1 = best(
                ours_1,
                ours(&model, Some(&adapter), 1, prompt_len, new_tokens),
            );
            ref_1 = best(
                ref_1,
                reference.generate(model.config(), &prompt, new_tokens),
            );
            plain_1 = best(plain_1, ours(&model, None, 1, prompt_len, new_tokens));
        }
        let mut rates = vec![(1, ours_1)];
        for &b in batches.iter().filter(|&&b| b != 1) {
            rates.push((b, ours(&model, Some(&adapter), b, prompt_len, new_tokens)));
        }
        let quant = gguf
            .as_ref()
            .map(|p| quantized_reference(p, model.config().family, &prompt, new_tokens));
        let cell = |b: usize| {
            rates
                .iter()
                .find(|(x, _)| *x == b)
                .map(|(_, (e2e, dec))| format!("{e2e:.1} / {dec:.1}"))
                .unwrap_or_else(|| "-".into())
        };
        let decode = |b: usize| rates.iter().find(|(x, _)| *x == b).map(|(_, r)| r.1);
        let ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "| {name} | {} | {} | {} | {:.1} / {:.1} | {} | {} | {:.1} / {:.1} | {} |",
            cell(1),
            cell(8),
            cell(32),
            ref_1.0,
            ref_1.1,
            ratio(Some(ours_1.1 / ref_1.1)),
            ratio(decode(8).map(|d8| d8 / ours_1.1)),
            plain_1.0,
            plain_1.1,
            quant
                .map(|q| format!("{:.1} / {:.1}", q.0, q.1))
                .unwrap_or_else(|| "-".into()),
        );
    }
}
