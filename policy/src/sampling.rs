//! Batched generation with a KV cache: temperature, top-k, top-p, a per-request seed, stop
//! on EOS tokens or stop strings per sequence, and the behaviour log-prob of every sampled
//! token under the distribution it was sampled from.
//!
//! How a batch runs:
//! 1. Each distinct prompt is prefilled once on its own (GRPO samples G completions of the
//!    same prompt: G-1 prefills are saved), so a row's prompt pass never depends on what
//!    else is in the batch.
//! 2. The per-row caches are copied into one left-padded batch cache; decode steps run all
//!    live rows together with per-row RoPE positions and a padding mask.
//! 3. A finished row leaves the batch at once (the cache is compacted, and columns that are
//!    padding in every remaining row are dropped), so it costs no more compute.
//!
//! Each request draws from its own ChaCha8 stream seeded with its `seed`, one draw per
//! token, so the same request gives the same output whatever else shares its batch (up to
//! floating-point differences in batched matmuls, which almost never flip a sample).

use crate::error::{CandleContext, PolicyError, Result};
use crate::lora::LoraAdapter;
use crate::model::{ForwardMode, KvCache, Model, Pass, Positions, causal_mask};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Turns token ids into text (for stop strings and the returned text). Implemented for
/// `tokenizers::Tokenizer` and for the crate's own tokenizer.
pub trait TextDecoder: Send + Sync {
    /// Decodes `ids`, skipping special tokens.
    fn decode_text(&self, ids: &[u32]) -> Result<String>;
}

impl TextDecoder for tokenizers::Tokenizer {
    fn decode_text(&self, ids: &[u32]) -> Result<String> {
        self.decode(ids, true)
            .map_err(|e| PolicyError::Tokenizer(e.to_string()))
    }
}

/// Per-request sampling settings (vLLM/HF semantics, applied in the order temperature →
/// top-k → top-p).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// 0 means greedy (then every behaviour log-prob is 0: the choice was certain).
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables.
    pub top_p: f64,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Generation budget; the row finishes with [`FinishReason::Length`] when reached.
    pub max_new_tokens: usize,
    /// Seed of this request's sampling stream.
    pub seed: u64,
    /// Stop strings: the row finishes when its decoded text contains one; the returned
    /// text is cut before it, the tokens keep the token that completed it.
    pub stop: Vec<String>,
    /// Extra token ids that end the row like EOS (added to the model's EOS ids).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past EOS tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            seed: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with a token budget.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_new_tokens,
            ..Default::default()
        }
    }

    fn validate(&self, index: usize) -> Result<()> {
        let bad = |message: String| Err(PolicyError::Request { index, message });
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature {} is not a finite non-negative number",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} is not in (0, 1]", self.top_p));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens is 0".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("an empty stop string".into());
        }
        Ok(())
    }
}

/// One prompt to continue.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// Prompt token ids (already chat-templated).
    pub prompt: Vec<u32>,
    /// How to sample.
    pub params: SamplingParams,
}

/// Why a row stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An EOS (or `stop_token_ids`) token was sampled; it is the last token.
    Eos,
    /// The decoded text contains this stop string.
    Stop(String),
    /// `max_new_tokens` reached.
    Length,
}

impl FinishReason {
    /// `"eos"`, `"stop"` or `"length"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop(_) => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One finished row.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Sampled tokens (the EOS token included when that ended the row).
    pub tokens: Vec<u32>,
    /// Decoded text without special tokens, cut before a matched stop string (empty when
    /// no decoder was given).
    pub text: String,
    /// Per token: log-prob under the sampling distribution (after temperature, top-k and
    /// top-p); without truncation, equal to [`Model::score`]'s at the same temperature.
    pub logprobs: Vec<f32>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
}

