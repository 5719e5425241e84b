//! The terms of the composite objective, as pure functions over tensors.
//!
//! ```text
//! L_total = α·L_GRPO + β·L_TeacherSFT + γ·L_SelfSFT
//! ```
//!
//! Every per-token tensor here has shape `[sequences, positions]` and is paired with a
//! 0/1 `mask` of the same shape: position `j` of a sequence holds the log-prob of its
//! token `j + 1` given tokens `0..=j` (see `crate::batch`), and the mask is 1 exactly on
//! the tokens that are trained (completion or SFT-target tokens; never prompt or padding).
//! Nothing here knows about models or configs, so each function can be checked on a
//! hand-worked example.

use candle_core::{D, DType, Tensor};

use crate::config::{KlEstimator, LossAggregation};
use crate::error::Result;

/// Group-relative advantages: `A_i = (r_i − mean(r)) / (std(r) + ε)`, or `r_i − mean(r)`
/// without std scaling.
///
/// The standard deviation is the sample one (n − 1 in the denominator), as PyTorch's
/// `std` and so TRL compute it. A group whose rewards are all equal gets all-zero
/// advantages either way.
pub fn group_advantages(rewards: &[f64], scale_rewards: bool, epsilon: f64) -> Vec<f64> {
    if rewards.is_empty() {
        return Vec::new();
    }
    let count = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / count;
    let centred: Vec<f64> = rewards.iter().map(|reward| reward - mean).collect();
    if !scale_rewards {
        return centred;
    }
    let std = reward_std(rewards);
    centred
        .iter()
        .map(|value| value / (std + epsilon))
        .collect()
}

/// Sample standard deviation of a group's rewards (0 for fewer than two).
pub fn reward_std(rewards: &[f64]) -> f64 {
    if rewards.len() < 2 {
        return 0.0;
    }
    let count = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / count;
    let squares: f64 = rewards.iter().map(|reward| (reward - mean).powi(2)).sum();
    (squares / (count - 1.0)).sqrt()
}

/// True when every reward of the group is the same: the group carries no GRPO signal
/// (all advantages are zero), which DAPO's dynamic sampling drops.
pub fn is_zero_std_group(rewards: &[f64]) -> bool {
    rewards.windows(2).all(|pair| pair[0] == pair[1])
}

/// Per-token log-probs of `targets` and the entropy of each next-token distribution,
/// from raw logits.
///
/// `logits` is `[sequences, positions, vocab]`, `targets` is `[sequences, positions]`
/// (u32). Returns `(logp, entropy)`, both `[sequences, positions]`. For models that hand
/// back logits rather than log-probs.
pub fn logprobs_from_logits(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let logp = log_probs
        .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?;
    let entropy = (log_probs.exp()? * &log_probs)?.sum(D::Minus1)?.neg()?;
    Ok((logp, entropy))
}

/// The clipped-surrogate (PPO) loss per token and which tokens were clipped.
#[derive(Debug)]
pub struct PpoClip {
    /// `−min(ratio·A, clip(ratio, 1−ε_low, 1+ε_high)·A)`, `[sequences, positions]`.
    pub loss: Tensor,
    /// 1 where the clipped term was strictly smaller, i.e. the token's gradient is cut off.
    pub clipped: Tensor,
    /// `exp(logp − old_logp)`.
    pub ratio: Tensor,
}

/// The PPO clipped surrogate with separate lower and upper clip widths.
///
/// `logp` carries the gradient; `old_logp` must be detached by the caller (with one
/// iteration per batch it is `logp.detach()`, so the ratio is 1 and only its gradient
/// matters). `advantages` is one value per sequence, `[sequences]`.
pub fn ppo_clip(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    epsilon_low: f64,
    epsilon_high: f64,
) -> Result<PpoClip> {
    let ratio = (logp - old_logp)?.exp()?;
    let advantages = advantages
        .unsqueeze(1)?
        .to_dtype(ratio.dtype())?
        .broadcast_as(ratio.shape())?;
    let unclipped = (&ratio * &advantages)?;
    let clipped_objective = (ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)? * &advantages)?;
    let loss = unclipped.minimum(&clipped_objective)?.neg()?;
    let clipped = clipped_objective
        .lt(&unclipped)?
        .to_dtype(ratio.dtype())?
        .detach();
    Ok(PpoClip {
        loss,
        clipped,
        ratio,
    })
}

