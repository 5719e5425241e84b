//! The question a policy or a teacher is asked about a problem.
//!
//! One rendering for every consumer: the teacher's traces, the rollout workers' samples
//! and the eval stage must see the same prompt, or the teacher-SFT signal would teach an
//! answer format the policy is never asked for.

use crate::{Problem, TestFormat};

/// The closing instruction; the code extractor relies on the answer being fenced.
pub const ANSWER_INSTRUCTION: &str =
    "Answer with the complete solution in one ```python code block.";

/// The user message for `problem`: its statement, the tests the code must pass (MBPP
/// shows them, as the original benchmark does, so the function name and signature are
/// known), and the instruction to answer in one Python code block.
pub fn user_message(problem: &Problem) -> String {
    match problem.format {
        TestFormat::HumanEval => {
            let code = problem.prompt.as_deref().unwrap_or(&problem.text);
            format!(
                "Complete the following Python function.\n\n```python\n{}\n```\n\n{ANSWER_INSTRUCTION}",
                code.trim_end()
            )
        }
        TestFormat::Mbpp | TestFormat::Generic => {
            let mut message = problem.text.trim().to_string();
            if problem.format == TestFormat::Mbpp && !problem.tests.is_empty() {
                message.push_str("\nYour code should pass these tests:\n\n");
                for test in &problem.tests {
                    message.push_str(test.trim());
                    message.push('\n');
                }
            }
            message.push('\n');
            message.push_str(ANSWER_INSTRUCTION);
            message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbpp_prompt_has_text_tests_and_instruction_in_order() {
        let problem = Problem {
            task_id: "2".into(),
            text: " Write a function to add. ".into(),
            reference: None,
            tests: vec![
                "assert add(1, 2) == 3".into(),
                "assert add(0, 0) == 0".into(),
            ],
            setup_code: String::new(),
            format: TestFormat::Mbpp,
            entry_point: Some("add".into()),
            prompt: None,
        };
        assert_eq!(
            user_message(&problem),
            "Write a function to add.\nYour code should pass these tests:\n\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n\nAnswer with the complete solution in one ```python code block."
        );
    }

    #[test]
    fn humaneval_prompt_fences_the_signature_and_hides_the_tests() {
        let problem = Problem {
            task_id: "HumanEval/0".into(),
            text: "def add(a, b):\n".into(),
            reference: None,
            tests: vec!["def check(candidate): assert candidate(1, 2) == 3".into()],
            setup_code: String::new(),
            format: TestFormat::HumanEval,
            entry_point: Some("add".into()),
            prompt: Some("def add(a, b):\n    \"\"\"Add.\"\"\"\n".into()),
        };
        let message = user_message(&problem);
        assert!(
            message.contains("```python\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n```"),
            "{message}"
        );
        assert!(!message.contains("check"));
    }
}
