//! HumanEval (Chen et al. 2021) in the openai/human-eval JSONL format: `task_id`,
//! `prompt` (signature and docstring), `canonical_solution` (the body), `test` (defines
//! `check(candidate)`), `entry_point`.

use std::path::Path;

use serde::Deserialize;

use crate::{DatasetError, Problem, Result, TestFormat, jsonl};

/// One HumanEval row as published; unknown columns are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct HumanEvalRow {
    /// `HumanEval/N`.
    pub task_id: String,
    /// The code the answer continues.
    pub prompt: String,
    /// The reference body.
    #[serde(default)]
    pub canonical_solution: Option<String>,
    /// A test program defining `check(candidate)`.
    pub test: String,
    /// The function passed to `check`.
    pub entry_point: String,
}

impl From<HumanEvalRow> for Problem {
    fn from(row: HumanEvalRow) -> Self {
        let reference = row
            .canonical_solution
            .map(|body| format!("{}{}", row.prompt, body));
        Problem {
            task_id: row.task_id,
            text: row.prompt.clone(),
            reference,
            tests: vec![row.test],
            setup_code: String::new(),
            format: TestFormat::HumanEval,
            entry_point: Some(row.entry_point),
            prompt: Some(row.prompt),
        }
    }
}

/// Loads a HumanEval JSONL file; a malformed row fails the load, naming its line.
pub fn load_jsonl(path: impl AsRef<Path>) -> Result<Vec<Problem>> {
    let path = path.as_ref();
    jsonl::read_lenient::<HumanEvalRow>(path)?
        .into_iter()
        .map(|(line, row)| {
            let row = row?;
            if row.entry_point.trim().is_empty() {
                return Err(DatasetError::Malformed {
                    path: path.to_path_buf(),
                    line,
                    message: "empty `entry_point`".into(),
                });
            }
            Ok(Problem::from(row))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_humaneval_problems_with_full_reference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("he.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"task_id":"HumanEval/0","prompt":"def add(a, b):\n","canonical_solution":"    return a + b\n","test":"def check(candidate):\n    assert candidate(1, 2) == 3\n","entry_point":"add"}"#,
                "\n",
                r#"{"task_id":"HumanEval/1","prompt":"def f():\n","test":"def check(c): pass","entry_point":" "}"#,
                "\n"
            ),
        )
        .unwrap();
        let error = load_jsonl(&path).unwrap_err().to_string();
        assert!(error.contains("he.jsonl:2: empty `entry_point`"), "{error}");

        let first: HumanEvalRow = serde_json::from_str(
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let problem = Problem::from(first);
        assert_eq!(problem.format, TestFormat::HumanEval);
        assert_eq!(
            problem.reference.as_deref(),
            Some("def add(a, b):\n    return a + b\n")
        );
        assert_eq!(problem.entry_point.as_deref(), Some("add"));
    }
}
