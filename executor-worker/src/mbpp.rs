//! The MBPP data the executor's benchmark and tests score: a minimal reader of the
//! original `mbpp.jsonl` (the dataset crate owns the full loader and splits) and a
//! generator of a *wrong variant* of each reference solution.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tgrpo_proto::executor::ScoreRequest;

use crate::error::ExecutorError;
use crate::requests;

/// One MBPP problem as stored in `mbpp.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct MbppTask {
    /// 1..=974.
    pub task_id: u32,
    /// The problem statement.
    #[serde(default)]
    pub text: String,
    /// The reference solution.
    pub code: String,
    /// Assert statements.
    pub test_list: Vec<String>,
    /// Code run after the program and before the tests (tasks 367 and 927).
    #[serde(default)]
    pub test_setup_code: String,
}

impl MbppTask {
    /// The request scoring the reference solution.
    pub fn reference_request(&self) -> ScoreRequest {
        requests::mbpp(
            format!("mbpp-{}", self.task_id),
            self.code.clone(),
            self.test_list.clone(),
            self.test_setup_code.clone(),
        )
    }

    /// The request scoring the wrong variant (see [`wrong_variant`]).
    pub fn wrong_request(&self) -> ScoreRequest {
        requests::mbpp(
            format!("mbpp-{}-wrong", self.task_id),
            wrong_variant(self),
            self.test_list.clone(),
            self.test_setup_code.clone(),
        )
    }
}

/// Reads every task of an MBPP JSONL file; a malformed line is an error naming it.
pub fn load(path: &Path) -> Result<Vec<MbppTask>, ExecutorError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExecutorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut tasks = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let task: MbppTask = serde_json::from_str(line).map_err(|err| ExecutorError::BadLine {
            path: path.to_path_buf(),
            line: index + 1,
            reason: err.to_string(),
        })?;
        tasks.push(task);
    }
    Ok(tasks)
}

/// Reads the task ids listed (one per line) in `mbpp_ref_failures.txt`.
pub fn load_reference_failures(path: &Path) -> Result<Vec<u32>, ExecutorError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExecutorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            line.trim().parse().map_err(|_| ExecutorError::BadLine {
                path: path.to_path_buf(),
                line: index + 1,
                reason: format!("{line:?} is not a task id"),
            })
        })
        .collect()
}

/// Where the shared MBPP files are: `$TGRPO_MBPP_DIR`, else `../shared/data/mbpp` next
/// to the repository, else `/work/shared/data/mbpp`.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TGRPO_MBPP_DIR") {
        return Some(PathBuf::from(dir));
    }
    let beside_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mbpp");
    [beside_repo, PathBuf::from("/work/shared/data/mbpp")]
        .into_iter()
        .find(|dir| dir.join("mbpp.jsonl").is_file())
}

/// Appended to a reference solution: wraps each function the tests call so that its
/// outermost call returns a perturbed value (recursive calls still see the right ones).
const WRONG_WRAPPER: &str = r#"
_tgrpo_depth = 0
def _tgrpo_perturb(result):
    if isinstance(result, bool): return not result
    if isinstance(result, (int, float, complex)): return result + 1
    if isinstance(result, str): return result + "?"
    if isinstance(result, list): return result + [None]
    if isinstance(result, tuple): return result + (None,)
    if isinstance(result, (set, frozenset)): return type(result)(list(result) + ["?"])
    if isinstance(result, dict): return {**result, "?": None}
    if result is None: return 0
    return None
def _tgrpo_wrong(function):
    def wrapper(*args, **kwargs):
        global _tgrpo_depth
        _tgrpo_depth += 1
        try:
            result = function(*args, **kwargs)
        finally:
            _tgrpo_depth -= 1
        return result if _tgrpo_depth else _tgrpo_perturb(result)
    return wrapper
"#;

/// A variant of the reference that is wrong on every test (checked against plain
/// CPython for all 974 tasks): each top-level function the tests call returns a
/// perturbed value.
pub fn wrong_variant(task: &MbppTask) -> String {
    let mut called: Vec<&str> = Vec::new();
    for line in task.code.lines() {
        let Some(rest) = line.strip_prefix("def ") else {
            continue;
        };
        let name_end = rest
            .find(|c: char| !(c == '_' || c.is_alphanumeric()))
            .unwrap_or(rest.len());
        let name = rest[..name_end].trim();
        if name.is_empty() || called.contains(&name) {
            continue;
        }
        let is_called = task.test_list.iter().any(|test| calls(test, name));
        if is_called {
            called.push(name);
        }
    }
    let mut program = task.code.clone();
    program.push('\n');
    program.push_str(WRONG_WRAPPER);
    for name in called {
        program.push_str(&format!("{name} = _tgrpo_wrong({name})\n"));
    }
    program
}

/// Whether `source` contains a call of `name` (a whole identifier followed by `(`).
fn calls(source: &str, name: &str) -> bool {
    let bytes = source.as_bytes();
    let mut start = 0;
    while let Some(found) = source[start..].find(name) {
        let begin = start + found;
        let end = begin + name.len();
        let boundary_before = begin == 0 || {
            let c = bytes[begin - 1] as char;
            !(c == '_' || c.is_alphanumeric())
        };
        let after = source[end..].trim_start();
        if boundary_before && after.starts_with('(') {
            return true;
        }
        start = end;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_identifier_calls() {
        assert!(calls("assert f(1) == 2", "f"));
        assert!(calls("assert (max_height (root)) == 3", "max_height"));
        assert!(!calls("assert ff(1) == 2", "f"));
        assert!(!calls("assert f == 2", "f"));
    }

    #[test]
    fn wrong_variant_wraps_called_functions_only() {
        let task = MbppTask {
            task_id: 1,
            text: String::new(),
            code: "def helper(x):\n    return x\ndef f(x):\n    return helper(x)\n".into(),
            test_list: vec!["assert f(1) == 1".into()],
            test_setup_code: String::new(),
        };
        let program = wrong_variant(&task);
        assert!(program.contains("f = _tgrpo_wrong(f)"));
        assert!(!program.contains("helper = _tgrpo_wrong"));
    }
}
