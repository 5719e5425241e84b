//! From a `ScoreRequest` to a `ScoreResponse` on a local pool: request validation (a
//! malformed request gets a `VERDICT_ERROR` response naming the problem), the verdict
//! rules, and the reward.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tgrpo_proto::executor::{
    RewardKind, ScoreRequest, ScoreResponse, TestFormat, TestOutcome, TestResult, Verdict,
};

use crate::config::ExecutorConfig;
use crate::error::ExecutorError;
use crate::reward;
use crate::sandbox::{ExecutionOutcome, Job, JobFormat, SandboxPool, TestStatus};

/// Scores requests on an in-process [`SandboxPool`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalScorer {
    pool: SandboxPool,
    config: Arc<ExecutorConfig>,
}

impl LocalScorer {
    /// Starts a pool for `config` (see [`SandboxPool::start`]).
    pub async fn start(config: ExecutorConfig) -> Result<Self, ExecutorError> {
        let pool = SandboxPool::start(&config).await?;
        Ok(Self {
            pool,
            config: Arc::new(config),
        })
    }

    /// The pool underneath.
    pub fn pool(&self) -> &SandboxPool {
        &self.pool
    }

    /// The configuration the pool runs with.
    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    /// Scores one request, waiting for a free slot. Only a closed pool is an error.
    pub async fn score(&self, request: ScoreRequest) -> Result<ScoreResponse, ExecutorError> {
        let started = Instant::now();
        crate::metrics::request_taken();
        let response = self.score_inner(request, started).await?;
        crate::metrics::response_sent(response.verdict, started.elapsed());
        Ok(response)
    }

    async fn score_inner(
        &self,
        request: ScoreRequest,
        started: Instant,
    ) -> Result<ScoreResponse, ExecutorError> {
        let job = match to_job(&request, &self.config) {
            Ok(job) => job,
            Err(reason) => return Ok(invalid_request(&request, &reason, started.elapsed())),
        };
        let outcome = match self.pool.execute(job).await {
            Ok(outcome) => outcome,
            Err(ExecutorError::PoolClosed) => return Err(ExecutorError::PoolClosed),
            Err(err) => {
                tracing::error!(id = %request.id, %err, "execution failed inside the executor");
                return Ok(error_response(
                    &request,
                    &format!("executor internal error: {err}"),
                    started.elapsed(),
                ));
            }
        };
        Ok(assemble(&request, &outcome, &self.config))
    }
}

/// Checks a request and turns it into a job; the error names the bad field.
pub(crate) fn to_job(request: &ScoreRequest, config: &ExecutorConfig) -> Result<Job, String> {
    let format = match TestFormat::try_from(request.format) {
        Ok(TestFormat::Unspecified | TestFormat::Mbpp) => JobFormat::Mbpp,
        Ok(TestFormat::Humaneval) => JobFormat::HumanEval,
        Ok(TestFormat::Generic) => JobFormat::Generic,
        Err(_) => return Err(format!("unknown format {}", request.format)),
    };
    if RewardKind::try_from(request.reward_kind).is_err() {
        return Err(format!("unknown reward_kind {}", request.reward_kind));
    }
    if request.tests.is_empty() {
        return Err("no tests: a program cannot be scored against nothing".into());
    }
    if request.tests.len() > config.max_tests {
        return Err(format!(
            "{} tests exceed the limit of {}",
            request.tests.len(),
            config.max_tests
        ));
    }
    let too_big = |field: &str, text: &str| {
        (text.len() > config.max_code_bytes).then(|| {
            format!(
                "{field} is {} bytes, over the limit of {}",
                text.len(),
                config.max_code_bytes
            )
        })
    };
    if let Some(reason) = too_big("code", &request.code) {
        return Err(reason);
    }
    if let Some(reason) = too_big("setup_code", &request.setup_code) {
        return Err(reason);
    }
    for (index, test) in request.tests.iter().enumerate() {
        if let Some(reason) = too_big(&format!("tests[{index}]"), test) {
            return Err(reason);
        }
    }
    let entry_point = request.entry_point.trim().to_string();
    if format == JobFormat::HumanEval && entry_point.is_empty() {
        return Err("entry_point is required for the humaneval format".into());
    }
    if !entry_point.is_empty() && !is_identifier(&entry_point) {
        return Err(format!(
            "entry_point {entry_point:?} is not a python identifier"
        ));
    }
    let timeout = match request.timeout_s {
        None => config.default_timeout(),
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            if seconds > config.max_timeout_s {
                return Err(format!(
                    "timeout_s {seconds} exceeds this executor's maximum of {}",
                    config.max_timeout_s
                ));
            }
            Duration::from_secs_f64(seconds)
        }
        Some(seconds) => return Err(format!("timeout_s must be positive, got {seconds}")),
    };
    if let Some(scaled) = &request.scaled {
        let values = [
            scaled.pass_weight,
            scaled.all_pass_bonus,
            scaled.syntax_error_penalty,
            scaled.timeout_penalty,
        ];
        if values.iter().flatten().any(|value| !value.is_finite()) {
            return Err("scaled reward parameters must be finite".into());
        }
    }
    Ok(Job {
        code: request.code.clone(),
        tests: request.tests.clone(),
        setup_code: request.setup_code.clone(),
        format,
        entry_point,
        timeout,
    })
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first == '_' || first.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// The response to a request that was not run.
pub(crate) fn invalid_request(
    request: &ScoreRequest,
    reason: &str,
    elapsed: Duration,
) -> ScoreResponse {
    error_response(request, &format!("invalid request: {reason}"), elapsed)
}