/// Picks the next token from one row's logits; returns `(token, behaviour log-prob)`.
pub fn sample_token(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> (u32, f32) {
    if params.temperature == 0.0 {
        let mut best = 0usize;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return (best as u32, 0.0);
    }
    let inv_t = 1.0 / params.temperature;
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if params.top_k > 0 && params.top_k < candidates.len() {
        candidates.select_nth_unstable_by(params.top_k - 1, desc);
        candidates.truncate(params.top_k);
    }
    let max = candidates
        .iter()
        .map(|c| c.1)
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    // Unnormalised probabilities in f64: exp((l - max) / T).
    let mut weighted: Vec<(u32, f64)> = candidates
        .iter()
        .map(|&(i, l)| (i, ((l as f64 - max) * inv_t).exp()))
        .collect();
    let total: f64 = weighted.iter().map(|w| w.1).sum();
    if params.top_p < 1.0 {
        // The nucleus is the shortest most-likely prefix with mass ≥ top_p. Tokens below a
        // small threshold can only be in it if the tokens above it do not reach top_p, so
        // sort just those first and fall back to a full sort when they fall short.
        let threshold = total * 1e-6;
        let mut head: Vec<(u32, f64)> = weighted
            .iter()
            .copied()
            .filter(|w| w.1 >= threshold)
            .collect();
        let head_mass: f64 = head.iter().map(|w| w.1).sum();
        if head_mass < params.top_p * total {
            head = weighted.clone();
        }
        head.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut cumulative = 0.0;
        let mut keep = head.len();
        for (n, w) in head.iter().enumerate() {
            cumulative += w.1;
            if cumulative >= params.top_p * total {
                keep = n + 1;
                break;
            }
        }
        head.truncate(keep);
        weighted = head;
    }
    let mass: f64 = weighted.iter().map(|w| w.1).sum();
    let u = rng.random::<f64>() * mass;
    let mut cumulative = 0.0;
    let mut chosen = weighted[weighted.len() - 1];
    for &w in &weighted {
        cumulative += w.1;
        if u < cumulative {
            chosen = w;
            break;
        }
    }
    (chosen.0, (chosen.1 / mass).ln() as f32)
}

/// A row being generated.
struct Row {
    request: usize,
    pad: usize,
    rng: ChaCha8Rng,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    finished: Option<(FinishReason, String)>,
}

/// Where a [`Model::generate_with_stats`] call spent its time (for metrics and benchmarks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    /// Distinct prompts prefilled (repeated prompts share one prefill).
    pub prefills: usize,
    /// Prompt tokens run through prefill.
    pub prefill_tokens: usize,
    /// Seconds spent prefilling.
    pub prefill_secs: f64,
    /// Batched decode steps.
    pub decode_steps: usize,
    /// Rows summed over decode steps: finished rows leave the batch, so this is the number
    /// of tokens the decode steps computed (tokens generated minus one per request).
    pub decode_row_steps: usize,
    /// Seconds spent in decode steps (forward, sampling, stop checks, cache compaction).
    pub decode_secs: f64,
}

impl Model {
    /// Generates continuations for a batch of requests; results come back in request
    /// order. `eos_token_ids` end any row (plus each request's `stop_token_ids`); `decoder`
    /// produces the text and is required when a request has stop strings.
    pub fn generate(
        &self,
        requests: &[GenerationRequest],
        adapter: Option<&LoraAdapter>,
        decoder: Option<&dyn TextDecoder>,
        eos_token_ids: &[u32],
    ) -> Result<Vec<Generation>> {
        Ok(self
            .generate_with_stats(requests, adapter, decoder, eos_token_ids)?
            .0)
    }

    /// [`Model::generate`], also returning where the time went.
    pub fn generate_with_stats(
        &self,
        requests: &[GenerationRequest],
        adapter: Option<&LoraAdapter>,
        decoder: Option<&dyn TextDecoder>,
        eos_token_ids: &[u32],
    ) -> Result<(Vec<Generation>, GenerationStats)> {
        let mut stats = GenerationStats::default();
        let cfg = self.config();
        let device = self.device().clone();
        for (index, req) in requests.iter().enumerate() {
            req.params.validate(index)?;
            let bad = |message: String| Err(PolicyError::Request { index, message });
            if req.prompt.is_empty() {
                return bad("empty prompt".into());
            }
            if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return bad(format!(
                    "prompt token {t} is outside the vocabulary ({})",
                    cfg.vocab_size
                ));
            }
            if req.prompt.len() + req.params.max_new_tokens > cfg.max_position_embeddings {
                return bad(format!(
                    "prompt {} + max_new_tokens {} exceed max_position_embeddings {}",
                    req.prompt.len(),
                    req.params.max_new_tokens,
                    cfg.max_position_embeddings
                ));
            }
            if !req.params.stop.is_empty() && decoder.is_none() {
                return bad("stop strings need a tokenizer to decode with".into());
            }
        }
        if requests.is_empty() {
            return Ok((Vec::new(), stats));
        }
        let ctx = || "generate".to_string();

