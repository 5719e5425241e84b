//! Checking what the teacher says: each trace's code is scored against its problem's tests
//! before the learner may imitate it.
//!
//! Verification sits behind the small [`Verifier`] trait so that the rest of the crate does
//! not care whether scoring runs in a local sandbox pool, on remote executors over gRPC,
//! or (in `tgrpo check teacher`) not at all.

use std::future::Future;

use serde::{Deserialize, Serialize};
use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_executor::{Scorer, requests};
use tgrpo_proto::executor::{ScoreRequest, Verdict};

use crate::error::{Result, TeacherError};

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

/// The executor's scoring handle (in-process sandbox pool or balanced gRPC client): the
/// verifier every real run uses.
impl Verifier for Scorer {
    async fn verify(&self, problem: &Problem, code: &str) -> Result<Verification> {
        let response = self
            .score(score_request(problem, code))
            .await
            .map_err(|err| TeacherError::Verify {
                problem_id: problem.task_id.clone(),
                reason: err.to_string(),
            })?;
        let verdict = response.verdict();
        Ok(Verification {
            passed: verdict == Verdict::Passed,
            reward: response.reward,
            verdict: match verdict {
                Verdict::Passed => "passed",
                Verdict::Failed => "failed",
                Verdict::Timeout => "timeout",
                Verdict::Error | Verdict::Unspecified => "error",
            }
            .to_owned(),
        })
    }
}

/// The executor request that checks `code` against `problem`'s tests (binary reward,
/// the executor's default time limit).
pub fn score_request(problem: &Problem, code: &str) -> ScoreRequest {
    let id = problem.task_id.clone();
    let program = problem.program_for(code);
    match problem.format {
        TestFormat::Mbpp => requests::mbpp(
            id,
            program,
            problem.tests.clone(),
            problem.setup_code.clone(),
        ),
        TestFormat::HumanEval => requests::humaneval(
            id,
            program,
            problem.tests.first().cloned().unwrap_or_default(),
            problem.entry_point.clone().unwrap_or_default(),
        ),
        TestFormat::Generic => {
            let mut request = requests::generic(id, program, problem.tests.clone());
            request.setup_code = problem.setup_code.clone();
            request
        }
    }
}

#[cfg(test)]
mod tests {
    use tgrpo_proto::executor::TestFormat as WireFormat;

    use super::*;

    fn problem(format: TestFormat) -> Problem {
        Problem {
            task_id: "t".into(),
            text: "x".into(),
            reference: None,
            tests: vec!["def check(candidate):\n    assert candidate(1) == 2\n".into()],
            setup_code: "import math".into(),
            format,
            entry_point: Some("inc".into()),
            prompt: Some("def inc(x):\n".into()),
        }
    }

    #[test]
    fn requests_follow_the_problem_format() {
        let mbpp = score_request(&problem(TestFormat::Mbpp), "def inc(x): return x + 1");
        assert_eq!(mbpp.format(), WireFormat::Mbpp);
        assert_eq!(
            (mbpp.id.as_str(), mbpp.setup_code.as_str()),
            ("t", "import math")
        );
        assert_eq!(mbpp.code, "def inc(x): return x + 1");

        // A HumanEval body is completed with the prompt; a whole function is sent as is.
        let body = score_request(&problem(TestFormat::HumanEval), "    return x + 1\n");
        assert_eq!(body.format(), WireFormat::Humaneval);
        assert_eq!(body.code, "def inc(x):\n    return x + 1\n");
        assert_eq!(body.entry_point, "inc");
        assert_eq!(body.tests.len(), 1);
        let whole = score_request(
            &problem(TestFormat::HumanEval),
            "def inc(x):\n    return x + 1\n",
        );
        assert_eq!(whole.code, "def inc(x):\n    return x + 1\n");

        let generic = score_request(&problem(TestFormat::Generic), "def inc(x): return x + 1");
        assert_eq!(generic.format(), WireFormat::Generic);
        assert_eq!(generic.setup_code, "import math");
    }
}
