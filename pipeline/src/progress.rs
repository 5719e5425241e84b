//! Progress bars for the long stages (indicatif, on stderr), and what they show.
//!
//! A bar is hidden when progress is off (`--no-progress`, tests, logs-only runs), so
//! stage code draws unconditionally.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` units named `stage`, or a hidden one when `visible` is false.
pub fn bar(stage: &str, len: u64, unit: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{stage:<9} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} eta {{eta}} {{msg}}"
        ))
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// The last complete line of a JSONL file (read from its end, so a long metrics file
/// costs the same as a short one), parsed; `None` when there is none yet.
pub fn last_json_line(path: &Path) -> Option<serde_json::Value> {
    const TAIL_BYTES: u64 = 64 * 1024;
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .ok()?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).ok()?;
    tail.lines()
        .rev()
        .filter(|line| !line.trim().is_empty())
        .find_map(|line| serde_json::from_str(line).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        assert!(last_json_line(&path).is_none());
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"ste").unwrap();
        assert_eq!(last_json_line(&path).unwrap()["step"], 2);
    }
}