        // 1. Prefill each distinct prompt once.
        let prefill_start = std::time::Instant::now();
        let mut unique: HashMap<&[u32], usize> = HashMap::new();
        let mut prefills: Vec<(KvCache, Vec<f32>)> = Vec::new();
        let mut prefill_of = Vec::with_capacity(requests.len());
        for req in requests {
            let slot = match unique.get(req.prompt.as_slice()) {
                Some(&slot) => slot,
                None => {
                    let slot = prefills.len();
                    prefills.push(self.prefill(&req.prompt, adapter)?);
                    stats.prefills += 1;
                    stats.prefill_tokens += req.prompt.len();
                    unique.insert(&req.prompt, slot);
                    slot
                }
            };
            prefill_of.push(slot);
        }

        stats.prefill_secs = prefill_start.elapsed().as_secs_f64();

        // 2. Assemble the left-padded batch cache.
        let decode_start = std::time::Instant::now();
        let max_prompt = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let max_new = requests
            .iter()
            .map(|r| r.params.max_new_tokens)
            .max()
            .unwrap_or(0);
        let mut cache = KvCache::new(
            cfg,
            requests.len(),
            max_prompt + max_new,
            self.dtype(),
            &device,
        )
        .ctx(ctx)?;
        cache.advance(max_prompt);
        for (row, &slot) in prefill_of.iter().enumerate() {
            cache.write_row(row, &prefills[slot].0).ctx(ctx)?;
        }

        let mut rows: Vec<Row> = requests
            .iter()
            .enumerate()
            .map(|(i, req)| Row {
                request: i,
                pad: max_prompt - req.prompt.len(),
                rng: ChaCha8Rng::seed_from_u64(req.params.seed),
                tokens: Vec::with_capacity(req.params.max_new_tokens),
                logprobs: Vec::with_capacity(req.params.max_new_tokens),
                finished: None,
            })
            .collect();
        let mut done: Vec<Option<Generation>> = vec![None; requests.len()];

        // First token of every row from its prompt's last logits.
        for row in rows.iter_mut() {
            let logits = &prefills[prefill_of[row.request]].1;
            push_token(row, logits, &requests[row.request], decoder, eos_token_ids)?;
        }
        drop(prefills);

