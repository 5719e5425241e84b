//! The reference teacher: answers each problem with its own reference solution, behind the
//! same [`Teacher`] interface as a real teacher.
//!
//! It exists for the CPU demo and for tests, where no 32B model is at hand but the path
//! after the teacher (cache, `<think>` parsing, verification by the executor, the traces
//! file, teacher-SFT) must still be the real one. It is an *oracle*: it knows the answers
//! because the dataset ships them, so traces from it say nothing about a real teacher's
//! quality. It recognises a problem by the user message the synthesis stage sends
//! ([`prompt::user_message`]); a question it does not know, or a problem without a
//! reference, gets an answer without code (which verification then marks as failing),
//! the way a real teacher's unusable answer would look.
//!
//! The answer is a short `<think>` block (a Qwen3-style reasoning preamble, inline) and the
//! reference in a ```python fence.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tgrpo_dataset::{Problem, prompt};

use crate::client::{Teacher, TeacherReply};
use crate::error::Result;
use crate::wire::ChatRequest;

/// A teacher that answers with the reference solutions of a known problem set. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct ReferenceTeacher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// User message → (entry point, reference solution).
    answers: HashMap<String, (Option<String>, Option<String>)>,
    name: String,
    generations: AtomicU64,
}

impl ReferenceTeacher {
    /// A teacher that knows `problems`; `name` is what traces record as the teacher model.
    pub fn new(problems: &[Problem], name: impl Into<String>) -> Self {
        let answers = problems
            .iter()
            .map(|problem| {
                (
                    prompt::user_message(problem),
                    (problem.entry_point.clone(), problem.reference.clone()),
                )
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                answers,
                name: name.into(),
                generations: AtomicU64::new(0),
            }),
        }
    }

    /// Answers given so far (cache hits never reach the teacher).
    pub fn generations(&self) -> u64 {
        self.inner.generations.load(Ordering::Relaxed)
    }

    /// The answer text for a user message: thinking and fenced code, or a refusal.
    pub fn answer(&self, user_message: &str) -> String {
        match self.inner.answers.get(user_message) {
            Some((entry_point, Some(code))) => {
                let function = entry_point.as_deref().unwrap_or("the function");
                format!(
                    "<think>\nThe tests call {function}. I write {function} so that each assert holds.\n</think>\n\n```python\n{}\n```",
                    code.trim_end()
                )
            }
            Some((_, None)) => "This problem has no reference solution.".to_string(),
            None => "I do not know this problem.".to_string(),
        }
    }
}

impl Teacher for ReferenceTeacher {
    fn describe(&self) -> String {
        format!("reference:{}", self.inner.name)
    }

    async fn chat(&self, request: &ChatRequest) -> Result<TeacherReply> {
        let question = request
            .messages
            .iter()
            .rev()
            .find(|message| message.role == "user")
            .map(|message| message.content.as_str())
            .unwrap_or_default();
        let content = self.answer(question);
        let number = self.inner.generations.fetch_add(1, Ordering::Relaxed);
        // Token counts are characters/4, a rough stand-in: there is no tokenizer here.
        let prompt_tokens = (question.len() / 4) as u64;
        let completion_tokens = (content.len() / 4) as u64;
        let body = serde_json::json!({
            "id": format!("reference-{number}"),
            "object": "chat.completion",
            "model": self.inner.name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        });
        Ok(TeacherReply { body, attempts: 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tgrpo_dataset::TestFormat;

    fn problem(id: &str, reference: Option<&str>) -> Problem {
        Problem {
            task_id: id.to_string(),
            text: format!("Write a function {id}."),
            reference: reference.map(str::to_string),
            tests: vec![format!("assert {id}() == 1")],
            setup_code: String::new(),
            format: TestFormat::Mbpp,
            entry_point: Some(id.to_string()),
            prompt: None,
        }
    }

    #[test]
    fn answers_known_problems_with_their_reference_and_nothing_else() {
        let known = problem("one", Some("def one():\n    return 1\n"));
        let bare = problem("two", None);
        let teacher = ReferenceTeacher::new(&[known.clone(), bare.clone()], "oracle");
        let answer = teacher.answer(&prompt::user_message(&known));
        let thinking = tgrpo_dataset::extract::split_thinking(&answer);
        assert!(thinking.thinking.is_some_and(|text| text.contains("one")));
        assert_eq!(
            tgrpo_dataset::extract::python_code(&answer, Some("one"))
                .map(|code| code.trim_end().to_string())
                .as_deref(),
            Some("def one():\n    return 1")
        );
        for unknown in [
            teacher.answer(&prompt::user_message(&bare)),
            teacher.answer("Write a function three."),
        ] {
            assert_eq!(tgrpo_dataset::extract::python_code(&unknown, None), None);
        }
    }
}
