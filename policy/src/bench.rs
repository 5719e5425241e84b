//! The sampling benchmark behind `tgrpo bench sample` (and `cargo bench --bench sample`).
//!
//! For one model it measures our batched sampler (LoRA r=64 on all seven projections, so
//! the adapter costs what it costs in a rollout worker) at several batch sizes, and in the
//! same process candle-transformers' own model generating from the same weights at the
//! same precision (f32 on the CPU) at batch 1. Batch 1 is measured interleaved with the
//! reference, best of `rounds`, so both see the same background load on a shared machine.
//! For scale it also runs candle-transformers' quantized model on the GGUF itself (not the
//! same precision: it reads 4-5 bits per weight where we read 32).
//!
//! Rates are tokens/s, end to end (prefill included) and decode only; the two targets are
//! on decode rates: batch-8 aggregate ≥ 4× batch 1, and our batch 1 ≥ 0.8× the reference.
//! Performance is measured here and never in timed tests.

use crate::config::{Family, ModelConfig};
use crate::error::{CandleContext, PolicyError, Result};
use crate::loading::model_from_tensors;
use crate::loading::{LoadOptions, load_gguf};
use crate::lora::{LoraAdapter, LoraConfig, LoraInit};
use crate::model::{ForwardMode, Model};
use crate::sampling::{GenerationRequest, SamplingParams};
use crate::shapes::ModelShape;
use crate::tiny;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A model the benchmark knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchModel {
    /// Seeded random weights of a shape (no file needed): `tiny` for a quick run,
    /// `qwen2.5-1.5b` for the production policy's shape on a GPU.
    Random(ModelShape),
    /// `SmolLM2-135M-Instruct.Q4_1.gguf` (Llama family).
    Smollm2,
    /// `qwen2.5-coder-0.5b-instruct-q4km.gguf` (Qwen2, the production family).
    Qwen,
}

impl BenchModel {
    /// Parses `smollm2` or `qwen` (the real GGUFs), else a random shape's name (`tiny`,
    /// `smollm2-135m`, `qwen2.5-1.5b`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "smollm2" => Some(Self::Smollm2),
            "qwen" | "qwen2.5-coder-0.5b" => Some(Self::Qwen),
            other => ModelShape::parse(other).map(Self::Random),
        }
    }

    /// The name it is parsed from.
    pub fn name(self) -> &'static str {
        match self {
            Self::Random(shape) => shape.name(),
            Self::Smollm2 => "smollm2",
            Self::Qwen => "qwen",
        }
    }

    /// The GGUF file name in the models directory (`None` for random weights).
    pub fn gguf_file(self) -> Option<&'static str> {
        match self {
            Self::Random(_) => None,
            Self::Smollm2 => Some("SmolLM2-135M-Instruct.Q4_1.gguf"),
            Self::Qwen => Some("qwen2.5-coder-0.5b-instruct-q4km.gguf"),
        }
    }
}

/// Where `../shared/tools/real-models.sh` puts the real models: `~/.cache/tgrpo-models`.
pub fn default_models_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tgrpo-models")
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct SampleBenchOptions {
    /// Batch sizes of our sampler (batch 1 is always measured: the ratios need it).
    pub batches: Vec<usize>,
    /// Prompt tokens per request (distinct prompts, no shared prefill).
    pub prompt_len: usize,
    /// New tokens per request (EOS ignored, so every row runs to the end).
    pub new_tokens: usize,
    /// Batch-1 rounds (ours and the reference interleaved); the best of each is kept.
    pub rounds: usize,
    /// LoRA rank of the attached adapter (alpha is twice it).
    pub lora_rank: usize,
    /// Directory holding the GGUF files.
    pub models_dir: PathBuf,
    /// Where both models run (the reference too).
    pub device: Device,
    /// Weight and activation dtype of both models (the GGUFs are dequantized to it).
    pub dtype: DType,
}