/// Per-token KL divergence estimate of the policy from the reference.
///
/// k3: `exp(ref − logp) − (ref − logp) − 1` (≥ 0, zero where they agree);
/// k1: `logp − ref`.
pub fn kl_per_token(logp: &Tensor, ref_logp: &Tensor, estimator: KlEstimator) -> Result<Tensor> {
    Ok(match estimator {
        KlEstimator::K3 => {
            let delta = (ref_logp - logp)?;
            ((delta.exp()? - &delta)? - 1.0)?
        }
        KlEstimator::K1 => (logp - ref_logp)?,
    })
}

/// Truncated importance-sampling weights `min(exp(old_logp − behaviour_logp), cap)`,
/// detached.
///
/// The rollout worker samples with its own kernels, dtype and possibly an older adapter;
/// its log-probs (`behaviour`) drift from the learner's (`old`). Weighting each token's
/// policy-gradient loss by this ratio corrects the drift, and the cap bounds the variance
/// a few wildly off tokens could add. The exponent is capped before `exp` so that a huge
/// drift gives `cap`, never infinity.
pub fn truncated_importance_weights(
    old_logp: &Tensor,
    behaviour_logp: &Tensor,
    cap: f64,
) -> Result<Tensor> {
    let log_ratio = (old_logp - behaviour_logp)?.minimum(cap.ln())?;
    Ok(log_ratio.exp()?.detach())
}

/// The denominators of token aggregation, fixed for a whole optimizer step.
///
/// When a batch is split into micro-batches for gradient accumulation, each micro-batch's
/// loss is divided by the WHOLE batch's counts, so the summed micro-batch losses (and
/// gradients) equal the full-batch ones exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchScale {
    /// Sequences in the whole batch.
    pub sequences: usize,
    /// Trained (mask = 1) tokens in the whole batch.
    pub tokens: usize,
    /// The constant length Dr. GRPO divides by (the rollouts' `max_new_tokens`).
    pub max_len: usize,
}

impl BatchScale {
    /// The scale of a batch given its whole mask.
    pub fn of(mask: &Tensor, max_len: usize) -> Result<Self> {
        let sequences = mask.dim(0)?;
        let tokens = mask.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize;
        Ok(Self {
            sequences,
            tokens,
            max_len,
        })
    }
}

/// Reduces a per-token loss to a scalar, counting only masked-in tokens.
///
/// - `grpo`: mean over each sequence's tokens, then sum over sequences ÷ `scale.sequences`;
/// - `dapo`: sum over all tokens ÷ `scale.tokens`;
/// - `dr_grpo`: sum over all tokens ÷ (`scale.sequences` × `scale.max_len`).
///
/// A sequence with no trained token contributes 0 (it is not a division by zero).
pub fn aggregate(
    per_token: &Tensor,
    mask: &Tensor,
    aggregation: LossAggregation,
    scale: BatchScale,
) -> Result<Tensor> {
    let mask = mask.to_dtype(per_token.dtype())?;
    // Multiplying by the mask would let a non-finite value on a padding position poison
    // the sum (0 × inf = NaN); selecting zeros there does not.
    let masked = mask
        .ne(0.0)?
        .where_cond(per_token, &per_token.zeros_like()?)?;
    Ok(match aggregation {
        LossAggregation::Grpo => {
            let lengths = mask.sum(1)?.maximum(1.0)?;
            let per_sequence = (masked.sum(1)? / lengths)?;
            (per_sequence.sum_all()? / scale.sequences.max(1) as f64)?
        }
        LossAggregation::Dapo => (masked.sum_all()? / scale.tokens.max(1) as f64)?,
        LossAggregation::DrGrpo => {
            (masked.sum_all()? / (scale.sequences.max(1) * scale.max_len.max(1)) as f64)?
        }
    })
}

/// Mean negative log-likelihood of the masked-in tokens: the SFT cross-entropy.
///
/// The mask is what keeps prompt tokens out of the target (see
/// `crate::batch::SequenceBatch`); `total_tokens` is the whole batch's count of target
/// tokens, for gradient accumulation as in [`BatchScale`].
pub fn masked_cross_entropy(logp: &Tensor, mask: &Tensor, total_tokens: usize) -> Result<Tensor> {
    let masked = mask
        .to_dtype(logp.dtype())?
        .ne(0.0)?
        .where_cond(logp, &logp.zeros_like()?)?;
    Ok((masked.sum_all()?.neg()? / total_tokens.max(1) as f64)?)
}

