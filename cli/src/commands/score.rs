//! `tgrpo score`: scores a JSONL file of programs with an in-process sandbox pool, or
//! against remote executors when `--endpoints` is given.
//!
//! Input, one JSON object per line: `{"id", "code", "tests": [...], "setup_code"?,
//! "format"?: "mbpp"|"humaneval"|"generic", "entry_point"?, "timeout_s"?}` (other
//! keys are ignored). Output, in input order: `{"id", "verdict":
//! "passed"|"failed"|"timeout"|"error", "tests_passed", "tests_total", "reward",
//! "duration_ms", "detail"}`. A malformed line gets an `error` verdict naming the line;
//! the rest is still scored. A summary goes to stdout, ending with `N passed, N failed`.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use tgrpo_executor::proto::{RewardKind, ScoreRequest, ScoreResponse, TestFormat, Verdict};
use tgrpo_executor::{ClientConfig, Scorer};

use super::sandbox_args::SandboxArgs;

/// Lines scored per batch: bounds memory on huge files while keeping the pool busy.
const BATCH_LINES: usize = 2048;

/// Score a JSONL file of programs against their tests.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Input JSONL: one program with its tests per line.
    #[arg(long)]
    pub input: PathBuf,

    /// Output JSONL: one verdict per input line, in input order.
    #[arg(long)]
    pub output: PathBuf,

    /// Remote executors (host:port, comma-separated); without them an in-process pool
    /// scores.
    #[arg(long, env = "TGRPO_EXECUTOR_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,

    /// How per-test results become the reward.
    #[arg(long, value_enum, default_value = "binary")]
    pub reward: RewardArg,

    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Reward kinds on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RewardArg {
    /// 1 when every test passes, else 0.
    Binary,
    /// Fraction of tests passed.
    Partial,
    /// Weighted fraction with penalties for syntax errors and timeouts.
    Scaled,
}

impl RewardArg {
    fn kind(self) -> RewardKind {
        match self {
            Self::Binary => RewardKind::Binary,
            Self::Partial => RewardKind::Partial,
            Self::Scaled => RewardKind::Scaled,
        }
    }
}

#[derive(Debug, Deserialize)]
struct InputLine {
    id: String,
    code: String,
    tests: Vec<String>,
    #[serde(default)]
    setup_code: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    entry_point: Option<String>,
    #[serde(default)]
    timeout_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct OutputLine<'a> {
    id: &'a str,
    verdict: &'static str,
    tests_passed: u32,
    tests_total: u32,
    reward: f64,
    duration_ms: u64,
    detail: &'a str,
}

/// One input line: a request to score, or the response for a malformed line.
enum Parsed {
    Request(ScoreRequest),
    Malformed(ScoreResponse),
}

fn parse_line(line: &str, number: usize, reward: RewardKind) -> Parsed {
    let malformed = |id: String, reason: String| {
        Parsed::Malformed(ScoreResponse {
            id,
            verdict: Verdict::Error as i32,
            detail: format!("input line {number}: {reason}"),
            ..ScoreResponse::default()
        })
    };
    let input: InputLine = match serde_json::from_str(line) {
        Ok(input) => input,
        Err(err) => {
            // Keep the caller's id when the line at least has one.
            let id = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|value| {
                    value
                        .get("id")
                        .and_then(|id| id.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("line-{number}"));
            return malformed(id, format!("malformed: {err}"));
        }
    };
    let format = match input.format.as_deref() {
        None | Some("mbpp") => TestFormat::Mbpp,
        Some("humaneval") => TestFormat::Humaneval,
        Some("generic") => TestFormat::Generic,
        Some(other) => {
            return malformed(
                input.id,
                format!("unknown format {other:?} (expected mbpp, humaneval or generic)"),
            );
        }
    };
    Parsed::Request(ScoreRequest {
        id: input.id,
        code: input.code,
        tests: input.tests,
        setup_code: input.setup_code,
        format: format as i32,
        entry_point: input.entry_point.unwrap_or_default(),
        timeout_s: input.timeout_s,
        reward_kind: reward as i32,
        ..ScoreRequest::default()
    })
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Passed => "passed",
        Verdict::Failed => "failed",
        Verdict::Timeout => "timeout",
        Verdict::Error | Verdict::Unspecified => "error",
    }
}

#[derive(Default)]
struct Summary {
    total: usize,
    passed: usize,
    failed: usize,
    timeout: usize,
    error: usize,
    malformed: usize,
    reward_sum: f64,
}

