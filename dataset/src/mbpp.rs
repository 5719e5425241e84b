//! MBPP (Mostly Basic Python Problems, Austin et al. 2021, CC BY 4.0).
//!
//! Rows come in two shapes on the Hugging Face hub (`google-research-datasets/mbpp`):
//! the original `full` release (`text`, `test_setup_code`, `challenge_test_list`) and
//! `sanitized` (`prompt`, `test_imports`). Both load into [`Problem`]s.
//!
//! The standard splits are task-id ranges: prompt 1–10, test 11–510, validation 511–600,
//! train 601–974. tgrpo holds the test split out for evaluation and pools the other
//! three, shuffling them with a fixed seed into its own train and validation sets
//! ([`pooled_split`]), as the Python original did.

use std::ops::RangeInclusive;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Deserialize;

use crate::problem::defines_function;
use crate::{DatasetError, Problem, Result, TestFormat, jsonl};

/// Task ids of the held-out MBPP test split.
pub const TEST_TASK_IDS: RangeInclusive<u64> = 11..=510;

/// The seed and fraction the data stage uses unless told otherwise.
pub const DEFAULT_SPLIT_SEED: u64 = 42;
/// Share of the pooled problems that goes to training.
pub const DEFAULT_TRAIN_FRACTION: f64 = 0.8;

/// One MBPP row as published, in either the `full` or the `sanitized` shape. Unknown
/// columns are ignored: this is a foreign format and may grow.
#[derive(Debug, Clone, Deserialize)]
pub struct MbppRow {
    /// Task number, 1–974.
    pub task_id: u64,
    /// Problem statement (`full`).
    #[serde(default)]
    pub text: Option<String>,
    /// Problem statement (`sanitized`).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Reference solution.
    pub code: String,
    /// Assert statements.
    pub test_list: Vec<String>,
    /// Code to run before the program (`full`).
    #[serde(default)]
    pub test_setup_code: Option<String>,
    /// Import lines the tests need (`sanitized`).
    #[serde(default)]
    pub test_imports: Option<Vec<String>>,
}

impl MbppRow {
    /// Converts the row, inferring the entry point from the reference solution.
    pub fn into_problem(self) -> Result<Problem, String> {
        let text = self
            .text
            .or(self.prompt)
            .ok_or_else(|| "row has neither `text` nor `prompt`".to_string())?;
        if self.test_list.is_empty() {
            return Err("row has an empty `test_list`".to_string());
        }
        let mut setup_code = self.test_setup_code.unwrap_or_default();
        if let Some(imports) = self.test_imports.filter(|imports| !imports.is_empty()) {
            if !setup_code.is_empty() {
                setup_code.push('\n');
            }
            setup_code.push_str(&imports.join("\n"));
        }
        let code = self.code.replace("\r\n", "\n").replace('\r', "\n");
        let entry_point = infer_entry_point(&code, &self.test_list);
        Ok(Problem {
            task_id: self.task_id.to_string(),
            text,
            reference: Some(code),
            tests: self.test_list,
            setup_code: setup_code.replace("\r\n", "\n"),
            format: TestFormat::Mbpp,
            entry_point,
            prompt: None,
        })
    }
}

/// The MBPP release compiled into the binary (CC BY 4.0, Google Research): the offline
/// fallback of the data stage and a fixture every crate's tests can rely on.
pub const EMBEDDED_JSONL: &str = include_str!("../data/mbpp/mbpp.jsonl");

/// Task ids whose reference solutions fail their own tests under CPython 3.11 (set
/// iteration order, `sys.getsizeof`): a correct executor fails exactly these.
pub const EMBEDDED_REFERENCE_FAILURES: &str = include_str!("../data/mbpp/mbpp_ref_failures.txt");

/// Parses the embedded release: all 974 problems in task order.
pub fn embedded() -> Vec<Problem> {
    parse_jsonl_str(EMBEDDED_JSONL, Path::new("<embedded mbpp.jsonl>"))
        .expect("the embedded MBPP release is valid")
}