fn error_response(request: &ScoreRequest, detail: &str, elapsed: Duration) -> ScoreResponse {
    let tests_total = request.tests.len() as u32;
    ScoreResponse {
        id: request.id.clone(),
        verdict: Verdict::Error as i32,
        tests_passed: 0,
        tests_total,
        reward: 0.0,
        duration_ms: elapsed.as_millis() as u64,
        detail: detail.to_string(),
        tests: vec![
            TestResult {
                outcome: TestOutcome::NotRun as i32,
                message: String::new(),
            };
            request.tests.len()
        ],
        ..ScoreResponse::default()
    }
}

/// The verdict rules (first match wins): does not compile → error; ran out of time →
/// timeout; the program or setup raised before the tests → error; the test process
/// did not finish → error; every test passed → passed; else failed.
pub(crate) fn assemble(
    request: &ScoreRequest,
    outcome: &ExecutionOutcome,
    config: &ExecutorConfig,
) -> ScoreResponse {
    let tests_total = outcome.tests.len() as u32;
    let tests_passed = outcome.passed() as u32;
    let timeout_s = request.timeout_s.unwrap_or(config.default_timeout_s);
    let (verdict, detail) = if let Some(message) = &outcome.syntax_error {
        (Verdict::Error, format!("syntax error: {message}"))
    } else if outcome.timed_out {
        (
            Verdict::Timeout,
            format!(
                "time limit of {timeout_s} s reached ({tests_passed}/{tests_total} tests passed)"
            ),
        )
    } else if let Some(message) = &outcome.program_error {
        (Verdict::Error, message.clone())
    } else if !outcome.finished {
        (
            Verdict::Error,
            "the test process ended before reporting every test".to_string(),
        )
    } else if tests_passed == tests_total && tests_total > 0 {
        (
            Verdict::Passed,
            format!("{tests_passed}/{tests_total} tests passed"),
        )
    } else {
        (Verdict::Failed, first_failure(request, outcome))
    };
    let kind = RewardKind::try_from(request.reward_kind).unwrap_or(RewardKind::Binary);
    let scaled = reward::scaled_params(&config.scaled_reward, request.scaled.as_ref());
    let syntax_error = outcome.syntax_error.is_some();
    ScoreResponse {
        id: request.id.clone(),
        verdict: verdict as i32,
        tests_passed,
        tests_total,
        reward: reward::reward(
            kind,
            &scaled,
            verdict,
            tests_passed,
            tests_total,
            syntax_error,
        ),
        duration_ms: outcome.elapsed.as_millis() as u64,
        detail,
        tests: outcome
            .tests
            .iter()
            .map(|test| TestResult {
                outcome: match test.status {
                    TestStatus::Passed => TestOutcome::Passed,
                    TestStatus::Failed => TestOutcome::Failed,
                    TestStatus::Error => TestOutcome::Error,
                    TestStatus::NotRun => TestOutcome::NotRun,
                } as i32,
                message: test.message.clone(),
            })
            .collect(),
        syntax_error,
        stdout: outcome.stdout.clone(),
        stderr: outcome.stderr.clone(),
        stdout_dropped_bytes: outcome.stdout_dropped,
        stderr_dropped_bytes: outcome.stderr_dropped,
    }
}

