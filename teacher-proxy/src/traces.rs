//! The traces file: one JSON trace record per line (`data/synthetic_traces.jsonl`).
//!
//! This is the contract between the synthesis stage (writer) and the learner's
//! teacher-SFT term (reader, through [`load_traces`]).
//!
//! # Record format (one JSON object per line)
//! | field | type | meaning |
//! |---|---|---|
//! | `problem_id` | string | the problem's `task_id` |
//! | `sample_index` | integer | which of the problem's samples (0-based) |
//! | `messages` | `[{role, content}]` | the prompt exactly as sent to the teacher |
//! | `thinking` | string or null | the reasoning (`<think>` block or `reasoning_content`) |
//! | `answer` | string | the final answer, think block removed |
//! | `code` | string or null | the python code extracted from `answer` |
//! | `raw_text` | string | the response's `content` as the server returned it |
//! | `finish_reason` | string or null | `stop`, or `length` when the budget cut it |
//! | `usage` | `{prompt_tokens, completion_tokens, total_tokens}` | token counts |
//! | `teacher_model` | string | the model that answered (the server's name for it) |
//! | `request_hash` | string | hex SHA-256 cache key of (request, sample index) |
//! | `passed` | bool | the code passed every test of the problem |
//! | `reward` | number | the executor's reward for the code (binary: 0 or 1) |
//! | `verdict` | string | `passed`, `failed`, `timeout`, `error`, `no_code` or `unverified` |
//!
//! Readers ignore unknown fields, so fields can be added without breaking old readers.
//!
//! # Durability
//! A record is appended with one `write` of the whole line, newline included, after its
//! answer was cached and its code verified. A run killed at any moment leaves at worst a
//! torn last line, which [`TraceWriter::open`] repairs (and [`load_traces`] skips); a
//! malformed line anywhere else is an error naming file and line, never silently dropped.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TeacherError};
use crate::wire::{ChatMessage, Usage};

/// One verified teacher trace: a line of the traces file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// The problem's task id.
    pub problem_id: String,
    /// Which of the problem's samples.
    pub sample_index: u32,
    /// The prompt as sent.
    pub messages: Vec<ChatMessage>,
    /// The reasoning, when the teacher gave one.
    pub thinking: Option<String>,
    /// The final answer without the think block.
    pub answer: String,
    /// The code extracted from the answer.
    pub code: Option<String>,
    /// The response content as returned.
    pub raw_text: String,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// Token counts.
    #[serde(default)]
    pub usage: Usage,
    /// The model that answered.
    pub teacher_model: String,
    /// The cache key of (request, sample index).
    pub request_hash: String,
    /// Whether the code passed every test.
    pub passed: bool,
    /// The executor's reward.
    pub reward: f64,
    /// The verification verdict.
    #[serde(default)]
    pub verdict: String,
}

impl TraceRecord {
    /// The assistant text the learner imitates: `<think>\n{thinking}\n</think>\n\n{answer}`
    /// when `include_thinking` and the trace has reasoning (the layout Qwen3's chat template
    /// produces), else the answer alone.
    pub fn sft_target(&self, include_thinking: bool) -> String {
        match (&self.thinking, include_thinking) {
            (Some(thinking), true) => format!("<think>\n{thinking}\n</think>\n\n{}", self.answer),
            _ => self.answer.clone(),
        }
    }

    /// The (problem, sample) pair this record answers.
    pub fn pair(&self) -> (String, u32) {
        (self.problem_id.clone(), self.sample_index)
    }
}

/// Reads a traces file for training. `passing_only` keeps only traces whose code passed
/// its tests (the teacher-SFT default: imitating wrong code teaches wrong code). A torn
/// last line (a run killed mid-write) is skipped with a warning; any other bad line is an
/// error naming file and line.
pub fn load_traces(path: impl AsRef<Path>, passing_only: bool) -> Result<Vec<TraceRecord>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|err| TeacherError::io(path, err))?;
    let scan = scan(path, &bytes)?;
    if scan.torn_tail.is_some() {
        tracing::warn!(path = %path.display(), "skipping a torn last line (a run was killed mid-write)");
    }
    Ok(scan
        .records
        .into_iter()
        .filter(|record| record.passed || !passing_only)
        .collect())
}

/// What a traces file holds.
struct Scan {
    records: Vec<TraceRecord>,
    /// Byte offset where an unparsable, unterminated last line starts.
    torn_tail: Option<usize>,
    /// The last line parses but lacks its newline.
    missing_newline: bool,
}

fn scan(path: &Path, bytes: &[u8]) -> Result<Scan> {
    let mut records = Vec::new();
    let mut offset = 0;
    let mut line_number = 0;
    while offset < bytes.len() {
        line_number += 1;
        let (line, terminated) = match bytes[offset..].iter().position(|&b| b == b'\n') {
            Some(end) => (&bytes[offset..offset + end], true),
            None => (&bytes[offset..], false),
        };
        let start = offset;
        offset += line.len() + usize::from(terminated);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<TraceRecord>(line) {
            Ok(record) => {
                records.push(record);
                if !terminated {
                    return Ok(Scan {
                        records,
                        torn_tail: None,
                        missing_newline: true,
                    });
                }
            }
            Err(_) if !terminated => {
                return Ok(Scan {
                    records,
                    torn_tail: Some(start),
                    missing_newline: false,
                });
            }
            Err(err) => {
                return Err(TeacherError::TraceLine {
                    path: path.to_owned(),
                    line: line_number,
                    reason: err.to_string(),
                });
            }
        }
    }
    Ok(Scan {
        records,
        torn_tail: None,
        missing_newline: false,
    })
}