/// Task ids listed in [`EMBEDDED_REFERENCE_FAILURES`].
pub fn embedded_reference_failures() -> Vec<String> {
    EMBEDDED_REFERENCE_FAILURES
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Parses MBPP JSONL text; `origin` names it in errors.
pub fn parse_jsonl_str(text: &str, origin: &Path) -> Result<Vec<Problem>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let malformed = |message: String| DatasetError::Malformed {
                path: origin.to_path_buf(),
                line: index + 1,
                message,
            };
            serde_json::from_str::<MbppRow>(line)
                .map_err(|err| malformed(err.to_string()))?
                .into_problem()
                .map_err(malformed)
        })
        .collect()
}

/// Loads an MBPP JSONL file (either shape); a malformed row fails the load, naming it.
pub fn load_jsonl(path: impl AsRef<Path>) -> Result<Vec<Problem>> {
    let path = path.as_ref();
    jsonl::read_lenient::<MbppRow>(path)?
        .into_iter()
        .map(|(line, row)| {
            row?.into_problem()
                .map_err(|message| DatasetError::Malformed {
                    path: path.to_path_buf(),
                    line,
                    message,
                })
        })
        .collect()
}

/// The function the tests call: a `def` of the reference that a test mentions.
fn infer_entry_point(code: &str, tests: &[String]) -> Option<String> {
    let defined: Vec<&str> = code
        .lines()
        .filter_map(|line| line.strip_prefix("def "))
        .filter_map(|rest| rest.split('(').next())
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    let mentioned = |name: &str| {
        tests
            .iter()
            .any(|test| identifiers(test).any(|identifier| identifier == name))
    };
    defined
        .iter()
        .find(|name| mentioned(name))
        .map(|name| name.to_string())
        .filter(|name| defines_function(code, name))
}

fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|word| !word.is_empty())
}

/// The task-id range a problem belongs to in the standard MBPP splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandardSplit {
    /// Task ids 1–10, the few-shot prompt examples.
    Prompt,
    /// Task ids 11–510, held out for evaluation.
    Test,
    /// Task ids 511–600.
    Validation,
    /// Task ids 601–974.
    Train,
}

impl StandardSplit {
    /// The split of an MBPP task id.
    pub fn of(task_id: u64) -> Self {
        match task_id {
            0..=10 => Self::Prompt,
            11..=510 => Self::Test,
            511..=600 => Self::Validation,
            _ => Self::Train,
        }
    }
}

/// tgrpo's three MBPP sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Splits {
    /// Training prompts (80 % of the pooled prompt+validation+train problems).
    pub train: Vec<Problem>,
    /// Validation problems (the other 20 %).
    pub validation: Vec<Problem>,
    /// The held-out standard test split, task ids 11–510, in task order.
    pub test: Vec<Problem>,
}

