//! Pulling the program out of a model's answer.
//!
//! Answers arrive as prose with Markdown code fences, sometimes several (the solution,
//! then a usage example), sometimes cut off by the token limit before the closing fence,
//! sometimes with no fence at all, and from reasoning models with a `<think>` block first.
//! The rules, in order:
//!
//! 1. the reasoning block is split off ([`split_thinking`]) and never searched for code;
//! 2. fenced blocks tagged `python`/`py`/`python3` are the candidates, or, when there are
//!    none, untagged blocks; a fence still open at the end runs to the end of the text;
//! 3. among the candidates, the last one that defines the entry point wins (a model that
//!    revises its answer ends with the revision), else the last one with any `def` or
//!    `class`, else the first;
//! 4. with no fence at all, an answer that starts like code is taken whole.

/// An answer split into its reasoning and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thinking<'a> {
    /// The text inside `<think>…</think>`, trimmed, when there is one.
    pub thinking: Option<&'a str>,
    /// The text after the reasoning block (all of it when there is none).
    pub answer: &'a str,
    /// True when a `<think>` block was opened but never closed (a truncated answer).
    pub unterminated: bool,
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Splits `<think>…</think>` off `text`. A closing tag without an opening one counts as a
/// block starting at the beginning (chat templates that put `<think>` in the prompt do
/// that); an opening tag without a closing one makes the rest reasoning and no answer.
pub fn split_thinking(text: &str) -> Thinking<'_> {
    let open = text.find(THINK_OPEN);
    let close = text.find(THINK_CLOSE);
    match (open, close) {
        (Some(open), Some(close)) if open < close => Thinking {
            thinking: Some(text[open + THINK_OPEN.len()..close].trim()),
            answer: &text[close + THINK_CLOSE.len()..],
            unterminated: false,
        },
        (None, Some(close)) => Thinking {
            thinking: Some(text[..close].trim()),
            answer: &text[close + THINK_CLOSE.len()..],
            unterminated: false,
        },
        (Some(open), None) => Thinking {
            thinking: Some(text[open + THINK_OPEN.len()..].trim()),
            answer: "",
            unterminated: true,
        },
        _ => Thinking {
            thinking: None,
            answer: text,
            unterminated: false,
        },
    }
}

/// A fenced block found in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeBlock {
    /// The info string after the opening fence, lower-cased (`python`, `py`, ``).
    pub language: String,
    /// The block's content, without fences.
    pub code: String,
    /// False when the text ended before the closing fence.
    pub terminated: bool,
}

/// Every fenced block in `text`, in order.
pub fn code_blocks(text: &str) -> Vec<CodeBlock> {
    let mut blocks = Vec::new();
    // (language, indentation of the opening fence, content lines)
    let mut current: Option<(String, usize, Vec<&str>)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match current.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let language = info.trim().trim_start_matches('{').to_ascii_lowercase();
                    current = Some((language, line.len() - trimmed.len(), Vec::new()));
                }
            }
            Some((language, indent, mut lines)) => {
                if trimmed.starts_with("```") && trimmed.trim_start_matches('`').trim().is_empty() {
                    blocks.push(CodeBlock {
                        language,
                        code: join_lines(&lines),
                        terminated: true,
                    });
                } else {
                    // A fence indented inside a Markdown list indents its content too.
                    lines.push(strip_indent(line, indent));
                    current = Some((language, indent, lines));
                }
            }
        }
    }
    if let Some((language, _, lines)) = current {
        blocks.push(CodeBlock {
            language,
            code: join_lines(&lines),
            terminated: false,
        });
    }
    blocks
}

fn strip_indent(line: &str, indent: usize) -> &str {
    let leading = line.len() - line.trim_start_matches(' ').len();
    &line[leading.min(indent)..]
}

fn join_lines(lines: &[&str]) -> String {
    let mut code = lines.join("\n");
    code.push('\n');
    code
}

fn is_python(language: &str) -> bool {
    matches!(
        language.split_whitespace().next(),
        Some("python" | "py" | "python3")
    )
}

fn defines(code: &str, name: &str) -> bool {
    crate::problem::defines_function(code, name)
}

fn has_definition(code: &str) -> bool {
    code.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with("def ") || line.starts_with("class ") || line.starts_with("async def ")
    })
}

