//! What the learner trains on: scored rollout groups (from rollout workers), SFT examples
//! (teacher traces and the policy's own best completions), and the pure selection rules
//! over them (dynamic sampling, self-SFT picks).
//!
//! Everything here is already tokenised: rollout workers send the exact prompt tokens they
//! sampled from, so the learner scores the very sequences that were sampled, and teacher
//! traces are tokenised once at start-up (`crate::teacher`).

use std::collections::HashSet;

use crate::error::{LearnerError, Result};
use crate::loss::is_zero_std_group;

/// One sampled completion with its reward.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The completion's tokens (without the prompt).
    pub tokens: Vec<u32>,
    /// The rollout worker's log-prob of each token when it sampled it; empty when the
    /// worker did not report them (the IS correction is then off for this completion).
    pub behaviour_logprobs: Vec<f32>,
    /// The reward from running the completion's code against the tests.
    pub reward: f64,
}

/// The G completions of one prompt, scored: the unit of GRPO.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredGroup {
    /// Idempotency key: the item id the learner issued with the prompt. A key seen before
    /// is a duplicate.
    pub key: String,
    /// The problem's task id.
    pub prompt_id: String,
    /// The rendered prompt's tokens, exactly as the sampler saw them.
    pub prompt_tokens: Vec<u32>,
    /// The completions.
    pub completions: Vec<Completion>,
    /// The adapter version the completions were sampled with.
    pub adapter_version: u64,
}

impl ScoredGroup {
    /// The rewards, in completion order.
    pub fn rewards(&self) -> Vec<f64> {
        self.completions
            .iter()
            .map(|completion| completion.reward)
            .collect()
    }

    /// Checks that the group can be trained on; the error names the group's key.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(LearnerError::BadGroup {
                key: self.key.clone(),
                reason,
            })
        };
        if self.key.is_empty() {
            return bad("empty idempotency key".into());
        }
        if self.prompt_tokens.is_empty() {
            return bad("no prompt tokens".into());
        }
        if self.completions.is_empty() {
            return bad("no completions".into());
        }
        for (index, completion) in self.completions.iter().enumerate() {
            if !completion.reward.is_finite() {
                return bad(format!(
                    "completion {index} has a non-finite reward {}",
                    completion.reward
                ));
            }
            let logprobs = completion.behaviour_logprobs.len();
            if logprobs != 0 && logprobs != completion.tokens.len() {
                return bad(format!(
                    "completion {index} has {} tokens but {logprobs} behaviour log-probs",
                    completion.tokens.len()
                ));
            }
            if completion
                .behaviour_logprobs
                .iter()
                .any(|value| value.is_nan())
            {
                return bad(format!("completion {index} has a NaN behaviour log-prob"));
            }
        }
        Ok(())
    }

    /// True when every reward is equal: no GRPO signal (see `crate::loss::is_zero_std_group`).
    pub fn is_zero_std(&self) -> bool {
        is_zero_std_group(&self.rewards())
    }
}

/// A supervised example: the loss is the cross-entropy of `target_tokens` given
/// `prompt_tokens` (the prompt itself is never a target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    /// Context only.
    pub prompt_tokens: Vec<u32>,
    /// What the model learns to produce.
    pub target_tokens: Vec<u32>,
}

/// The policy's own best completions to imitate: per group, the `top_k` highest-reward
/// completions whose reward is at least `threshold`, best first (ties keep sampling
/// order), each distinct token sequence once.
pub fn select_self_sft(groups: &[ScoredGroup], top_k: usize, threshold: f64) -> Vec<SftExample> {
    let mut picks = Vec::new();
    for group in groups {
        let mut order: Vec<usize> = (0..group.completions.len())
            .filter(|&index| {
                let completion = &group.completions[index];
                completion.reward >= threshold && !completion.tokens.is_empty()
            })
            .collect();
        // Stable sort: equal rewards stay in sampling order, so the pick is deterministic.
        order.sort_by(|&left, &right| {
            group.completions[right]
                .reward
                .total_cmp(&group.completions[left].reward)
        });
        let mut seen: HashSet<&[u32]> = HashSet::new();
        for index in order {
            if seen.len() >= top_k {
                break;
            }
            let tokens = group.completions[index].tokens.as_slice();
            if seen.insert(tokens) {
                picks.push(SftExample {
                    prompt_tokens: group.prompt_tokens.clone(),
                    target_tokens: tokens.to_vec(),
                });
            }
        }
    }
    picks
}