        // 3. Decode steps over the live rows (kept in cache-row order).
        loop {
            let before = rows.len();
            let mut keep = Vec::with_capacity(before);
            let mut live = Vec::with_capacity(before);
            for (i, row) in rows.into_iter().enumerate() {
                match row.finished {
                    Some((finish_reason, text)) => {
                        done[row.request] = Some(Generation {
                            tokens: row.tokens,
                            text,
                            logprobs: row.logprobs,
                            finish_reason,
                        });
                    }
                    None => {
                        keep.push(i as u32);
                        live.push(row);
                    }
                }
            }
            rows = live;
            if rows.is_empty() {
                break;
            }
            let drop_front = rows.iter().map(|r| r.pad).min().unwrap_or(0);
            if rows.len() < before || drop_front > 0 {
                cache.compact(&keep, drop_front).ctx(ctx)?;
                for row in rows.iter_mut() {
                    row.pad -= drop_front;
                }
            }
            stats.decode_steps += 1;
            stats.decode_row_steps += rows.len();
            let logits = self.decode_step(&rows, &mut cache, adapter)?;
            for (row, logits) in rows.iter_mut().zip(logits) {
                let request = &requests[row.request];
                push_token(row, &logits, request, decoder, eos_token_ids)?;
            }
        }
        stats.decode_secs = decode_start.elapsed().as_secs_f64();
        tracing::debug!(
            requests = requests.len(),
            prefills = stats.prefills,
            prefill_tokens = stats.prefill_tokens,
            prefill_secs = stats.prefill_secs,
            decode_steps = stats.decode_steps,
            decode_row_steps = stats.decode_row_steps,
            decode_secs = stats.decode_secs,
            "generated"
        );
        let generations = done
            .into_iter()
            .map(|g| g.expect("every row finished"))
            .collect();
        Ok((generations, stats))
    }

    /// Runs one prompt alone; returns its cache and the logits after its last token.
    fn prefill(
        &self,
        prompt: &[u32],
        adapter: Option<&LoraAdapter>,
    ) -> Result<(KvCache, Vec<f32>)> {
        let ctx = || format!("prefill of a {}-token prompt", prompt.len());
        let len = prompt.len();
        let mut cache =
            KvCache::new(self.config(), 1, len, self.dtype(), self.device()).ctx(ctx)?;
        let tokens = Tensor::from_slice(prompt, (1, len), self.device()).ctx(ctx)?;
        let mask = if len > 1 {
            Some(causal_mask(len, 0, self.dtype(), self.device()).ctx(ctx)?)
        } else {
            None
        };
        let mut pass = Pass::new(adapter, ForwardMode::Inference);
        let hidden = self
            .forward_hidden(
                &tokens,
                &Positions::Offset(0),
                mask.as_ref(),
                Some(&mut cache),
                &mut pass,
            )
            .and_then(|h| h.narrow(1, len - 1, 1))
            .ctx(ctx)?;
        let logits = self
            .lm_head_inference(&hidden)?
            .to_dtype(DType::F32)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1::<f32>())
            .ctx(ctx)?;
        Ok((cache, logits))
    }

    /// One batched decode step: feeds each row's last token, returns each row's logits.
    fn decode_step(
        &self,
        rows: &[Row],
        cache: &mut KvCache,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<Vec<f32>>> {
        let ctx = || format!("decode step for {} rows", rows.len());
        let device = self.device();
        let b_sz = rows.len();
        let kv_len = cache.len() + 1;
        let last: Vec<u32> = rows
            .iter()
            .map(|r| *r.tokens.last().expect("a row has a first token"))
            .collect();
        let positions: Vec<u32> = rows.iter().map(|r| (cache.len() - r.pad) as u32).collect();
        let tokens = Tensor::from_vec(last, (b_sz, 1), device).ctx(ctx)?;
        let positions = Tensor::from_vec(positions, (b_sz, 1), device).ctx(ctx)?;
        let mask = if rows.iter().any(|r| r.pad > 0) {
            let mut values = vec![0f32; b_sz * kv_len];
            for (b, row) in rows.iter().enumerate() {
                values[b * kv_len..b * kv_len + row.pad].fill(f32::NEG_INFINITY);
            }
            Some(
                Tensor::from_vec(values, (b_sz, 1, 1, 1, kv_len), device)
                    .and_then(|m| m.to_dtype(self.dtype()))
                    .ctx(ctx)?,
            )
        } else {
            None
        };
        let mut pass = Pass::new(adapter, ForwardMode::Inference);
        let hidden = self
            .forward_hidden(
                &tokens,
                &Positions::PerRow(&positions),
                mask.as_ref(),
                Some(cache),
                &mut pass,
            )
            .and_then(|h| h.squeeze(1))
            .ctx(ctx)?;
        self.lm_head_inference(&hidden)?
            .to_dtype(DType::F32)
            .and_then(|l| l.to_vec2::<f32>())
            .ctx(ctx)
    }
}