/// Appends trace records to a traces file, resuming what is already there.
#[derive(Debug)]
pub struct TraceWriter {
    path: PathBuf,
    file: File,
    done: HashSet<(String, u32)>,
    existing: Vec<TraceRecord>,
}

impl TraceWriter {
    /// Opens `path` for appending (creating it and its directory when missing), repairing a
    /// torn last line, and remembers which (problem, sample) pairs it already holds.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| TeacherError::io(dir, err))?;
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(TeacherError::io(&path, err)),
        };
        let scan = scan(&path, &bytes)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|err| TeacherError::io(&path, err))?;
        if let Some(torn_at) = scan.torn_tail {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - torn_at,
                "repairing a torn last line left by a killed run"
            );
            file.set_len(torn_at as u64)
                .map_err(|err| TeacherError::io(&path, err))?;
        }
        if scan.missing_newline {
            file.write_all(b"\n")
                .map_err(|err| TeacherError::io(&path, err))?;
        }
        let done = scan.records.iter().map(TraceRecord::pair).collect();
        Ok(Self {
            path,
            file,
            done,
            existing: scan.records,
        })
    }

    /// The traces file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file already holds a record for (problem, sample).
    pub fn contains(&self, problem_id: &str, sample_index: u32) -> bool {
        self.done.contains(&(problem_id.to_owned(), sample_index))
    }

    /// The records that were in the file when it was opened.
    pub fn existing(&self) -> &[TraceRecord] {
        &self.existing
    }

    /// Appends one record as one line (a single write, so a kill leaves at most a torn
    /// last line). A pair already present is not written twice.
    pub fn append(&mut self, record: &TraceRecord) -> Result<()> {
        if !self.done.insert(record.pair()) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(record).expect("a trace record always serialises");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|err| TeacherError::io(&self.path, err))
    }

    /// Flushes written records to the disk.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|err| TeacherError::io(&self.path, err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(problem_id: &str, sample_index: u32, passed: bool) -> TraceRecord {
        TraceRecord {
            problem_id: problem_id.to_owned(),
            sample_index,
            messages: vec![ChatMessage::user("q")],
            thinking: Some("t".into()),
            answer: "a".into(),
            code: Some("x = 1".into()),
            raw_text: "<think>t</think>a".into(),
            finish_reason: Some("stop".into()),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            },
            teacher_model: "m".into(),
            request_hash: "h".into(),
            passed,
            reward: if passed { 1.0 } else { 0.0 },
            verdict: if passed { "passed" } else { "failed" }.into(),
        }
    }

    #[test]
    fn write_then_load_with_and_without_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/traces.jsonl");
        let mut writer = TraceWriter::open(&path).unwrap();
        writer.append(&record("a", 0, true)).unwrap();
        writer.append(&record("a", 1, false)).unwrap();
        writer.append(&record("a", 1, false)).unwrap(); // duplicate pair: ignored
        writer.sync().unwrap();
        drop(writer);
        assert_eq!(load_traces(&path, false).unwrap().len(), 2);
        let passing = load_traces(&path, true).unwrap();
        assert_eq!(passing, vec![record("a", 0, true)]);
        let reopened = TraceWriter::open(&path).unwrap();
        assert!(reopened.contains("a", 0) && reopened.contains("a", 1));
        assert!(!reopened.contains("a", 2) && !reopened.contains("b", 0));
    }

    #[test]
    fn torn_last_line_is_skipped_by_readers_and_repaired_by_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traces.jsonl");
        let mut whole = serde_json::to_vec(&record("a", 0, true)).unwrap();
        whole.push(b'\n');
        let torn = serde_json::to_vec(&record("a", 1, true)).unwrap();
        for cut in [1, torn.len() / 2, torn.len() - 1] {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(&torn[..cut]);
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(load_traces(&path, false).unwrap().len(), 1, "cut {cut}");
            let mut writer = TraceWriter::open(&path).unwrap();
            assert!(writer.contains("a", 0) && !writer.contains("a", 1));
            writer.append(&record("a", 1, true)).unwrap();
            drop(writer);
            let records = load_traces(&path, false).unwrap();
            assert_eq!(records, vec![record("a", 0, true), record("a", 1, true)]);
        }
    }

    #[test]
    fn whole_last_line_without_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traces.jsonl");
        std::fs::write(&path, serde_json::to_vec(&record("a", 0, true)).unwrap()).unwrap();
        let mut writer = TraceWriter::open(&path).unwrap();
        assert!(writer.contains("a", 0));
        writer.append(&record("b", 0, true)).unwrap();
        drop(writer);
        assert_eq!(load_traces(&path, false).unwrap().len(), 2);
    }

    #[test]
    fn bad_middle_line_is_an_error_naming_the_line_and_nothing_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traces.jsonl");
        let mut bytes = serde_json::to_vec(&record("a", 0, true)).unwrap();
        bytes.extend_from_slice(b"\n{not json}\n");
        bytes.extend_from_slice(&serde_json::to_vec(&record("a", 1, true)).unwrap());
        bytes.push(b'\n');
        std::fs::write(&path, &bytes).unwrap();
        let err = load_traces(&path, false).unwrap_err().to_string();
        assert!(err.contains("traces.jsonl:2"), "{err}");
        let err = TraceWriter::open(&path).unwrap_err().to_string();
        assert!(err.contains("traces.jsonl:2"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn sft_target_layout() {
        let with = record("a", 0, true);
        assert_eq!(with.sft_target(true), "<think>\nt\n</think>\n\na");
        assert_eq!(with.sft_target(false), "a");
        let mut without = with.clone();
        without.thinking = None;
        assert_eq!(without.sft_target(true), "a");
    }
}
