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

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// An answer split into reasoning and final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitAnswer {
    /// The reasoning, trimmed; `None` when the teacher gave none.
    pub thinking: Option<String>,
    /// The final answer with any think block removed, trimmed.
    pub answer: String,
}

/// Splits a completion's `content` and optional separate reasoning field.
pub fn split_thinking(content: Option<&str>, reasoning: Option<&str>) -> SplitAnswer {
    let content = content.unwrap_or("");
    let inline = split_inline(content);
    let separate = reasoning.map(str::trim).filter(|text| !text.is_empty());
    let thinking = match (separate, inline.thinking) {
        (Some(field), Some(tags)) => Some(format!("{field}\n\n{tags}")),
        (Some(field), None) => Some(field.to_owned()),
        (None, tags) => tags,
    };
    SplitAnswer {
        thinking,
        answer: inline.answer,
    }
}

fn split_inline(content: &str) -> SplitAnswer {
    let (thinking, answer) = match (content.find(OPEN), content.find(CLOSE)) {
        // `before<think>R</think>after`: the answer is whatever surrounds the block.
        (Some(open), Some(close)) if open < close => {
            let reasoning = &content[open + OPEN.len()..close];
            let answer = format!("{}{}", &content[..open], &content[close + CLOSE.len()..]);
            (reasoning.to_owned(), answer)
        }
        // Cut by the token budget while still thinking.
        (Some(open), _) => (
            content[open + OPEN.len()..].to_owned(),
            content[..open].to_owned(),
        ),
        // The opening tag was part of the prompt.
        (None, Some(close)) => (
            content[..close].to_owned(),
            content[close + CLOSE.len()..].to_owned(),
        ),
        (None, None) => (String::new(), content.to_owned()),
    };
    let thinking = thinking.trim();
    SplitAnswer {
        thinking: (!thinking.is_empty()).then(|| thinking.to_owned()),
        answer: answer.trim().to_owned(),
    }
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
        assert_eq!(split("reasoning\n</think>\nA"), (some("reasoning"), "A".to_owned()));
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
    fn text_before_the_block_is_kept_in_the_answer() {
        assert_eq!(split("pre <think>T</think> post"), (some("T"), "pre  post".to_owned()));
    }
}