/// The program in a model's answer, by the rules of this module; `None` when the answer
/// holds no code (or only reasoning).
pub fn python_code(text: &str, entry_point: Option<&str>) -> Option<String> {
    let answer = split_thinking(text).answer;
    let blocks = code_blocks(answer);
    let python: Vec<&CodeBlock> = blocks
        .iter()
        .filter(|block| is_python(&block.language))
        .collect();
    let candidates: Vec<&CodeBlock> = if python.is_empty() {
        blocks
            .iter()
            .filter(|block| block.language.is_empty())
            .collect()
    } else {
        python
    };
    let chosen = entry_point
        .and_then(|name| {
            candidates
                .iter()
                .rev()
                .find(|block| defines(&block.code, name))
        })
        .or_else(|| {
            candidates
                .iter()
                .rev()
                .find(|block| has_definition(&block.code))
        })
        .or_else(|| candidates.first());
    if let Some(block) = chosen {
        return Some(block.code.clone()).filter(|code| !code.trim().is_empty());
    }
    if !blocks.is_empty() {
        return None;
    }
    let trimmed = answer.trim();
    let first_line = trimmed.lines().next().unwrap_or_default();
    let looks_like_code = ["def ", "class ", "import ", "from ", "async def "]
        .iter()
        .any(|prefix| first_line.starts_with(prefix));
    looks_like_code.then(|| format!("{trimmed}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinking_is_split_in_all_shapes() {
        let both = split_thinking("<think> plan </think>\nanswer");
        assert_eq!(both.thinking, Some("plan"));
        assert_eq!(both.answer, "\nanswer");
        let close_only = split_thinking("plan</think>answer");
        assert_eq!(close_only.thinking, Some("plan"));
        assert_eq!(close_only.answer, "answer");
        let open_only = split_thinking("<think>cut off");
        assert!(open_only.unterminated);
        assert_eq!(open_only.answer, "");
        let none = split_thinking("just text");
        assert_eq!(none.thinking, None);
        assert_eq!(none.answer, "just text");
    }

    #[test]
    fn single_python_fence() {
        let text = "Here:\n```python\ndef f(x):\n    return x\n```\nDone.";
        assert_eq!(
            python_code(text, Some("f")).unwrap(),
            "def f(x):\n    return x\n"
        );
    }

    #[test]
    fn solution_then_usage_example_picks_the_solution() {
        let text = "```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(1))\n```";
        assert_eq!(
            python_code(text, Some("f")).unwrap(),
            "def f(x):\n    return x\n"
        );
        assert_eq!(
            python_code(text, None).unwrap(),
            "def f(x):\n    return x\n"
        );
    }

    #[test]
    fn revised_answer_wins_over_first_attempt() {
        let text = "```python\ndef f(x):\n    return 0\n```\nOops, fixed:\n```py\ndef f(x):\n    return x\n```";
        assert_eq!(
            python_code(text, Some("f")).unwrap(),
            "def f(x):\n    return x\n"
        );
    }

    #[test]
    fn unterminated_fence_runs_to_the_end() {
        let text = "```python\ndef f(x):\n    return x";
        assert_eq!(
            python_code(text, None).unwrap(),
            "def f(x):\n    return x\n"
        );
        assert!(!code_blocks(text)[0].terminated);
    }

    #[test]
    fn untagged_fences_count_only_without_python_ones() {
        let text = "```\ndef g(): pass\n```\n```python\ndef f(): pass\n```";
        assert_eq!(python_code(text, None).unwrap(), "def f(): pass\n");
        assert_eq!(
            python_code("```\ndef g(): pass\n```", None).unwrap(),
            "def g(): pass\n"
        );
        assert_eq!(python_code("```text\nhello\n```", None), None);
    }

    #[test]
    fn no_fence_takes_code_like_answers_only() {
        assert_eq!(
            python_code("def f():\n    return 1", None).unwrap(),
            "def f():\n    return 1\n"
        );
        assert_eq!(python_code("I cannot solve this.", None), None);
    }

    #[test]
    fn code_inside_reasoning_is_ignored() {
        let text =
            "<think>```python\ndef f(): return 0\n```</think>\n```python\ndef f(): return 1\n```";
        assert_eq!(python_code(text, Some("f")).unwrap(), "def f(): return 1\n");
        assert_eq!(
            python_code("<think>```python\ndef f(): pass\n```", None),
            None
        );
    }

    #[test]
    fn indented_fences_inside_lists_are_found() {
        let text = "1. Code:\n   ```python\n   def f(): pass\n   ```";
        assert_eq!(python_code(text, None).unwrap(), "def f(): pass\n");
    }
}