/// Samples a row's next token and decides whether the row is finished.
fn push_token(
    row: &mut Row,
    logits: &[f32],
    request: &GenerationRequest,
    decoder: Option<&dyn TextDecoder>,
    eos_token_ids: &[u32],
) -> Result<()> {
    let params = &request.params;
    let (token, logprob) = sample_token(logits, params, &mut row.rng);
    row.tokens.push(token);
    row.logprobs.push(logprob);
    let decode = |tokens: &[u32]| -> Result<String> {
        match decoder {
            Some(d) => d.decode_text(tokens),
            None => Ok(String::new()),
        }
    };
    let is_eos = (!params.ignore_eos && eos_token_ids.contains(&token))
        || params.stop_token_ids.contains(&token);
    if is_eos {
        row.finished = Some((FinishReason::Eos, decode(&row.tokens)?));
        return Ok(());
    }
    if !params.stop.is_empty() {
        let text = decode(&row.tokens)?;
        let earliest = params
            .stop
            .iter()
            .filter_map(|stop| text.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = earliest {
            row.finished = Some((FinishReason::Stop(stop.clone()), text[..at].to_string()));
            return Ok(());
        }
        if row.tokens.len() >= params.max_new_tokens {
            row.finished = Some((FinishReason::Length, text));
        }
        return Ok(());
    }
    if row.tokens.len() >= params.max_new_tokens {
        row.finished = Some((FinishReason::Length, decode(&row.tokens)?));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(
        logits: &[f32],
        params: &SamplingParams,
        draws: usize,
    ) -> (Vec<f64>, HashMap<u32, f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let mut counts = vec![0f64; logits.len()];
        let mut logprobs = HashMap::new();
        for _ in 0..draws {
            let (token, lp) = sample_token(logits, params, &mut rng);
            counts[token as usize] += 1.0 / draws as f64;
            logprobs.insert(token, lp);
        }
        (counts, logprobs)
    }

    fn softmax(logits: &[f64]) -> Vec<f64> {
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let z: f64 = exp.iter().sum();
        exp.iter().map(|e| e / z).collect()
    }

    const LOGITS: [f32; 6] = [2.0, 1.0, 0.5, 0.0, -1.0, 3.0];

    #[test]
    fn temperature_sampling_matches_the_tempered_softmax() {
        let params = SamplingParams {
            temperature: 0.7,
            seed: 1,
            ..Default::default()
        };
        let expected = softmax(&LOGITS.iter().map(|&l| l as f64 / 0.7).collect::<Vec<_>>());
        let (freq, logprobs) = frequencies(&LOGITS, &params, 40_000);
        for (i, (f, p)) in freq.iter().zip(&expected).enumerate() {
            assert!(
                (f - p).abs() < 0.01,
                "token {i}: frequency {f}, probability {p}"
            );
            if let Some(lp) = logprobs.get(&(i as u32)) {
                assert!((*lp as f64 - p.ln()).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn top_k_and_top_p_truncate_and_renormalise() {
        // top-k 3 keeps tokens 5, 0, 1.
        let params = SamplingParams {
            top_k: 3,
            seed: 2,
            ..Default::default()
        };
        let kept = softmax(&[3.0, 2.0, 1.0]);
        let (freq, logprobs) = frequencies(&LOGITS, &params, 40_000);
        for (token, p) in [(5u32, kept[0]), (0, kept[1]), (1, kept[2])] {
            assert!((freq[token as usize] - p).abs() < 0.01);
            assert!((logprobs[&token] as f64 - p.ln()).abs() < 1e-5);
        }
        assert_eq!(freq[2] + freq[3] + freq[4], 0.0);
        // top-p: full probabilities are ~[0.23, 0.08, 0.05, 0.03, 0.01, 0.62]; 0.8 keeps
        // 5 and 0 (0.85 ≥ 0.8), nothing else.
        let full = softmax(&LOGITS.iter().map(|&l| l as f64).collect::<Vec<_>>());
        let params = SamplingParams {
            top_p: 0.8,
            seed: 3,
            ..Default::default()
        };
        let (freq, logprobs) = frequencies(&LOGITS, &params, 40_000);
        let mass = full[5] + full[0];
        assert!((freq[5] - full[5] / mass).abs() < 0.01);
        assert!((freq[0] - full[0] / mass).abs() < 0.01);
        assert!((logprobs[&5] as f64 - (full[5] / mass).ln()).abs() < 1e-5);
        assert_eq!(freq[1] + freq[2] + freq[3] + freq[4], 0.0);
    }

    #[test]
    fn top_p_over_a_large_flat_vocabulary_falls_back_to_a_full_sort() {
        // 10k equal logits: the threshold prefilter keeps all of them and the nucleus is
        // the first 90% by (probability, id) order, i.e. ids 0..9000.
        let logits = vec![0f32; 10_000];
        let params = SamplingParams {
            top_p: 0.9,
            seed: 4,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..2000 {
            let (token, lp) = sample_token(&logits, &params, &mut rng);
            assert!(token < 9000);
            assert!((lp as f64 - (1.0f64 / 9000.0).ln()).abs() < 1e-4);
        }
    }

    #[test]
    fn greedy_picks_the_first_maximum() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            sample_token(&[1.0, 3.0, 3.0, 2.0], &SamplingParams::greedy(1), &mut rng),
            (1, 0.0)
        );
    }
}