/// Inputs of the GRPO term for one (micro-)batch of completions.
#[derive(Debug)]
pub struct GrpoInputs<'a> {
    /// The learner's log-probs, with gradient.
    pub logp: &'a Tensor,
    /// Log-probs at the start of this batch's updates, detached.
    pub old_logp: &'a Tensor,
    /// Log-probs of the reference policy (adapter off); `None` when `kl_coef` is 0.
    pub ref_logp: Option<&'a Tensor>,
    /// The rollout worker's sampling log-probs; `None` turns off the IS correction.
    pub behaviour_logp: Option<&'a Tensor>,
    /// One advantage per sequence.
    pub advantages: &'a Tensor,
    /// Completion tokens.
    pub mask: &'a Tensor,
}

/// The hyper-parameters of the GRPO term.
#[derive(Debug, Clone, Copy)]
pub struct GrpoParams {
    /// ε_low.
    pub epsilon_low: f64,
    /// ε_high.
    pub epsilon_high: f64,
    /// Weight of the per-token KL.
    pub kl_coef: f64,
    /// KL estimator.
    pub kl_estimator: KlEstimator,
    /// Truncated IS cap; `None` = no correction.
    pub importance_sampling_cap: Option<f64>,
    /// Token aggregation.
    pub aggregation: LossAggregation,
}

/// The GRPO term of one (micro-)batch and the token statistics the metrics report, as
/// masked sums so micro-batches add up.
#[derive(Debug)]
pub struct GrpoTerm {
    /// The aggregated loss (scalar, with gradient).
    pub loss: Tensor,
    /// Sum over trained tokens of the per-token KL (0 without a reference).
    pub kl_sum: f64,
    /// Trained tokens whose ratio was clipped.
    pub clipped_tokens: f64,
    /// Sum over trained tokens of the truncated IS weight (tokens count when off).
    pub importance_weight_sum: f64,
    /// Trained tokens in this (micro-)batch.
    pub tokens: f64,
}

/// `α`-less GRPO loss: `agg(ppo_clip · w_IS + kl_coef · KL)`, as TRL composes it (the IS
/// weight corrects the policy-gradient part only; the KL is computed on the learner's
/// own samples of its own policy).
pub fn grpo_term(
    inputs: &GrpoInputs<'_>,
    params: &GrpoParams,
    scale: BatchScale,
) -> Result<GrpoTerm> {
    let ppo = ppo_clip(
        inputs.logp,
        inputs.old_logp,
        inputs.advantages,
        params.epsilon_low,
        params.epsilon_high,
    )?;
    let mask = inputs.mask.to_dtype(inputs.logp.dtype())?;
    let mut per_token = ppo.loss;
    let mut importance_weight_sum = masked_sum(&mask, &mask)?;
    if let (Some(cap), Some(behaviour)) = (params.importance_sampling_cap, inputs.behaviour_logp) {
        let weights = truncated_importance_weights(inputs.old_logp, behaviour, cap)?;
        importance_weight_sum = masked_sum(&weights, &mask)?;
        per_token = (per_token * weights)?;
    }
    let mut kl_sum = 0.0;
    if let Some(ref_logp) = inputs.ref_logp {
        let kl = kl_per_token(inputs.logp, ref_logp, params.kl_estimator)?;
        kl_sum = masked_sum(&kl.detach(), &mask)?;
        if params.kl_coef != 0.0 {
            per_token = (per_token + (kl * params.kl_coef)?)?;
        }
    }
    let loss = aggregate(&per_token, &mask, params.aggregation, scale)?;
    Ok(GrpoTerm {
        loss,
        kl_sum,
        clipped_tokens: masked_sum(&ppo.clipped, &mask)?,
        importance_weight_sum,
        tokens: masked_sum(&mask, &mask)?,
    })
}

/// `α·grpo + β·teacher + γ·self`, leaving out absent terms (no groups, no traces, no
/// picks this step) rather than treating them as zero-valued tensors.
pub fn composite(terms: &[(f64, Option<&Tensor>)]) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    for (weight, term) in terms {
        let Some(term) = term else { continue };
        if *weight == 0.0 {
            continue;
        }
        let weighted = (*term * *weight)?;
        total = Some(match total {
            None => weighted,
            Some(sum) => (sum + weighted)?,
        });
    }
    Ok(total)
}