impl Default for SampleBenchOptions {
    fn default() -> Self {
        Self {
            batches: vec![1, 8, 32],
            prompt_len: 32,
            new_tokens: 64,
            rounds: 2,
            lora_rank: 64,
            models_dir: default_models_dir(),
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// A throughput in tokens/s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    /// All generated tokens over the whole call (prefill included).
    pub end_to_end: f64,
    /// Tokens computed by decode steps over the time spent in them.
    pub decode: f64,
}

impl Rate {
    /// The better of two measurements, field by field.
    fn best(self, other: Rate) -> Rate {
        Rate {
            end_to_end: self.end_to_end.max(other.end_to_end),
            decode: self.decode.max(other.decode),
        }
    }

    /// `end-to-end / decode` with one decimal.
    pub fn cell(&self) -> String {
        format!("{:.1} / {:.1}", self.end_to_end, self.decode)
    }
}

/// One model's results.
#[derive(Debug, Clone)]
pub struct SampleBenchReport {
    /// The model.
    pub model: BenchModel,
    /// Ours with the LoRA adapter, per batch size (ascending, batch 1 first).
    pub ours: Vec<(usize, Rate)>,
    /// candle-transformers' f32 model on the same weights, batch 1.
    pub reference: Rate,
    /// Ours at batch 1 without an adapter (the reference's exact workload).
    pub no_lora: Rate,
    /// candle-transformers' quantized model on the GGUF, batch 1 (GGUF models only).
    pub quantized: Option<Rate>,
    /// Largest |ours − reference| over the next-token logits after the prompt (adapter
    /// off), over the reference's largest |logit|: the two implementations agree on this
    /// device and dtype, not only in speed (bf16 rounding alone gives ~1e-2).
    pub max_logit_diff: f32,
}

impl SampleBenchReport {
    /// Our rate at batch `b`, if measured.
    pub fn ours_at(&self, batch: usize) -> Option<Rate> {
        self.ours.iter().find(|(b, _)| *b == batch).map(|(_, r)| *r)
    }

    /// Our batch-1 decode rate (LoRA on) over the reference's. Target ≥ 0.8.
    pub fn reference_ratio(&self) -> f64 {
        self.ours_at(1).map_or(0.0, |r| r.decode) / self.reference.decode
    }

    /// Our batch-1 decode rate without LoRA over the reference's (the same work).
    pub fn reference_ratio_no_lora(&self) -> f64 {
        self.no_lora.decode / self.reference.decode
    }

    /// Aggregate decode rate at `batch` over batch 1. Target at batch 8: ≥ 4.
    pub fn batch_ratio(&self, batch: usize) -> Option<f64> {
        Some(self.ours_at(batch)?.decode / self.ours_at(1)?.decode)
    }

    /// The header of the markdown table [`SampleBenchReport::table_row`] fills.
    pub fn table_header(batches: &[usize]) -> String {
        let mut head = String::from("| model |");
        for b in batches {
            head.push_str(&format!(" ours B={b} |"));
        }
        head.push_str(" reference B=1 | ours/ref B=1 | ours no LoRA B=1 | no-LoRA/ref |");
        for b in batches.iter().filter(|&&b| b != 1) {
            head.push_str(&format!(" B={b}/B=1 |"));
        }
        head.push_str(" candle quantized B=1 | Δlogit vs ref (max, relative) |");
        let columns = head.matches('|').count() - 1;
        format!("{head}\n{}|", "|---".repeat(columns))
    }

    /// One markdown table row (cells: `end-to-end / decode` tokens/s; ratios on decode).
    pub fn table_row(&self, batches: &[usize]) -> String {
        let mut row = format!("| {} |", self.model.name());
        for &b in batches {
            let cell = self.ours_at(b).map_or("-".into(), |r| r.cell());
            row.push_str(&format!(" {cell} |"));
        }
        row.push_str(&format!(
            " {} | {:.2} | {} | {:.2} |",
            self.reference.cell(),
            self.reference_ratio(),
            self.no_lora.cell(),
            self.reference_ratio_no_lora()
        ));
        for &b in batches.iter().filter(|&&b| b != 1) {
            let ratio = self
                .batch_ratio(b)
                .map_or("-".into(), |r| format!("{r:.2}"));
            row.push_str(&format!(" {ratio} |"));
        }
        let quantized = self.quantized.map_or("-".into(), |r| r.cell());
        row.push_str(&format!(" {quantized} | {:.2e} |", self.max_logit_diff));
        row
    }
}

/// Runs the benchmark on one model. A GGUF model whose file is absent is an I/O error
/// naming the path (callers that want to skip check [`BenchModel::gguf_file`] first).
pub fn bench_sample(model: BenchModel, options: &SampleBenchOptions) -> Result<SampleBenchReport> {
    let device = options.device.clone();
    let load = LoadOptions {
        device: device.clone(),
        dtype: options.dtype,
    };
    let (policy, gguf) = match (model, model.gguf_file()) {
        (BenchModel::Random(shape), _) => {
            let cfg = shape.config();
            let weights = tiny::random_weights(&cfg, 0)?;
            (
                model_from_tensors(&cfg, weights, &load, shape.name())?,
                None,
            )
        }
        (_, None) => unreachable!("a GGUF model names its file"),
        (_, Some(file)) => {
            let path = options.models_dir.join(file);
            if !path.is_file() {
                return Err(PolicyError::io(
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "absent (run ../shared/tools/real-models.sh)",
                    ),
                ));
            }
            (load_gguf(&path, &load)?.0, Some(path))
        }
    };
    let lora = LoraConfig {
        r: options.lora_rank,
        alpha: 2.0 * options.lora_rank as f64,
        ..Default::default()
    };
    let adapter = LoraAdapter::init(
        policy.config(),
        &lora,
        LoraInit::Random { bound: 0.01 },
        0,
        &device,
        // As a rollout worker holds it: installed adapters take the model's dtype.
        options.dtype,
    )?;
    let prompt_len = options.prompt_len.max(1);
    let new_tokens = options.new_tokens.max(2);
    // Warm-up (allocations, thread pools).
    ours(&policy, Some(&adapter), 1, prompt_len, 4)?;
    let mut reference = Reference::new(&policy, options.dtype)?;
    let vocab = policy.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 31 + 7) % vocab)
        .collect();
    reference.generate(&prompt, 4)?;
    let max_logit_diff = {
        let ctx = || "logits against the reference".to_string();
        let tokens = Tensor::new(prompt.as_slice(), &device)
            .and_then(|t| t.unsqueeze(0))
            .ctx(ctx)?;
        let ours = policy.forward(&tokens, None, ForwardMode::Inference)?;
        let ours = ours
            .narrow(1, prompt.len() - 1, 1)
            .and_then(|l| l.flatten_all())
            .ctx(ctx)?;
        let theirs = reference
            .last_logits(&prompt)?
            .to_dtype(DType::F32)
            .ctx(ctx)?;
        let max_abs = |t: &Tensor| {
            t.abs()
                .and_then(|d| d.max_all())
                .and_then(|d| d.to_scalar::<f32>())
        };
        let diff = (ours.to_dtype(DType::F32).ctx(ctx)? - &theirs).ctx(ctx)?;
        max_abs(&diff).ctx(ctx)? / max_abs(&theirs).ctx(ctx)?.max(f32::MIN_POSITIVE)
    };
    let (mut ours_1, mut reference_1, mut plain_1) =
        (Rate::default(), Rate::default(), Rate::default());
    for _ in 0..options.rounds.max(1) {
        ours_1 = ours_1.best(ours(&policy, Some(&adapter), 1, prompt_len, new_tokens)?);
        reference_1 = reference_1.best(reference.generate(&prompt, new_tokens)?);
        plain_1 = plain_1.best(ours(&policy, None, 1, prompt_len, new_tokens)?);
    }
    drop(reference);
    let mut rates = vec![(1, ours_1)];
    let mut batches: Vec<usize> = options.batches.iter().copied().filter(|&b| b > 1).collect();
    batches.sort_unstable();
    batches.dedup();
    for b in batches {
        rates.push((b, ours(&policy, Some(&adapter), b, prompt_len, new_tokens)?));
    }
    let quantized = match &gguf {
        Some(path) => Some(quantized_reference(
            path,
            policy.config().family,
            &prompt,
            new_tokens,
        )?),
        None => None,
    };
    Ok(SampleBenchReport {
        model,
        ours: rates,
        reference: reference_1,
        no_lora: plain_1,
        quantized,
        max_logit_diff,
    })
}