/// Holds the test split out and shuffles the rest into train and validation with `seed`.
///
/// The result depends only on the set of problems, the seed and the fraction, not on the
/// order the rows came in, so a hub download and a local file give the same split.
pub fn pooled_split(problems: Vec<Problem>, seed: u64, train_fraction: f64) -> Result<Splits> {
    if !(0.0..=1.0).contains(&train_fraction) {
        return Err(DatasetError::InvalidSplit(format!(
            "train fraction {train_fraction} is not within 0..=1"
        )));
    }
    let mut test = Vec::new();
    let mut pool = Vec::new();
    for problem in problems {
        let task_id: u64 = problem.task_id.parse().map_err(|_| {
            DatasetError::InvalidSplit(format!(
                "task id {:?} is not an MBPP number",
                problem.task_id
            ))
        })?;
        match StandardSplit::of(task_id) {
            StandardSplit::Test => test.push((task_id, problem)),
            _ => pool.push((task_id, problem)),
        }
    }
    test.sort_by_key(|(task_id, _)| *task_id);
    pool.sort_by_key(|(task_id, _)| *task_id);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    pool.shuffle(&mut rng);
    let train_len = (pool.len() as f64 * train_fraction).round() as usize;
    let validation = pool.split_off(train_len);
    Ok(Splits {
        train: pool.into_iter().map(|(_, problem)| problem).collect(),
        validation: validation.into_iter().map(|(_, problem)| problem).collect(),
        test: test.into_iter().map(|(_, problem)| problem).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBPP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mbpp");

    fn full_row(task_id: u64) -> MbppRow {
        MbppRow {
            task_id,
            text: Some(format!("task {task_id}")),
            prompt: None,
            code: "def f(x):\r\n    return x".into(),
            test_list: vec!["assert f(1) == 1".into()],
            test_setup_code: Some(String::new()),
            test_imports: None,
        }
    }

    #[test]
    fn entry_point_is_the_defined_function_the_tests_call() {
        let code =
            "import math\ndef helper(a):\n    return a\ndef area(r):\n    return helper(r)\n";
        let tests = vec!["assert math.isclose(area(2), 2)".to_string()];
        assert_eq!(infer_entry_point(code, &tests).as_deref(), Some("area"));
        assert_eq!(infer_entry_point(code, &["assert g(1)".to_string()]), None);
    }

    #[test]
    fn sanitized_rows_use_prompt_and_imports() {
        let row: MbppRow = serde_json::from_str(
            r#"{"task_id":2,"prompt":"p","code":"def f():\n  return 1","test_list":["assert f()==1"],"test_imports":["import math"],"source_file":"x"}"#,
        )
        .unwrap();
        let problem = row.into_problem().unwrap();
        assert_eq!(problem.text, "p");
        assert_eq!(problem.setup_code, "import math");
        assert_eq!(problem.entry_point.as_deref(), Some("f"));
        assert_eq!(problem.reference.as_deref(), Some("def f():\n  return 1"));
    }

    #[test]
    fn rows_without_statement_are_rejected() {
        let mut row = full_row(1);
        row.text = None;
        assert!(row.into_problem().unwrap_err().contains("text"));
    }

    #[test]
    fn pooled_split_is_seeded_order_independent_and_holds_test_out() {
        let problems: Vec<Problem> = (1..=974)
            .map(|id| full_row(id).into_problem().unwrap())
            .collect();
        let splits = pooled_split(problems.clone(), 42, 0.8).unwrap();
        assert_eq!(splits.test.len(), 500);
        assert_eq!(splits.test.first().unwrap().task_id, "11");
        assert_eq!(splits.train.len() + splits.validation.len(), 474);
        assert_eq!(splits.train.len(), 379);
        assert!(
            splits
                .train
                .iter()
                .chain(&splits.validation)
                .all(|problem| {
                    !TEST_TASK_IDS.contains(&problem.task_id.parse::<u64>().unwrap())
                })
        );

        let mut reversed = problems.clone();
        reversed.reverse();
        assert_eq!(pooled_split(reversed, 42, 0.8).unwrap(), splits);
        let other_seed = pooled_split(problems, 43, 0.8).unwrap();
        assert_ne!(other_seed.train, splits.train);
        assert!(pooled_split(Vec::new(), 1, 1.5).is_err());
    }

    #[test]
    fn loads_the_real_mbpp_release() {
        let path = Path::new(MBPP_DIR).join("mbpp.jsonl");
        let problems = load_jsonl(&path).unwrap();
        assert_eq!(problems, embedded());
        assert_eq!(embedded_reference_failures(), vec!["341", "596", "642"]);
        assert_eq!(problems.len(), 974);
        let with_entry_point = problems.iter().filter(|p| p.entry_point.is_some()).count();
        assert!(
            with_entry_point >= 960,
            "{with_entry_point} of 974 have an entry point"
        );
        let with_setup: Vec<_> = problems
            .iter()
            .filter(|p| !p.setup_code.trim().is_empty())
            .map(|p| p.task_id.as_str())
            .collect();
        assert_eq!(with_setup, vec!["367", "927"]);
        assert!(
            problems
                .iter()
                .all(|p| !p.reference.as_ref().unwrap().contains('\r'))
        );
    }

    #[test]
    fn malformed_row_is_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mbpp.jsonl");
        std::fs::write(
            &path,
            "{\"task_id\":1,\"text\":\"t\",\"code\":\"c\",\"test_list\":[\"assert 1\"]}\n{\"task_id\":2,\"code\":\"c\",\"test_list\":[\"a\"]}\n",
        )
        .unwrap();
        let error = load_jsonl(&path).unwrap_err().to_string();
        assert!(error.contains("mbpp.jsonl:2:"), "{error}");
    }
}