/// The groups that enter the GRPO term, and how many were left out for having no reward
/// spread (only when `dynamic_sampling` is on; the count is reported either way).
#[derive(Debug)]
pub struct GrpoSelection<'a> {
    /// Groups contributing to the GRPO term.
    pub groups: Vec<&'a ScoredGroup>,
    /// Groups whose rewards were all equal.
    pub zero_std_groups: usize,
    /// Of those, how many were dropped (dynamic sampling on).
    pub dropped_zero_std: usize,
}

/// Applies DAPO dynamic sampling: with it on, zero-std groups are dropped from the GRPO
/// term (they would only dilute its mean with zero-advantage sequences).
pub fn select_grpo_groups(groups: &[ScoredGroup], dynamic_sampling: bool) -> GrpoSelection<'_> {
    let mut selected = Vec::with_capacity(groups.len());
    let mut zero_std_groups = 0;
    for group in groups {
        let zero_std = group.is_zero_std();
        zero_std_groups += usize::from(zero_std);
        if !(zero_std && dynamic_sampling) {
            selected.push(group);
        }
    }
    GrpoSelection {
        dropped_zero_std: if dynamic_sampling { zero_std_groups } else { 0 },
        groups: selected,
        zero_std_groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(tokens: &[u32], reward: f64) -> Completion {
        Completion {
            tokens: tokens.to_vec(),
            behaviour_logprobs: vec![-1.0; tokens.len()],
            reward,
        }
    }

    fn group(key: &str, completions: Vec<Completion>) -> ScoredGroup {
        ScoredGroup {
            key: key.into(),
            prompt_id: format!("task-{key}"),
            prompt_tokens: vec![1, 2],
            completions,
            adapter_version: 0,
        }
    }

    #[test]
    fn self_sft_takes_top_k_above_threshold_without_duplicates() {
        let groups = vec![
            group(
                "a",
                vec![
                    completion(&[5], 0.5),
                    completion(&[6], 1.0),
                    completion(&[7], 1.0),
                    completion(&[6], 1.0),
                    completion(&[8], 0.9),
                ],
            ),
            group("b", vec![completion(&[9], 0.0), completion(&[10], 0.2)]),
        ];
        // threshold 0.9, top 2: group a → [6] and [7] (ties in sampling order; the second
        // [6] is a duplicate); group b has nothing above the threshold.
        let picks = select_self_sft(&groups, 2, 0.9);
        let targets: Vec<Vec<u32>> = picks
            .iter()
            .map(|pick| pick.target_tokens.clone())
            .collect();
        assert_eq!(targets, vec![vec![6], vec![7]]);
        assert!(picks.iter().all(|pick| pick.prompt_tokens == vec![1, 2]));
        // top 3 reaches down to the 0.9 completion; a lower threshold admits group b's best.
        let picks = select_self_sft(&groups, 3, 0.9);
        assert_eq!(picks.len(), 3);
        assert_eq!(picks[2].target_tokens, vec![8]);
        let picks = select_self_sft(&groups, 1, 0.1);
        let targets: Vec<Vec<u32>> = picks
            .iter()
            .map(|pick| pick.target_tokens.clone())
            .collect();
        assert_eq!(targets, vec![vec![6], vec![10]]);
        assert!(select_self_sft(&groups, 0, 0.0).is_empty());
    }

    #[test]
    fn dynamic_sampling_drops_and_counts_zero_std_groups() {
        let groups = vec![
            group("a", vec![completion(&[1], 1.0), completion(&[2], 1.0)]),
            group("b", vec![completion(&[1], 1.0), completion(&[2], 0.0)]),
            group("c", vec![completion(&[1], 0.0), completion(&[2], 0.0)]),
        ];
        let on = select_grpo_groups(&groups, true);
        assert_eq!(on.groups.len(), 1);
        assert_eq!(on.groups[0].key, "b");
        assert_eq!((on.zero_std_groups, on.dropped_zero_std), (2, 2));
        let off = select_grpo_groups(&groups, false);
        assert_eq!(off.groups.len(), 3);
        assert_eq!((off.zero_std_groups, off.dropped_zero_std), (2, 0));
    }

    #[test]
    fn validation_names_the_group() {
        let mut bad = group("g7", vec![completion(&[1, 2], 1.0)]);
        bad.completions[0].behaviour_logprobs.pop();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("g7") && err.contains("behaviour"), "{err}");
        let mut bad = group("g8", vec![completion(&[1], f64::NAN)]);
        assert!(bad.validate().unwrap_err().to_string().contains("g8"));
        bad.completions.clear();
        assert!(bad.validate().is_err());
        assert!(group("ok", vec![completion(&[1], 0.0)]).validate().is_ok());
    }
}