/// Our sampler on `batch` distinct prompts of `prompt_len` tokens.
fn ours(
    model: &Model,
    adapter: Option<&LoraAdapter>,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
) -> Result<Rate> {
    let vocab = model.config().vocab_size as u32;
    let requests: Vec<GenerationRequest> = (0..batch)
        .map(|b| GenerationRequest {
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
    let (out, stats) = model.generate_with_stats(&requests, adapter, None, &[])?;
    let elapsed = start.elapsed().as_secs_f64();
    let total: usize = out.iter().map(|g| g.tokens.len()).sum();
    Ok(Rate {
        end_to_end: total as f64 / elapsed,
        decode: stats.decode_row_steps as f64 / stats.decode_secs,
    })
}

/// candle-transformers' model built from our (HF-layout) weights, same device and dtype.
struct Reference {
    model: ReferenceModel,
    device: Device,
    dtype: DType,
}

enum ReferenceModel {
    Qwen2(Box<qwen2::ModelForCausalLM>),
    Llama(Box<llama::Llama>, llama::Config),
}

impl Reference {
    fn new(model: &Model, dtype: DType) -> Result<Reference> {
        let cfg = model.config();
        let ctx = || "reference model".to_string();
        let weights = model.named_weights().into_iter().collect();
        let vb = VarBuilder::from_tensors(weights, dtype, model.device());
        let reference = match cfg.family {
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
                ReferenceModel::Qwen2(Box::new(qwen2::ModelForCausalLM::new(&c, vb).ctx(ctx)?))
            }
            Family::Llama => {
                let c = llama_config(cfg);
                ReferenceModel::Llama(Box::new(llama::Llama::load(vb, &c).ctx(ctx)?), c)
            }
        };
        Ok(Reference {
            model: reference,
            device: model.device().clone(),
            dtype,
        })
    }

    /// The next-token logits after `prompt` (fresh cache), flattened to `(vocab,)`.
    fn last_logits(&mut self, prompt: &[u32]) -> Result<Tensor> {
        let ctx = || "reference forward".to_string();
        let input = Tensor::new(prompt, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .ctx(ctx)?;
        let logits = match &mut self.model {
            ReferenceModel::Qwen2(m) => {
                m.clear_kv_cache();
                m.forward(&input, 0)
            }
            ReferenceModel::Llama(m, c) => {
                let mut cache = llama::Cache::new(true, self.dtype, c, &self.device).ctx(ctx)?;
                m.forward(&input, 0, &mut cache)
            }
        };
        logits.and_then(|l| l.flatten_all()).ctx(ctx)
    }

    /// Batch-1 generation of `new_tokens` tokens after `prompt` (temperature 1).
    fn generate(&mut self, prompt: &[u32], new_tokens: usize) -> Result<Rate> {
        let ctx = || "reference generation".to_string();
        let mut cache = match &mut self.model {
            ReferenceModel::Llama(_, c) => {
                Some(llama::Cache::new(true, self.dtype, c, &self.device).ctx(ctx)?)
            }
            ReferenceModel::Qwen2(m) => {
                m.clear_kv_cache();
                None
            }
        };
        let device = self.device.clone();
        let model = &mut self.model;
        timed_decode(prompt, new_tokens, &device, ctx, |input, pos| {
            match (&mut *model, cache.as_mut()) {
                (ReferenceModel::Qwen2(m), _) => m.forward(input, pos),
                (ReferenceModel::Llama(m, _), Some(cache)) => m.forward(input, pos, cache),
                (ReferenceModel::Llama(..), None) => {
                    unreachable!("a llama reference has a cache")
                }
            }
        })
    }
}

/// Batch-1 decoding of `new_tokens` tokens after `prompt` with a model's `forward(input,
/// position)` (its own KV cache), sampling at temperature 1: end-to-end and decode-only
/// rates, the way every reference is timed.
fn timed_decode(
    prompt: &[u32],
    new_tokens: usize,
    device: &Device,
    ctx: impl Fn() -> String + Copy,
    mut forward: impl FnMut(&Tensor, usize) -> candle_core::Result<Tensor>,
) -> Result<Rate> {
    let mut sampler = LogitsProcessor::new(1, Some(1.0), None);
    let start = Instant::now();
    let mut decode_start = start;
    let mut tokens = prompt.to_vec();
    let mut pos = 0;
    for step in 0..new_tokens {
        if step == 1 {
            decode_start = Instant::now();
        }
        let input = Tensor::new(&tokens[pos..], device)
            .and_then(|t| t.unsqueeze(0))
            .ctx(ctx)?;
        let logits = forward(&input, pos)
            .and_then(|l| l.flatten_all())
            .ctx(ctx)?;
        pos = tokens.len();
        tokens.push(sampler.sample(&logits).ctx(ctx)?);
    }
    Ok(Rate {
        end_to_end: new_tokens as f64 / start.elapsed().as_secs_f64(),
        decode: (new_tokens - 1) as f64 / decode_start.elapsed().as_secs_f64(),
    })
}

fn llama_config(cfg: &ModelConfig) -> llama::Config {
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

/// candle-transformers' quantized model on the GGUF itself, batch 1.
fn quantized_reference(
    path: &Path,
    family: Family,
    prompt: &[u32],
    new_tokens: usize,
) -> Result<Rate> {
    let source = path.display().to_string();
    let ctx = || format!("{source}: quantized reference");
    let mut file = std::fs::File::open(path).map_err(|e| PolicyError::io(path, e))?;
    let content = gguf_file::Content::read(&mut file).ctx(ctx)?;
    enum Quantized {
        Qwen2(Box<quantized_qwen2::ModelWeights>),
        Llama(Box<quantized_llama::ModelWeights>),
    }
    let mut model = match family {
        Family::Qwen2 => Quantized::Qwen2(Box::new(
            quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).ctx(ctx)?,
        )),
        Family::Llama => Quantized::Llama(Box::new(
            quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).ctx(ctx)?,
        )),
    };
    timed_decode(
        prompt,
        new_tokens,
        &Device::Cpu,
        ctx,
        |input, pos| match &mut model {
            Quantized::Qwen2(m) => m.forward(input, pos),
            Quantized::Llama(m) => m.forward(input, pos),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_table_has_a_cell_per_column() {
        for model in [
            BenchModel::Random(ModelShape::Tiny),
            BenchModel::Random(ModelShape::Qwen25_1_5b),
            BenchModel::Smollm2,
            BenchModel::Qwen,
        ] {
            assert_eq!(BenchModel::parse(model.name()), Some(model));
        }
        assert_eq!(BenchModel::parse("gpt2"), None);
        let rate = |decode: f64| Rate {
            end_to_end: decode / 2.0,
            decode,
        };
        let report = SampleBenchReport {
            model: BenchModel::Random(ModelShape::Tiny),
            ours: vec![(1, rate(10.0)), (8, rate(50.0))],
            reference: rate(8.0),
            no_lora: rate(12.0),
            quantized: None,
            max_logit_diff: 1e-5,
        };
        assert_eq!(report.reference_ratio(), 1.25);
        assert_eq!(report.reference_ratio_no_lora(), 1.5);
        assert_eq!(report.batch_ratio(8), Some(5.0));
        assert_eq!(report.batch_ratio(32), None);
        let batches = [1, 8, 32];
        let header = SampleBenchReport::table_header(&batches);
        let row = report.table_row(&batches);
        let cells = |line: &str| line.matches('|').count();
        assert_eq!(cells(header.lines().next().unwrap()), cells(&row));
        assert_eq!(cells(header.lines().nth(1).unwrap()), cells(&row));
        assert!(
            row.contains("| 1.25 |") && row.contains("| 5.00 |"),
            "{row}"
        );
    }

    #[test]
    fn an_absent_gguf_is_an_error_naming_the_file() {
        let options = SampleBenchOptions {
            models_dir: PathBuf::from("/nonexistent-tgrpo-models"),
            ..Default::default()
        };
        let err = bench_sample(BenchModel::Qwen, &options)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent-tgrpo-models/qwen2.5-coder"),
            "{err}"
        );
    }
}
