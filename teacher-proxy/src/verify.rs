//! Checking what the teacher says: each trace's code is scored against its problem's tests
//! before the learner may imitate it.
//!
//! Verification sits behind the small [`Verifier`] trait so that the rest of the crate does
//! not care whether scoring runs in a local sandbox pool, on remote executors over gRPC,
//! or (in `tgrpo check teacher`) not at all.

use std::future::Future;

use serde::{Deserialize, Serialize};
use tgrpo_dataset::Problem;

use crate::error::Result;

/// What verification concluded about one trace's code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Every test passed.
    pub passed: bool,
    /// The executor's scalar reward.
    pub reward: f64,
    /// `passed`, `failed`, `timeout`, `error`, `no_code` or `unverified`.
    pub verdict: String,
}

impl Verification {
    /// The verdict for an answer with no code in it: nothing to run, reward 0.
    pub fn no_code() -> Self {
        Self {
            passed: false,
            reward: 0.0,
            verdict: "no_code".to_owned(),
        }
    }

    /// The verdict when verification is switched off: never counted as passing, so that
    /// passing-only teacher-SFT does not train on unchecked code.
    pub fn unverified() -> Self {
        Self {
            passed: false,
            reward: 0.0,
            verdict: "unverified".to_owned(),
        }
    }
}

/// Scores a program against a problem's tests.
pub trait Verifier: Send + Sync + 'static {
    /// Runs `code` against `problem`'s tests. `Err` means the code could not be scored
    /// (executor unreachable), not that it failed: a failing program is `Ok` with
    /// `passed: false`.
    fn verify(
        &self,
        problem: &Problem,
        code: &str,
    ) -> impl Future<Output = Result<Verification>> + Send;
}

/// A verifier that runs nothing: every trace is recorded as `unverified`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unverified;

impl Verifier for Unverified {
    async fn verify(&self, _problem: &Problem, _code: &str) -> Result<Verification> {
        Ok(Verification::unverified())
    }
}
