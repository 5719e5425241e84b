//! JSON Lines files: every stage's interchange format.
//!
//! Reading reports the file and 1-based line of a bad record. Two modes exist because
//! callers want different things: a dataset with a bad row should not train silently on
//! less data ([`read`] fails), while a scorer fed user samples should score the good rows
//! and report the bad ones ([`read_lenient`]). Writing goes through a temporary file and a
//! rename, so a reader never sees a half-written file.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{DatasetError, Result};

/// One line of a file read leniently: its 1-based number and its record or error.
pub type Line<T> = (usize, Result<T>);

/// Reads every non-blank line as a `T`; the first malformed line is an error naming it.
pub fn read<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Vec<T>> {
    read_lenient(path)?
        .into_iter()
        .map(|(_, record)| record)
        .collect()
}

/// Reads every non-blank line, keeping malformed ones as errors in place so that the
/// caller can report them and go on with the rest.
pub fn read_lenient<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Vec<Line<T>>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| io_error(path, source))?;
    let mut lines = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line_number = index + 1;
        let text = match line {
            Ok(text) => text,
            // Invalid UTF-8 spoils one line, not the file.
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                lines.push((
                    line_number,
                    Err(malformed(path, line_number, err.to_string())),
                ));
                continue;
            }
            Err(source) => return Err(io_error(path, source)),
        };
        if text.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&text)
            .map_err(|err| malformed(path, line_number, err.to_string()));
        lines.push((line_number, record));
    }
    Ok(lines)
}

/// Writes `records` as JSON Lines, atomically: the file appears complete or not at all.
pub fn write_atomic<T: Serialize>(path: impl AsRef<Path>, records: &[T]) -> Result<()> {
    let path = path.as_ref();
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| io_error(parent, source))?;
    }
    let temporary = temporary_path(path);
    let write = || -> std::io::Result<()> {
        let mut writer = BufWriter::new(File::create(&temporary)?);
        for record in records {
            serde_json::to_writer(&mut writer, record)?;
            writer.write_all(b"\n")?;
        }
        let file = writer.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&temporary);
        io_error(path, source)
    })
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn io_error(path: &Path, source: std::io::Error) -> DatasetError {
    DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, line: usize, message: String) -> DatasetError {
    DatasetError::Malformed {
        path: path.to_path_buf(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Row {
        id: u32,
    }

    #[test]
    fn malformed_line_is_named_and_the_rest_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, "{\"id\":1}\n\n{\"id\":\n{\"id\":3}\n").unwrap();

        let lines = read_lenient::<Row>(&path).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].0, 1);
        assert_eq!(lines[0].1.as_ref().unwrap(), &Row { id: 1 });
        let error = lines[1].1.as_ref().unwrap_err().to_string();
        assert!(error.contains("rows.jsonl:3:"), "{error}");
        assert_eq!(lines[2].1.as_ref().unwrap(), &Row { id: 3 });

        let strict = read::<Row>(&path).unwrap_err().to_string();
        assert!(strict.contains("rows.jsonl:3:"), "{strict}");
    }

    #[test]
    fn atomic_write_round_trips_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/out.jsonl");
        let rows = vec![Row { id: 7 }, Row { id: 8 }];
        write_atomic(&path, &rows).unwrap();
        assert_eq!(read::<Row>(&path).unwrap(), rows);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.jsonl")]);
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = read::<Row>("/nonexistent/rows.jsonl")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("/nonexistent/rows.jsonl"), "{error}");
    }
}
