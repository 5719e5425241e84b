//! Constructors for the common shapes of `ScoreRequest`, so callers need not remember
//! which proto fields each test format uses. Time limit and reward default to the
//! executor's (`timeout_s: None`, `REWARD_KIND_BINARY`); set the fields afterwards to
//! change them.

use tgrpo_proto::executor::{RewardKind, ScoreRequest, TestFormat};

/// An MBPP-style request: the program, then `setup_code`, then each test statement.
pub fn mbpp<I, S>(
    id: impl Into<String>,
    code: impl Into<String>,
    tests: I,
    setup_code: impl Into<String>,
) -> ScoreRequest
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    ScoreRequest {
        id: id.into(),
        code: code.into(),
        tests: tests.into_iter().map(Into::into).collect(),
        setup_code: setup_code.into(),
        format: TestFormat::Mbpp as i32,
        reward_kind: RewardKind::Binary as i32,
        ..ScoreRequest::default()
    }
}

/// A HumanEval request: `program` is the prompt plus the completion (the whole
/// program), `test` defines `check(candidate)`, which is called with `entry_point`.
pub fn humaneval(
    id: impl Into<String>,
    program: impl Into<String>,
    test: impl Into<String>,
    entry_point: impl Into<String>,
) -> ScoreRequest {
    ScoreRequest {
        id: id.into(),
        code: program.into(),
        tests: vec![test.into()],
        format: TestFormat::Humaneval as i32,
        entry_point: entry_point.into(),
        reward_kind: RewardKind::Binary as i32,
        ..ScoreRequest::default()
    }
}

/// A generic request: each test is a whole program run against the program's names.
pub fn generic<I, S>(id: impl Into<String>, code: impl Into<String>, tests: I) -> ScoreRequest
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    ScoreRequest {
        id: id.into(),
        code: code.into(),
        tests: tests.into_iter().map(Into::into).collect(),
        format: TestFormat::Generic as i32,
        reward_kind: RewardKind::Binary as i32,
        ..ScoreRequest::default()
    }
}
