//! The problem type shared by every stage.

use serde::{Deserialize, Serialize};

/// How a problem's tests are written, which decides how the executor runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestFormat {
    /// Setup code, the program, then each test is one `assert` statement.
    #[default]
    Mbpp,
    /// The program is prompt + completion; the single test defines `check(candidate)`,
    /// which is called with the entry point.
    HumanEval,
    /// Each test is an arbitrary program run after the code.
    Generic,
}

/// One coding task with the tests that decide whether an answer is right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    /// Stable identifier, unique within a dataset (`"11"` for MBPP, `"HumanEval/0"`).
    pub task_id: String,
    /// The task statement shown to the model.
    pub text: String,
    /// A reference solution, when the dataset has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The tests; their meaning depends on [`Problem::format`].
    pub tests: Vec<String>,
    /// Code run before the program (MBPP's `test_setup_code`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub setup_code: String,
    /// How [`Problem::tests`] are written.
    #[serde(default)]
    pub format: TestFormat,
    /// The function the tests call, when known (HumanEval's `entry_point`; inferred for MBPP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<String>,
    /// Code the answer continues (HumanEval's function signature and docstring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

impl Problem {
    /// The full program to score for a model's answer: HumanEval answers that only hold
    /// the function body are completed with the prompt, other formats run the code as is.
    pub fn program_for(&self, code: &str) -> String {
        match (&self.format, &self.prompt, &self.entry_point) {
            (TestFormat::HumanEval, Some(prompt), Some(entry_point))
                if !defines_function(code, entry_point) =>
            {
                format!("{prompt}{code}")
            }
            _ => code.to_string(),
        }
    }
}

/// Whether `code` has a top-level or nested `def name(`.
pub(crate) fn defines_function(code: &str, name: &str) -> bool {
    code.lines().any(|line| {
        line.trim_start()
            .strip_prefix("def ")
            .and_then(|rest| rest.trim_start().strip_prefix(name))
            .is_some_and(|rest| rest.trim_start().starts_with('('))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn humaneval_problem() -> Problem {
        Problem {
            task_id: "HumanEval/0".into(),
            text: "add".into(),
            reference: None,
            tests: vec!["def check(candidate):\n    assert candidate(1, 2) == 3\n".into()],
            setup_code: String::new(),
            format: TestFormat::HumanEval,
            entry_point: Some("add".into()),
            prompt: Some("def add(a, b):\n    \"\"\"Add.\"\"\"\n".into()),
        }
    }

    #[test]
    fn humaneval_body_is_completed_with_the_prompt() {
        let problem = humaneval_problem();
        let program = problem.program_for("    return a + b\n");
        assert!(program.starts_with("def add(a, b):"));
        assert!(program.ends_with("    return a + b\n"));
    }

    #[test]
    fn humaneval_full_function_is_kept_as_is() {
        let problem = humaneval_problem();
        let code = "def add(a, b):\n    return a + b\n";
        assert_eq!(problem.program_for(code), code);
    }

    #[test]
    fn defines_function_needs_the_exact_name() {
        assert!(defines_function("def add(a):\n  pass", "add"));
        assert!(defines_function(
            "class A:\n    def  add (self): pass",
            "add"
        ));
        assert!(!defines_function("def adder(a): pass", "add"));
        assert!(!defines_function("add(1)", "add"));
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let err =
            serde_json::from_str::<Problem>(r#"{"task_id":"1","text":"t","tests":[],"colour":1}"#)
                .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
