//! Per-request rewards: how a verdict and per-test results become one scalar.
//!
//! - binary: 1 if every test passed, else 0;
//! - partial: the fraction of tests passed;
//! - scaled: `pass_weight · fraction + all_pass_bonus·[all passed]`, except that a
//!   program that does not compile gets `syntax_error_penalty` and one that runs out of
//!   time gets `timeout_penalty`.

use tgrpo_proto::executor::{RewardKind, ScaledReward, Verdict};

use crate::config::ScaledRewardConfig;

/// The executor's scaled-reward defaults overridden by the request's own fields.
pub fn scaled_params(
    defaults: &ScaledRewardConfig,
    request: Option<&ScaledReward>,
) -> ScaledRewardConfig {
    let Some(request) = request else {
        return *defaults;
    };
    ScaledRewardConfig {
        pass_weight: request.pass_weight.unwrap_or(defaults.pass_weight),
        all_pass_bonus: request.all_pass_bonus.unwrap_or(defaults.all_pass_bonus),
        syntax_error_penalty: request
            .syntax_error_penalty
            .unwrap_or(defaults.syntax_error_penalty),
        timeout_penalty: request.timeout_penalty.unwrap_or(defaults.timeout_penalty),
    }
}

/// The reward of one scored program.
pub fn reward(
    kind: RewardKind,
    scaled: &ScaledRewardConfig,
    verdict: Verdict,
    tests_passed: u32,
    tests_total: u32,
    syntax_error: bool,
) -> f64 {
    let fraction = if tests_total == 0 {
        0.0
    } else {
        f64::from(tests_passed) / f64::from(tests_total)
    };
    let all_passed = verdict == Verdict::Passed;
    match kind {
        RewardKind::Unspecified | RewardKind::Binary => {
            if all_passed {
                1.0
            } else {
                0.0
            }
        }
        RewardKind::Partial => fraction,
        RewardKind::Scaled => {
            if syntax_error {
                scaled.syntax_error_penalty
            } else if verdict == Verdict::Timeout {
                scaled.timeout_penalty
            } else {
                let bonus = if all_passed {
                    scaled.all_pass_bonus
                } else {
                    0.0
                };
                scaled.pass_weight * fraction + bonus
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled() -> ScaledRewardConfig {
        ScaledRewardConfig {
            pass_weight: 0.5,
            all_pass_bonus: 0.5,
            syntax_error_penalty: -1.0,
            timeout_penalty: -0.25,
        }
    }

    #[test]
    fn binary_is_all_or_nothing() {
        let s = scaled();
        assert_eq!(
            reward(RewardKind::Binary, &s, Verdict::Passed, 3, 3, false),
            1.0
        );
        assert_eq!(
            reward(RewardKind::Binary, &s, Verdict::Failed, 2, 3, false),
            0.0
        );
        assert_eq!(
            reward(RewardKind::Unspecified, &s, Verdict::Passed, 1, 1, false),
            1.0
        );
    }

    #[test]
    fn partial_is_the_fraction() {
        let s = scaled();
        let r = reward(RewardKind::Partial, &s, Verdict::Failed, 2, 3, false);
        assert!((r - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            reward(RewardKind::Partial, &s, Verdict::Error, 0, 0, false),
            0.0
        );
    }

    #[test]
    fn scaled_applies_weights_and_penalties() {
        let s = scaled();
        assert_eq!(
            reward(RewardKind::Scaled, &s, Verdict::Passed, 4, 4, false),
            1.0
        );
        assert_eq!(
            reward(RewardKind::Scaled, &s, Verdict::Failed, 2, 4, false),
            0.25
        );
        assert_eq!(
            reward(RewardKind::Scaled, &s, Verdict::Error, 0, 4, true),
            -1.0
        );
        assert_eq!(
            reward(RewardKind::Scaled, &s, Verdict::Timeout, 1, 4, false),
            -0.25
        );
    }

    #[test]
    fn request_fields_override_defaults() {
        let defaults = scaled();
        let request = ScaledReward {
            timeout_penalty: Some(-3.0),
            ..ScaledReward::default()
        };
        let merged = scaled_params(&defaults, Some(&request));
        assert_eq!(merged.timeout_penalty, -3.0);
        assert_eq!(merged.pass_weight, 0.5);
        assert_eq!(scaled_params(&defaults, None), defaults);
    }
}