impl Summary {
    fn add(&mut self, response: &ScoreResponse) {
        self.total += 1;
        self.reward_sum += response.reward;
        match response.verdict() {
            Verdict::Passed => self.passed += 1,
            Verdict::Failed => self.failed += 1,
            Verdict::Timeout => self.timeout += 1,
            Verdict::Error | Verdict::Unspecified => self.error += 1,
        }
    }
}

/// Scores the input file and writes the output file.
pub async fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let scorer = if args.endpoints.is_empty() {
        let config = args.sandbox.to_config();
        config.validate()?;
        Scorer::local(config).await?
    } else {
        Scorer::remote(&args.endpoints, ClientConfig::default())?
    };
    let input = std::fs::File::open(&args.input)
        .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", args.input.display()))?;
    let output = std::fs::File::create(&args.output)
        .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", args.output.display()))?;
    let mut output = BufWriter::new(output);
    let reward = args.reward.kind();
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut lines = std::io::BufReader::new(input).lines().enumerate();
    loop {
        let mut batch: Vec<Parsed> = Vec::with_capacity(BATCH_LINES);
        for (index, line) in lines.by_ref() {
            let line = line.map_err(|err| {
                anyhow::anyhow!("{} line {}: {err}", args.input.display(), index + 1)
            })?;
            if line.trim().is_empty() {
                continue;
            }
            batch.push(parse_line(&line, index + 1, reward));
            if batch.len() == BATCH_LINES {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        let requests: Vec<ScoreRequest> = batch
            .iter()
            .filter_map(|parsed| match parsed {
                Parsed::Request(request) => Some(request.clone()),
                Parsed::Malformed(_) => None,
            })
            .collect();
        let mut scored = scorer.score_many(requests).await?.into_iter();
        for parsed in batch {
            let response = match parsed {
                Parsed::Request(_) => scored.next().expect("one response per request"),
                Parsed::Malformed(response) => {
                    summary.malformed += 1;
                    response
                }
            };
            summary.add(&response);
            let line = OutputLine {
                id: &response.id,
                verdict: verdict_name(response.verdict()),
                tests_passed: response.tests_passed,
                tests_total: response.tests_total,
                reward: response.reward,
                duration_ms: response.duration_ms,
                detail: &response.detail,
            };
            serde_json::to_writer(&mut output, &line)?;
            output.write_all(b"\n")?;
        }
    }
    output.flush()?;
    let elapsed = started.elapsed().as_secs_f64();
    let mean = if summary.total > 0 {
        summary.reward_sum / summary.total as f64
    } else {
        0.0
    };
    println!(
        "scored {} programs from {} in {:.1} s ({:.1}/s) -> {}",
        summary.total,
        args.input.display(),
        elapsed,
        summary.total as f64 / elapsed.max(1e-9),
        args.output.display()
    );
    println!(
        "verdicts: passed {}, failed {}, timeout {}, error {} (malformed lines {}); mean reward {:.4}",
        summary.passed, summary.failed, summary.timeout, summary.error, summary.malformed, mean
    );
    println!(
        "{} passed, {} failed",
        summary.passed,
        summary.total - summary.passed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_name_the_line_and_keep_the_id() {
        let Parsed::Malformed(response) =
            parse_line(r#"{"id": "x7", "code": 3}"#, 7, RewardKind::Binary)
        else {
            panic!("a line with a numeric code is malformed");
        };
        assert_eq!(response.id, "x7");
        assert!(
            response.detail.starts_with("input line 7:"),
            "{}",
            response.detail
        );
        let Parsed::Malformed(response) = parse_line("not json", 3, RewardKind::Binary) else {
            panic!("not json is malformed");
        };
        assert_eq!(response.id, "line-3");
        let Parsed::Malformed(response) = parse_line(
            r#"{"id": "f", "code": "", "tests": ["assert 1"], "format": "cobol"}"#,
            2,
            RewardKind::Binary,
        ) else {
            panic!("an unknown format is malformed");
        };
        assert!(response.detail.contains("cobol"));
    }

    #[test]
    fn well_formed_lines_become_requests() {
        let Parsed::Request(request) = parse_line(
            r#"{"id": "a", "code": "x = 1", "tests": ["assert x == 1"], "format": "humaneval", "entry_point": "f", "timeout_s": 2.5, "extra": true}"#,
            1,
            RewardKind::Partial,
        ) else {
            panic!("well-formed line");
        };
        assert_eq!(request.format(), TestFormat::Humaneval);
        assert_eq!(request.entry_point, "f");
        assert_eq!(request.timeout_s, Some(2.5));
        assert_eq!(request.reward_kind(), RewardKind::Partial);
    }
}
