//! Batched scoring: per-token log-probs (and entropy) of given token sequences — the
//! learner's forward pass, and the reference policy's when called with no adapter.
//!
//! Padding is on the **right**: every row starts at position 0 and causal attention alone
//! keeps real tokens from seeing the padding after them, so no padding mask or position
//! shift is needed (and positions equal those of the unpadded sequence, which is what the
//! sampler used). Only the scored positions go through the LM head, so a long prompt costs
//! decoder compute but no vocabulary-sized activations.

use crate::error::{CandleContext, PolicyError, Result};
use crate::lora::LoraAdapter;
use crate::model::{ForwardMode, Model, Pass, Positions, causal_mask};
use candle_core::{D, DType, Tensor};

/// One sequence to score: `tokens[score_from..]` get log-probs, each conditioned on all
/// tokens before it (typically `score_from` = prompt length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreSequence {
    /// Prompt and completion tokens.
    pub tokens: Vec<u32>,
    /// Index of the first scored token; at least 1 (token 0 has no context).
    pub score_from: usize,
}

/// The result of [`Model::score`]: row `b`, column `j` is about token
/// `tokens[score_from + j]` of sequence `b`; columns past the row's scored count are padding
/// (mask 0, log-prob 0).
#[derive(Debug, Clone)]
pub struct Scores {
    /// `(B, C)` log-probs (f32; f64 for f64 models), differentiable w.r.t. the adapter in train mode.
    pub logprobs: Tensor,
    /// `(B, C)` entropy of the predictive distribution at each scored position
    /// (detached: a metric, not part of the graph), when requested.
    pub entropy: Option<Tensor>,
    /// `(B, C)`, same dtype as `logprobs`: 1 for real positions and 0 for padding.
    pub mask: Tensor,
    /// Scored tokens per row (`tokens.len() - score_from`).
    pub num_scored: Vec<usize>,
}

impl Model {
    /// Scores a batch. `adapter: None` gives the reference (base) policy; `mode` selects
    /// fused inference kernels or the differentiable train path (with LoRA dropout).
    ///
    /// `temperature` divides the logits before the softmax, as sampling does: to score
    /// completions sampled at temperature `T` under the distribution they were drawn from
    /// (so that importance weights against the behaviour log-probs are unbiased), pass the
    /// same `T`; pass 1 for the model's own distribution (SFT cross-entropy). Entropy is of
    /// the tempered distribution too. It must be finite and positive (greedy decoding has
    /// no log-probs to match).
    pub fn score(
        &self,
        sequences: &[ScoreSequence],
        adapter: Option<&LoraAdapter>,
        mode: ForwardMode,
        temperature: f64,
        with_entropy: bool,
    ) -> Result<Scores> {
        let cfg = self.config();
        let device = self.device();
        if sequences.is_empty() {
            return Err(PolicyError::Request {
                index: 0,
                message: "empty scoring batch".into(),
            });
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(PolicyError::Request {
                index: 0,
                message: format!(
                    "scoring temperature {temperature} is not a finite positive number"
                ),
            });
        }
        for (index, seq) in sequences.iter().enumerate() {
            let bad = |message: String| Err(PolicyError::Request { index, message });
            if seq.score_from == 0 || seq.score_from >= seq.tokens.len() {
                return bad(format!(
                    "score_from {} must be in 1..{} (the sequence length)",
                    seq.score_from,
                    seq.tokens.len()
                ));
            }
            if seq.tokens.len() > cfg.max_position_embeddings {
                return bad(format!(
                    "{} tokens exceed max_position_embeddings {}",
                    seq.tokens.len(),
                    cfg.max_position_embeddings
                ));
            }
            if let Some(&t) = seq.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return bad(format!(
                    "token {t} is outside the vocabulary ({})",
                    cfg.vocab_size
                ));
            }
        }
        let b_sz = sequences.len();
        let t_len = sequences.iter().map(|s| s.tokens.len()).max().unwrap_or(0);
        let num_scored: Vec<usize> = sequences
            .iter()
            .map(|s| s.tokens.len() - s.score_from)
            .collect();
        let c_len = *num_scored.iter().max().unwrap_or(&0);

