//! Teacher traces as SFT examples: the target text (with or without the `<think>` block)
//! and the seeded, resumable order in which traces are drawn into training batches.
//!
//! Tokenisation stays at the edge: the caller renders each trace's prompt with the
//! student's chat template and tokenises prompt and target (see `crate::policy`), so this
//! module only decides *what* the target says and *which* examples a step gets.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::groups::SftExample;

/// The parts of a teacher trace the learner uses (the teacher proxy's trace records carry
/// more: messages, raw text, timings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeacherTrace {
    /// The problem's task id: which prompt the trace answers.
    pub problem_id: String,
    /// The teacher's reasoning (`<think>` content), if it gave any.
    pub thinking: Option<String>,
    /// The python code of its answer.
    pub code: String,
    /// Whether the code passed the problem's tests.
    pub passed: bool,
}

/// The text the student learns to produce for a trace: the reasoning in a `<think>`
/// block (when `use_thinking` and the trace has one), then the code in one python fence,
/// the answer format the prompts ask for.
pub fn teacher_target_text(trace: &TeacherTrace, use_thinking: bool) -> String {
    let code_block = format!("```python\n{}\n```", trace.code.trim_matches('\n'));
    match trace.thinking.as_deref().map(str::trim) {
        Some(thinking) if use_thinking && !thinking.is_empty() => {
            format!("<think>\n{thinking}\n</think>\n\n{code_block}")
        }
        _ => code_block,
    }
}

/// Where the teacher-trace order stands: a checkpoint stores it so a resumed run draws
/// the same traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TeacherCursor {
    /// Completed passes over the traces.
    pub epoch: u64,
    /// Next position in this pass's shuffled order.
    pub position: usize,
}

/// Draws teacher examples in a seeded order, pass after pass, without repeats within a
/// pass.
#[derive(Debug, Clone)]
pub struct TeacherSampler {
    examples: Vec<SftExample>,
    seed: u64,
    cursor: TeacherCursor,
    order: Vec<usize>,
}

impl TeacherSampler {
    /// A sampler over `examples`, starting at the first pass.
    pub fn new(examples: Vec<SftExample>, seed: u64) -> Self {
        let mut sampler = Self {
            order: Vec::new(),
            examples,
            seed,
            cursor: TeacherCursor::default(),
        };
        sampler.reshuffle();
        sampler
    }

    /// How many examples there are.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// True without examples (the teacher term is then absent).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The state to checkpoint.
    pub fn cursor(&self) -> TeacherCursor {
        self.cursor
    }

    /// Continues from a checkpointed state.
    pub fn set_cursor(&mut self, cursor: TeacherCursor) {
        self.cursor = cursor;
        self.reshuffle();
        self.cursor.position = cursor.position.min(self.order.len());
    }

    /// The next `count` examples (fewer only when there are fewer examples in all).
    pub fn next_batch(&mut self, count: usize) -> Vec<SftExample> {
        let count = count.min(self.examples.len());
        let mut batch = Vec::with_capacity(count);
        while batch.len() < count {
            if self.cursor.position >= self.order.len() {
                self.cursor.epoch += 1;
                self.cursor.position = 0;
                self.reshuffle();
            }
            batch.push(self.examples[self.order[self.cursor.position]].clone());
            self.cursor.position += 1;
        }
        batch
    }

    fn reshuffle(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ self.cursor.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        self.order = (0..self.examples.len()).collect();
        self.order.shuffle(&mut rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(thinking: Option<&str>) -> TeacherTrace {
        TeacherTrace {
            problem_id: "11".into(),
            thinking: thinking.map(str::to_string),
            code: "\ndef f(x):\n    return x\n".into(),
            passed: true,
        }
    }

    #[test]
    fn target_with_and_without_thinking() {
        let with = teacher_target_text(&trace(Some(" Return the input.\n")), true);
        assert_eq!(
            with,
            "<think>\nReturn the input.\n</think>\n\n```python\ndef f(x):\n    return x\n```"
        );
        let without = teacher_target_text(&trace(Some("Return the input.")), false);
        assert_eq!(without, "```python\ndef f(x):\n    return x\n```");
        // No reasoning to show: the code alone, even when thinking is wanted.
        assert_eq!(teacher_target_text(&trace(None), true), without);
        assert_eq!(teacher_target_text(&trace(Some("  ")), true), without);
    }

    fn examples(count: u32) -> Vec<SftExample> {
        (0..count)
            .map(|index| SftExample {
                prompt_tokens: vec![index],
                target_tokens: vec![index + 100],
            })
            .collect()
    }

    #[test]
    fn sampler_covers_each_pass_and_resumes_exactly() {
        let mut sampler = TeacherSampler::new(examples(5), 7);
        let mut first_pass: Vec<u32> = sampler
            .next_batch(5)
            .iter()
            .map(|example| example.prompt_tokens[0])
            .collect();
        first_pass.sort();
        assert_eq!(first_pass, vec![0, 1, 2, 3, 4]);

        let mut straight = TeacherSampler::new(examples(5), 7);
        let mut stopped = TeacherSampler::new(examples(5), 7);
        straight.next_batch(3);
        stopped.next_batch(3);
        let mut resumed = TeacherSampler::new(examples(5), 7);
        resumed.set_cursor(stopped.cursor());
        for _ in 0..4 {
            assert_eq!(straight.next_batch(3), resumed.next_batch(3));
        }
        assert_eq!(straight.cursor(), resumed.cursor());
        assert!(straight.cursor().epoch >= 2);
        // Another seed, another order.
        let mut other = TeacherSampler::new(examples(5), 8);
        let mut reference = TeacherSampler::new(examples(5), 7);
        assert_ne!(other.next_batch(5), reference.next_batch(5));
        // More than there are: all of them, once.
        assert_eq!(TeacherSampler::new(examples(2), 1).next_batch(9).len(), 2);
    }
}
