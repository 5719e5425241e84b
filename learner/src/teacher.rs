//! Teacher traces as SFT examples: tokenised once at start-up with the student's own
//! chat template ([`teacher_examples`]), then drawn into training batches in a seeded,
//! resumable order ([`TeacherSampler`]).
//!
//! The trace file and its records belong to the teacher proxy (`tgrpo_teacher::traces`);
//! the learner only decides how a record becomes tokens and which records a step gets.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tgrpo_dataset::{Problem, prompt};
use tgrpo_policy::Policy;
use tgrpo_policy::chat::Message;
use tgrpo_teacher::TraceRecord;

use crate::error::{LearnerError, Result};
use crate::groups::SftExample;
use crate::policy::policy_error;

/// Teacher traces turned into SFT examples, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct TeacherExamples {
    /// One example per usable trace, in file order.
    pub examples: Vec<SftExample>,
    /// Traces whose problem is not in the given problem set.
    pub unknown_problem: usize,
    /// Traces with nothing to imitate (empty target).
    pub empty_target: usize,
}

/// Tokenises teacher traces for SFT, at the edge where the student's tokenizer and chat
/// template live.
///
/// The prompt is what a rollout worker would sample from for the same problem: the
/// problem's user message rendered with the student's chat template plus the assistant
/// opener ([`Policy::chat_prompt`]). The target is the trace's
/// [`TraceRecord::sft_target`] (with the `<think>` block when `use_thinking`), followed by
/// the template's end of turn, taken from rendering the whole conversation so the student
/// learns to stop where its template stops. A template that rewrites the assistant text
/// (some drop `<think>` blocks from history) would defeat `use_thinking`; then the target
/// is tokenised on its own and the first EOS id appended.
pub fn teacher_examples(
    traces: &[TraceRecord],
    problems: &[Problem],
    policy: &Policy,
    use_thinking: bool,
) -> Result<TeacherExamples> {
    let by_id: HashMap<&str, &Problem> = problems
        .iter()
        .map(|problem| (problem.task_id.as_str(), problem))
        .collect();
    let template = policy.chat_template();
    let tokenizer = policy.tokenizer();
    let mut out = TeacherExamples::default();
    for trace in traces {
        let Some(problem) = by_id.get(trace.problem_id.as_str()) else {
            out.unknown_problem += 1;
            continue;
        };
        let target = trace.sft_target(use_thinking);
        if target.trim().is_empty() {
            out.empty_target += 1;
            continue;
        }
        let user = Message::user(prompt::user_message(problem));
        let prompt_tokens = policy
            .chat_prompt(std::slice::from_ref(&user))
            .map_err(policy_error)?;
        let prompt_text = template
            .render(std::slice::from_ref(&user), true)
            .map_err(|err| LearnerError::Policy(err.to_string()))?;
        let whole = template
            .render(&[user, Message::assistant(target.clone())], false)
            .map_err(|err| LearnerError::Policy(err.to_string()))?;
        let suffix = whole
            .strip_prefix(prompt_text.as_str())
            .filter(|suffix| suffix.contains(target.as_str()));
        let target_tokens = match suffix {
            Some(suffix) => tokenizer
                .encode(suffix.trim_end_matches('\n'), false)
                .map_err(|err| LearnerError::Policy(err.to_string()))?,
            None => {
                let mut tokens = tokenizer
                    .encode(&target, false)
                    .map_err(|err| LearnerError::Policy(err.to_string()))?;
                tokens.extend(policy.eos_token_ids().first().copied());
                tokens
            }
        };
        out.examples.push(SftExample {
            prompt_tokens,
            target_tokens,
        });
    }
    Ok(out)
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