        let mut ids = vec![0u32; b_sz * t_len];
        let mut gather_rows = vec![0u32; b_sz * c_len];
        let mut targets = vec![0u32; b_sz * c_len];
        let mut mask = vec![0f32; b_sz * c_len];
        for (b, seq) in sequences.iter().enumerate() {
            ids[b * t_len..b * t_len + seq.tokens.len()].copy_from_slice(&seq.tokens);
            for j in 0..c_len {
                let slot = b * c_len + j;
                if j < num_scored[b] {
                    let t = seq.score_from + j;
                    // The logits predicting token t sit at position t - 1.
                    gather_rows[slot] = (b * t_len + t - 1) as u32;
                    targets[slot] = seq.tokens[t];
                    mask[slot] = 1.0;
                } else {
                    gather_rows[slot] = (b * t_len) as u32;
                }
            }
        }
        let ctx = || "score".to_string();
        let tokens = Tensor::from_vec(ids, (b_sz, t_len), device).ctx(ctx)?;
        let gather_rows = Tensor::from_vec(gather_rows, b_sz * c_len, device).ctx(ctx)?;
        let targets = Tensor::from_vec(targets, (b_sz * c_len, 1), device).ctx(ctx)?;
        // Log-probs in f32 (f64 for f64 models: the gradient checks need the precision).
        let out_dtype = if self.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let mask = Tensor::from_vec(mask, (b_sz, c_len), device)
            .and_then(|m| m.to_dtype(out_dtype))
            .ctx(ctx)?;

        let mut pass = Pass::new(adapter, mode);
        let attn_mask = causal_mask(t_len, 0, self.dtype(), device).ctx(ctx)?;
        let hidden = self
            .forward_hidden(
                &tokens,
                &Positions::Offset(0),
                Some(&attn_mask),
                None,
                &mut pass,
            )
            .ctx(ctx)?;
        let hidden = hidden
            .reshape((b_sz * t_len, cfg.hidden_size))
            .and_then(|h| h.index_select(&gather_rows, 0))
            .ctx(ctx)?;
        let logits = self.lm_head(&hidden)?.to_dtype(out_dtype).ctx(ctx)?;
        let logits = if temperature == 1.0 {
            logits
        } else {
            logits.affine(1.0 / temperature, 0.0).ctx(ctx)?
        };
        let (logprobs, entropy) = token_logprobs(&logits, &targets, with_entropy).ctx(ctx)?;
        let logprobs = logprobs
            .reshape((b_sz, c_len))
            .and_then(|l| l * &mask)
            .ctx(ctx)?;
        let entropy = match entropy {
            Some(e) => Some(e.reshape((b_sz, c_len)).and_then(|e| e * &mask).ctx(ctx)?),
            None => None,
        };
        Ok(Scores {
            logprobs,
            entropy,
            mask,
            num_scored,
        })
    }
}

/// `log softmax(logits)[target]` for each row of `logits (N, V)` and `targets (N, 1)`, as
/// `logit[target] - logsumexp(logits)` (no full log-softmax tensor), and optionally the
/// detached entropy `logsumexp - Σ p·logit`.
pub(crate) fn token_logprobs(
    logits: &Tensor,
    targets: &Tensor,
    with_entropy: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let sum_exp = shifted.exp()?.sum_keepdim(D::Minus1)?;
    let log_z = sum_exp.log()?; // logsumexp - max
    let target = shifted.gather(targets, D::Minus1)?;
    let logprobs = (target - &log_z)?.squeeze(D::Minus1)?;
    let entropy = if with_entropy {
        let shifted = shifted.detach();
        let log_z = log_z.detach();
        let log_p = shifted.broadcast_sub(&log_z)?;
        let p = log_p.exp()?;
        Some((p * log_p)?.sum(D::Minus1)?.neg()?)
    } else {
        None
    };
    Ok((logprobs, entropy))
}