/// Sum of `values` where `mask` is set, as f64 (metrics only; no gradient).
pub fn masked_sum(values: &Tensor, mask: &Tensor) -> Result<f64> {
    let values = values.detach().to_dtype(DType::F64)?;
    let keep = mask.ne(0.0)?;
    Ok(keep
        .where_cond(&values, &values.zeros_like()?)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-5,
            "expected {expected}, got {actual}"
        );
    }

    fn t2(rows: &[&[f32]]) -> Tensor {
        let width = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|row| row.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu).unwrap()
    }

    fn v2(tensor: &Tensor) -> Vec<Vec<f32>> {
        tensor.to_vec2::<f32>().unwrap()
    }

    fn scalar(tensor: &Tensor) -> f64 {
        tensor
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn advantages_with_and_without_std_scaling() {
        // rewards 1,0,0,1: mean 0.5; sample std = sqrt(4 × 0.25 / 3) = 0.57735;
        // A = ±0.5 / (0.57735 + 1e-4) = ±0.865875.
        let scaled = group_advantages(&[1.0, 0.0, 0.0, 1.0], true, 1e-4);
        for (value, sign) in scaled.iter().zip([1.0, -1.0, -1.0, 1.0]) {
            close(*value, sign * 0.865_875_43);
        }
        let centred = group_advantages(&[1.0, 0.0, 0.0, 1.0], false, 1e-4);
        assert_eq!(centred, vec![0.5, -0.5, -0.5, 0.5]);
        // rewards 2,0: mean 1, sample std sqrt(2); ε matters: 1 / (1.41421 + 0.0001).
        let pair = group_advantages(&[2.0, 0.0], true, 1e-4);
        close(pair[0], 0.707_056_78);
        close(pair[1], -0.707_056_78);
        // A larger ε shrinks them: 1 / (1.41421 + 1) = 0.414214.
        close(group_advantages(&[2.0, 0.0], true, 1.0)[0], 0.414_213_56);
        // All-equal groups: zero advantages, flagged for dynamic sampling.
        assert_eq!(group_advantages(&[1.0, 1.0, 1.0], true, 1e-4), vec![0.0; 3]);
        assert!(is_zero_std_group(&[1.0, 1.0, 1.0]));
        assert!(!is_zero_std_group(&[1.0, 1.0, 0.5]));
    }

    #[test]
    fn ppo_clip_uses_separate_low_and_high_widths() {
        // ratios 1.5, 0.5, 1.1 (old = 0), ε_low 0.2, ε_high 0.3 → clip range [0.8, 1.3].
        let ratios = [1.5f32, 0.5, 1.1];
        let logs: Vec<f32> = ratios.iter().map(|r| r.ln()).collect();
        let var = Var::from_tensor(&t2(&[&logs, &logs])).unwrap();
        let old = t2(&[&[0.0; 3], &[0.0; 3]]);
        let advantages = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        let ppo = ppo_clip(var.as_tensor(), &old, &advantages, 0.2, 0.3).unwrap();
        // A = +1: min(1.5, 1.3) = 1.3 (clipped); min(0.5, 0.8) = 0.5; min(1.1, 1.1) = 1.1.
        // A = −1: min(−1.5, −1.3) = −1.5; min(−0.5, −0.8) = −0.8 (clipped); −1.1.
        let loss = v2(&ppo.loss);
        for (got, want) in loss[0].iter().zip([-1.3, -0.5, -1.1]) {
            close(*got as f64, want);
        }
        for (got, want) in loss[1].iter().zip([1.5, 0.8, 1.1]) {
            close(*got as f64, want);
        }
        assert_eq!(
            v2(&ppo.clipped),
            vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]
        );
        // Gradients: d(−ratio·A)/d logp = −ratio·A where unclipped, 0 where clipped.
        let grads = ppo.loss.sum_all().unwrap().backward().unwrap();
        let grad = v2(grads.get(var.as_tensor()).unwrap());
        for (got, want) in grad[0].iter().zip([0.0, -0.5, -1.1]) {
            close(*got as f64, want);
        }
        for (got, want) in grad[1].iter().zip([1.5, 0.0, 1.1]) {
            close(*got as f64, want);
        }
    }

    #[test]
    fn kl_estimators() {
        // logp = ln 0.5, ref = ln 0.25: ref − logp = −ln 2;
        // k3 = 0.5 + ln 2 − 1 = 0.193147; k1 = ln 2 = 0.693147. Equal → 0 for both.
        let logp = t2(&[&[0.5f32.ln(), 0.3f32.ln()]]);
        let reference = t2(&[&[0.25f32.ln(), 0.3f32.ln()]]);
        let k3 = v2(&kl_per_token(&logp, &reference, KlEstimator::K3).unwrap());
        close(k3[0][0] as f64, 0.193_147_18);
        close(k3[0][1] as f64, 0.0);
        let k1 = v2(&kl_per_token(&logp, &reference, KlEstimator::K1).unwrap());
        close(k1[0][0] as f64, std::f64::consts::LN_2);
        close(k1[0][1] as f64, 0.0);
        // k3 is never negative, k1 can be.
        let k3_reverse = v2(&kl_per_token(&reference, &logp, KlEstimator::K3).unwrap());
        assert!(k3_reverse[0][0] > 0.0);
        let k1_reverse = v2(&kl_per_token(&reference, &logp, KlEstimator::K1).unwrap());
        assert!(k1_reverse[0][0] < 0.0);
    }

    #[test]
    fn aggregations_and_micro_batch_additivity() {
        // Padding positions hold garbage (100, inf) that the mask must keep out.
        let per_token = t2(&[&[1.0, 2.0, 3.0, 100.0], &[4.0, f32::INFINITY, 100.0, 100.0]]);
        let mask = t2(&[&[1.0, 1.0, 1.0, 0.0], &[1.0, 0.0, 0.0, 0.0]]);
        let scale = BatchScale::of(&mask, 4).unwrap();
        assert_eq!(
            scale,
            BatchScale {
                sequences: 2,
                tokens: 4,
                max_len: 4
            }
        );
        // grpo: (mean(1,2,3) + mean(4)) / 2 = (2 + 4) / 2 = 3.
        let grpo = aggregate(&per_token, &mask, LossAggregation::Grpo, scale).unwrap();
        close(scalar(&grpo), 3.0);
        // dapo: (1 + 2 + 3 + 4) / 4 = 2.5.
        let dapo = aggregate(&per_token, &mask, LossAggregation::Dapo, scale).unwrap();
        close(scalar(&dapo), 2.5);
        // dr_grpo: 10 / (2 × 4) = 1.25.
        let dr = aggregate(&per_token, &mask, LossAggregation::DrGrpo, scale).unwrap();
        close(scalar(&dr), 1.25);
        // Each row alone, divided by the whole batch's scale, sums to the whole.
        for (aggregation, whole) in [
            (LossAggregation::Grpo, 3.0),
            (LossAggregation::Dapo, 2.5),
            (LossAggregation::DrGrpo, 1.25),
        ] {
            let parts: f64 = (0..2)
                .map(|row| {
                    let loss = aggregate(
                        &per_token.narrow(0, row, 1).unwrap(),
                        &mask.narrow(0, row, 1).unwrap(),
                        aggregation,
                        scale,
                    )
                    .unwrap();
                    scalar(&loss)
                })
                .sum();
            close(parts, whole);
        }
    }

    #[test]
    fn truncated_importance_weights_cap_the_ratio() {
        // old/behaviour = 0.9/0.3 = 3 → capped at 2; 0.3/0.6 = 0.5 stays.
        let old = t2(&[&[0.9f32.ln(), 0.3f32.ln()]]);
        let behaviour = t2(&[&[0.3f32.ln(), 0.6f32.ln()]]);
        let weights = v2(&truncated_importance_weights(&old, &behaviour, 2.0).unwrap());
        close(weights[0][0] as f64, 2.0);
        close(weights[0][1] as f64, 0.5);
        // A huge drift is capped, not infinite.
        let far = t2(&[&[0.0, 0.0]]);
        let tiny = t2(&[&[-500.0, -1e30]]);
        let weights = v2(&truncated_importance_weights(&far, &tiny, 2.0).unwrap());
        close(weights[0][0] as f64, 2.0);
        close(weights[0][1] as f64, 2.0);
    }

    #[test]
    fn cross_entropy_counts_only_target_tokens() {
        // Sequence [p0, p1, t0, t1] with a 2-token prompt: positions predict tokens 1..4,
        // so positions 1 and 2 (predicting t0, t1) are targets; position 0 predicts the
        // prompt token p1 and is masked out.
        let logp = t2(&[&[0.1f32.ln(), 0.5f32.ln(), 0.25f32.ln()]]);
        let mask = t2(&[&[0.0, 1.0, 1.0]]);
        let ce = masked_cross_entropy(&logp, &mask, 2).unwrap();
        // (−ln 0.5 − ln 0.25) / 2 = (0.693147 + 1.386294) / 2 = 1.039721.
        close(scalar(&ce), 1.039_720_77);
    }

    #[test]
    fn logprobs_and_entropy_from_logits() {
        // Vocabulary of 2; logits (ln 3, 0) → p = (0.75, 0.25); (0, 0) → (0.5, 0.5).
        let logits =
            Tensor::from_vec(vec![3.0f32.ln(), 0.0, 0.0, 0.0], (1, 2, 2), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(vec![1u32, 0], (1, 2), &Device::Cpu).unwrap();
        let (logp, entropy) = logprobs_from_logits(&logits, &targets).unwrap();
        let logp = v2(&logp);
        close(logp[0][0] as f64, 0.25f64.ln());
        close(logp[0][1] as f64, 0.5f64.ln());
        let entropy = v2(&entropy);
        // H(0.75, 0.25) = −0.75 ln 0.75 − 0.25 ln 0.25 = 0.562335; H(0.5, 0.5) = ln 2.
        close(entropy[0][0] as f64, 0.562_335_14);
        close(entropy[0][1] as f64, std::f64::consts::LN_2);
    }

    #[test]
    fn grpo_term_combines_clip_is_weight_and_kl() {
        // One sequence of two completion tokens + one padding position.
        // logp = ln 0.5 everywhere, old = logp (ratio 1), ref = ln 0.25, behaviour:
        // token 0 = ln 0.25 (IS weight min(2, cap 1.5) = 1.5), token 1 = ln 0.5 (weight 1).
        // A = 1: ppo loss = −1 per token; with IS: −1.5, −1.
        // k3 per token = 0.193147; kl_coef 0.1 → +0.0193147 each.
        // grpo aggregation over 2 tokens: (−1.5 − 1 + 2 × 0.0193147) / 2 = −1.2306853.
        let half = 0.5f32.ln();
        let quarter = 0.25f32.ln();
        let logp = t2(&[&[half, half, 7.0]]);
        let reference = t2(&[&[quarter, quarter, 0.0]]);
        let behaviour = t2(&[&[quarter, half, 0.0]]);
        let mask = t2(&[&[1.0, 1.0, 0.0]]);
        let advantages = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        let inputs = GrpoInputs {
            logp: &logp,
            old_logp: &logp,
            ref_logp: Some(&reference),
            behaviour_logp: Some(&behaviour),
            advantages: &advantages,
            mask: &mask,
        };
        let params = GrpoParams {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            kl_coef: 0.1,
            kl_estimator: KlEstimator::K3,
            importance_sampling_cap: Some(1.5),
            aggregation: LossAggregation::Grpo,
        };
        let term = grpo_term(&inputs, &params, BatchScale::of(&mask, 3).unwrap()).unwrap();
        close(scalar(&term.loss), -1.230_685_3);
        close(term.kl_sum, 2.0 * 0.193_147_18);
        close(term.importance_weight_sum, 2.5);
        close(term.tokens, 2.0);
        close(term.clipped_tokens, 0.0);
    }

    #[test]
    fn composite_weights_and_skips_absent_terms() {
        let device = Device::Cpu;
        let grpo = Tensor::new(2.0f32, &device).unwrap();
        let teacher = Tensor::new(4.0f32, &device).unwrap();
        // 1.0 × 2 + 0.3 × 4 + (γ term absent) = 3.2.
        let total = composite(&[(1.0, Some(&grpo)), (0.3, Some(&teacher)), (0.2, None)])
            .unwrap()
            .unwrap();
        close(scalar(&total), 3.2);
        assert!(
            composite(&[(1.0, None), (0.0, Some(&teacher))])
                .unwrap()
                .is_none()
        );
    }
}