fn first_failure(request: &ScoreRequest, outcome: &ExecutionOutcome) -> String {
    let passed = outcome.passed();
    let total = outcome.tests.len();
    let Some((index, test)) = outcome
        .tests
        .iter()
        .enumerate()
        .find(|(_, test)| test.status != TestStatus::Passed)
    else {
        return format!("{passed}/{total} tests passed");
    };
    let source = request
        .tests
        .get(index)
        .and_then(|test| test.lines().find(|line| !line.trim().is_empty()))
        .unwrap_or_default()
        .trim();
    let source: String = source.chars().take(200).collect();
    let what = match test.status {
        TestStatus::Failed => "failed",
        TestStatus::Error => "raised",
        _ => "did not run",
    };
    let message = if test.message.is_empty() {
        String::new()
    } else {
        format!(": {}", test.message)
    };
    format!("{passed}/{total} tests passed; test {index} `{source}` {what}{message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::TestRecord;

    fn request() -> ScoreRequest {
        ScoreRequest {
            id: "r1".into(),
            code: "def f(x):\n    return x\n".into(),
            tests: vec!["assert f(1) == 1".into(), "assert f(2) == 3".into()],
            ..ScoreRequest::default()
        }
    }

    fn outcome(statuses: &[TestStatus]) -> ExecutionOutcome {
        ExecutionOutcome {
            tests: statuses
                .iter()
                .map(|&status| TestRecord {
                    status,
                    message: String::new(),
                })
                .collect(),
            syntax_error: None,
            program_error: None,
            finished: true,
            timed_out: false,
            elapsed: Duration::from_millis(3),
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_dropped: 0,
            stderr_dropped: 0,
        }
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let config = ExecutorConfig::default();
        let mut bad = request();
        bad.tests.clear();
        assert!(to_job(&bad, &config).unwrap_err().contains("no tests"));
        let mut bad = request();
        bad.timeout_s = Some(-1.0);
        assert!(to_job(&bad, &config).unwrap_err().contains("timeout_s"));
        let mut bad = request();
        bad.timeout_s = Some(1e6);
        assert!(to_job(&bad, &config).unwrap_err().contains("maximum"));
        let mut bad = request();
        bad.format = TestFormat::Humaneval as i32;
        assert!(to_job(&bad, &config).unwrap_err().contains("entry_point"));
        bad.entry_point = "not valid".into();
        assert!(to_job(&bad, &config).unwrap_err().contains("identifier"));
        let mut bad = request();
        bad.format = 99;
        assert!(to_job(&bad, &config).unwrap_err().contains("format"));
        assert!(to_job(&request(), &config).is_ok());
    }

    #[test]
    fn verdict_rules() {
        let config = ExecutorConfig::default();
        let req = request();
        let passed = assemble(
            &req,
            &outcome(&[TestStatus::Passed, TestStatus::Passed]),
            &config,
        );
        assert_eq!(passed.verdict(), Verdict::Passed);
        assert_eq!(passed.reward, 1.0);

        let failed = assemble(
            &req,
            &outcome(&[TestStatus::Passed, TestStatus::Failed]),
            &config,
        );
        assert_eq!(failed.verdict(), Verdict::Failed);
        assert_eq!(failed.tests_passed, 1);
        assert!(
            failed.detail.contains("test 1 `assert f(2) == 3` failed"),
            "{}",
            failed.detail
        );

        let mut timed_out = outcome(&[TestStatus::Passed, TestStatus::NotRun]);
        timed_out.timed_out = true;
        timed_out.finished = false;
        let response = assemble(&req, &timed_out, &config);
        assert_eq!(response.verdict(), Verdict::Timeout);

        let mut syntax = outcome(&[TestStatus::NotRun, TestStatus::NotRun]);
        syntax.syntax_error = Some("SyntaxError: invalid syntax".into());
        let mut scaled = req.clone();
        scaled.reward_kind = RewardKind::Scaled as i32;
        let response = assemble(&scaled, &syntax, &config);
        assert_eq!(response.verdict(), Verdict::Error);
        assert!(response.syntax_error);
        assert_eq!(response.reward, config.scaled_reward.syntax_error_penalty);

        let mut unfinished = outcome(&[TestStatus::Passed, TestStatus::Passed]);
        unfinished.finished = false;
        assert_eq!(
            assemble(&req, &unfinished, &config).verdict(),
            Verdict::Error
        );
    }
}
