//! Splitting a teacher answer into its reasoning and its final answer.
//!
//! Qwen3 with thinking on writes `<think>…</think>` before the answer. Depending on the
//! server that block arrives in one of three shapes, all handled here:
//! - inline in `content` (no reasoning parser): `<think>R</think>A`;
//! - in a separate field (`reasoning_content`, or `reasoning` in newer vLLM) with `content`
//!   holding only `A`;
//! - inline but without the opening tag, when the chat template already put `<think>`
//!   into the prompt: `R</think>A`.
//!
//! A block cut by the token budget (`<think>R…` with no closing tag) is reasoning without
//! an answer. An empty block (`<think>\n\n</think>`, what Qwen3 emits with thinking off)
//! counts as no reasoning.

use tgrpo_dataset::extract;

/// An answer split into reasoning and final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitAnswer {
    /// The reasoning, trimmed; `None` when the teacher gave none.
    pub thinking: Option<String>,
    /// The final answer with any think block removed, trimmed.
    pub answer: String,
}

/// Splits a completion's `content` and optional separate reasoning field. The inline
/// rules are the dataset crate's ([`extract::split_thinking`]), shared with the rollout
/// workers so that teacher and policy answers are cut the same way.
pub fn split_thinking(content: Option<&str>, reasoning: Option<&str>) -> SplitAnswer {
    let inline = extract::split_thinking(content.unwrap_or(""));
    let inline_thinking = inline.thinking.filter(|text| !text.is_empty());
    let separate = reasoning.map(str::trim).filter(|text| !text.is_empty());
    let thinking = match (separate, inline_thinking) {
        (Some(field), Some(tags)) => Some(format!("{field}\n\n{tags}")),
        (Some(field), None) => Some(field.to_owned()),
        (None, tags) => tags.map(str::to_owned),
    };
    SplitAnswer {
        thinking,
        answer: inline.answer.trim().to_owned(),
    }
}

/// The python program in a final answer (never in the reasoning, where drafts live):
/// the dataset crate's extraction rules (several fences, an unterminated fence, no fence).
pub fn extract_code(answer: &str, entry_point: Option<&str>) -> Option<String> {
    extract::python_code(answer, entry_point).filter(|code| !code.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(content: &str) -> (Option<String>, String) {
        let got = split_thinking(Some(content), None);
        (got.thinking, got.answer)
    }

    fn some(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    #[test]
    fn inline_block() {
        assert_eq!(
            split("<think>\nplan it\n</think>\n\nHere:\n```python\nx=1\n```"),
            (some("plan it"), "Here:\n```python\nx=1\n```".to_owned())
        );
    }

    #[test]
    fn no_tags_is_all_answer() {
        assert_eq!(split("just code"), (None, "just code".to_owned()));
        assert_eq!(split(""), (None, String::new()));
    }

    #[test]
    fn empty_block_is_no_thinking() {
        assert_eq!(split("<think>\n\n</think>\n\nA"), (None, "A".to_owned()));
    }

    #[test]
    fn unterminated_block_is_thinking_without_answer() {
        assert_eq!(
            split("<think>long reasoning cut by max_tok"),
            (some("long reasoning cut by max_tok"), String::new())
        );
    }

    #[test]
    fn closing_tag_only() {
        assert_eq!(
            split("reasoning\n</think>\nA"),
            (some("reasoning"), "A".to_owned())
        );
    }

    #[test]
    fn separate_reasoning_field() {
        let got = split_thinking(Some("\nA\n"), Some("  R  "));
        assert_eq!(got.thinking.as_deref(), Some("R"));
        assert_eq!(got.answer, "A");
        // A blank field falls back to inline tags.
        let got = split_thinking(Some("<think>T</think>A"), Some("  "));
        assert_eq!(got.thinking.as_deref(), Some("T"));
        assert_eq!(got.answer, "A");
        // Reasoning with no content at all (cut while thinking, parser on).
        let got = split_thinking(None, Some("R"));
        assert_eq!(got.thinking.as_deref(), Some("R"));
        assert_eq!(got.answer, "");
    }

    #[test]
    fn code_comes_from_the_answer_not_the_thinking() {
        let got = split_thinking(
            Some("<think>draft:\n```python\ndef f(): return 0\n```\n</think>\nNo code, sorry."),
            None,
        );
        assert_eq!(extract_code(&got.answer, Some("f")), None);
        let got = split_thinking(
            Some("```python\ndef f():\n    return 1\n```"),
            Some("```python\ndef f(): return 0\n```"),
        );
        let code = extract_code(&got.answer, Some("f")).unwrap();
        assert_eq!(code.trim_end(), "def f():\n    return 1");
    }

    #[test]
    fn code_fences() {
        // Several fences: the one defining the entry point, not the usage example after it.
        let answer = "```python\ndef add(a, b):\n    return a + b\n```\nUse it:\n```python\nprint(add(1, 2))\n```";
        let code = extract_code(answer, Some("add")).unwrap();
        assert_eq!(code.trim_end(), "def add(a, b):\n    return a + b");
        // Unterminated fence (cut by the token budget) runs to the end.
        let code = extract_code("```python\ndef add(a, b):\n    return a + b", Some("add"));
        assert_eq!(code.unwrap().trim_end(), "def add(a, b):\n    return a + b");
        // No fence, but code.
        let code = extract_code("def add(a, b):\n    return a + b\n", Some("add"));
        assert!(code.unwrap().contains("return a + b"));
        // No code at all.
        assert_eq!(extract_code("I cannot solve this.", Some("add")), None);
        assert_eq!(extract_code("", None), None);
    }
}
