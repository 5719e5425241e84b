//! MBPP from the Hugging Face hub: the dataset repository's parquet files, fetched with
//! the hf-hub crate into the standard hub cache (`~/.cache/huggingface/hub`, or
//! `HF_HOME`), so a second run, or an offline machine with a filled cache, makes no
//! network call.
//!
//! The repository (`google-research-datasets/mbpp`) keeps one parquet file per split
//! under a directory per configuration (`full/test-00000-of-00001.parquet`). File names
//! are discovered, not assumed: online from the repository listing, offline from the
//! cached snapshot. A revision can be pinned (a branch, tag or commit); the commit that
//! was actually read is returned so the data stage can record it.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::mbpp::MbppRow;
use crate::{DatasetError, Problem, Result};

/// The public MBPP dataset repository.
pub const MBPP_REPO: &str = "google-research-datasets/mbpp";

/// Where and how to fetch a dataset from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubDataset {
    /// Repository id, e.g. [`MBPP_REPO`].
    pub repo_id: String,
    /// Branch, tag or commit sha; pin a commit for reproducible runs.
    pub revision: String,
    /// Configuration directory inside the repository (`full` or `sanitized`).
    pub config: String,
    /// Hub cache directory; `None` uses hf-hub's default (`HF_HOME` aware).
    pub cache_dir: Option<PathBuf>,
    /// Use only the cache, never the network.
    pub offline: bool,
}

impl Default for HubDataset {
    fn default() -> Self {
        Self {
            repo_id: MBPP_REPO.to_string(),
            revision: "main".to_string(),
            config: "full".to_string(),
            cache_dir: None,
            offline: false,
        }
    }
}

/// Problems read from the hub, with the provenance the data stage records.
#[derive(Debug, Clone)]
pub struct HubProblems {
    /// Every row of every split of the configuration.
    pub problems: Vec<Problem>,
    /// The files read, relative to the repository root.
    pub files: Vec<String>,
    /// The commit the files came from, when known.
    pub commit: Option<String>,
}

fn hub_error(dataset: &HubDataset, message: impl std::fmt::Display) -> DatasetError {
    DatasetError::Io {
        path: PathBuf::from(format!(
            "hf://datasets/{}@{}",
            dataset.repo_id, dataset.revision
        )),
        source: std::io::Error::other(message.to_string()),
    }
}

/// Fetches (or finds in the cache) every parquet file of `dataset.config` and reads it.
pub fn load_mbpp(dataset: &HubDataset) -> Result<HubProblems> {
    let repo = Repo::with_revision(
        dataset.repo_id.clone(),
        RepoType::Dataset,
        dataset.revision.clone(),
    );
    let prefix = format!("{}/", dataset.config.trim_matches('/'));
    let (paths, files, commit) = if dataset.offline {
        cached_files(dataset, &repo, &prefix)?
    } else {
        downloaded_files(dataset, repo, &prefix)?
    };
    if paths.is_empty() {
        return Err(hub_error(
            dataset,
            format!("no parquet files under {prefix} in the repository"),
        ));
    }
    let mut problems = Vec::new();
    for path in &paths {
        for (line, row) in read_parquet_rows(path)?.into_iter().enumerate() {
            let problem = row
                .into_problem()
                .map_err(|message| DatasetError::Malformed {
                    path: path.clone(),
                    line: line + 1,
                    message,
                })?;
            problems.push(problem);
        }
    }
    Ok(HubProblems {
        problems,
        files,
        commit,
    })
}

type Located = (Vec<PathBuf>, Vec<String>, Option<String>);

fn is_split_file(name: &str, prefix: &str) -> bool {
    name.starts_with(prefix) && name.ends_with(".parquet")
}

fn downloaded_files(dataset: &HubDataset, repo: Repo, prefix: &str) -> Result<Located> {
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_progress(false);
    if let Some(cache_dir) = &dataset.cache_dir {
        builder = builder.with_cache_dir(cache_dir.clone());
    }
    let api = builder.build().map_err(|err| hub_error(dataset, err))?;
    let api_repo = api.repo(repo);
    let info = api_repo.info().map_err(|err| hub_error(dataset, err))?;
    let mut files: Vec<String> = info
        .siblings
        .into_iter()
        .map(|sibling| sibling.rfilename)
        .filter(|name| is_split_file(name, prefix))
        .collect();
    files.sort();
    let paths = files
        .iter()
        .map(|file| {
            tracing::info!(repo = %dataset.repo_id, %file, "fetching from the hub");
            api_repo.get(file).map_err(|err| hub_error(dataset, err))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((paths, files, Some(info.sha)))
}

fn cached_files(dataset: &HubDataset, repo: &Repo, prefix: &str) -> Result<Located> {
    let cache = match &dataset.cache_dir {
        Some(dir) => Cache::new(dir.clone()),
        None => Cache::from_env(),
    };
    let cache_repo = cache.repo(repo.clone());
    // The snapshot directory is the parent of any cached file; resolve it through a
    // marker that always exists in a snapshot listing: the revision's ref.
    let repo_dir = cache.path().join(repo.folder_name());
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(&dataset.revision))
        .map(|sha| sha.trim().to_string())
        .unwrap_or_else(|_| dataset.revision.clone());
    let snapshot = repo_dir.join("snapshots").join(&commit);
    let config_dir = snapshot.join(prefix.trim_end_matches('/'));
    let entries = std::fs::read_dir(&config_dir).map_err(|err| {
        hub_error(
            dataset,
            format!(
                "offline and not in the hub cache ({}): {err}",
                config_dir.display()
            ),
        )
    })?;
    let mut files: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| format!("{prefix}{}", entry.file_name().to_string_lossy()))
        .filter(|name| is_split_file(name, prefix))
        .collect();
    files.sort();
    let paths = files
        .iter()
        .map(|file| {
            cache_repo
                .get(file)
                .ok_or_else(|| hub_error(dataset, format!("{file} is not in the hub cache")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((paths, files, Some(commit)))
}

/// Reads MBPP rows (either shape) from a parquet file.
pub fn read_parquet_rows(path: &Path) -> Result<Vec<MbppRow>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let malformed = |line: usize, message: String| DatasetError::Malformed {
        path: path.to_path_buf(),
        line,
        message,
    };
    let file = std::fs::File::open(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|err| malformed(0, err.to_string()))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|err| malformed(0, err.to_string()))?;
    rows.enumerate()
        .map(|(index, row)| {
            let row = row.map_err(|err| malformed(index + 1, err.to_string()))?;
            let object = row
                .get_column_iter()
                .map(|(name, field)| Ok((name.clone(), field_to_json(field)?)))
                .collect::<std::result::Result<serde_json::Map<_, _>, String>>()
                .map_err(|message| malformed(index + 1, message))?;
            serde_json::from_value(serde_json::Value::Object(object))
                .map_err(|err| malformed(index + 1, err.to_string()))
        })
        .collect()
}

/// The JSON value of a parquet field, for the types MBPP's columns use.
fn field_to_json(field: &parquet::record::Field) -> std::result::Result<serde_json::Value, String> {
    use parquet::record::Field;
    Ok(match field {
        Field::Null => serde_json::Value::Null,
        Field::Bool(value) => (*value).into(),
        Field::Byte(value) => (*value).into(),
        Field::Short(value) => (*value).into(),
        Field::Int(value) => (*value).into(),
        Field::Long(value) => (*value).into(),
        Field::UByte(value) => (*value).into(),
        Field::UShort(value) => (*value).into(),
        Field::UInt(value) => (*value).into(),
        Field::ULong(value) => (*value).into(),
        Field::Str(value) => value.clone().into(),
        Field::ListInternal(list) => serde_json::Value::Array(
            list.elements()
                .iter()
                .map(field_to_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        other => return Err(format!("unsupported parquet value {other}")),
    })
}

/// Reads a local parquet file of MBPP rows into problems.
pub fn load_parquet(path: impl AsRef<Path>) -> Result<Vec<Problem>> {
    let path = path.as_ref();
    read_parquet_rows(path)?
        .into_iter()
        .enumerate()
        .map(|(index, row)| {
            row.into_problem()
                .map_err(|message| DatasetError::Malformed {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    /// Writes rows in the layout pyarrow gives the hub's MBPP files (3-level lists).
    fn write_mbpp_parquet(path: &Path, rows: &[(i32, &str, &str, Vec<&str>)]) {
        let schema = Arc::new(
            parse_message_type(
                "message schema {
                    optional int32 task_id;
                    optional binary text (UTF8);
                    optional binary code (UTF8);
                    optional group test_list (LIST) {
                        repeated group list { optional binary element (UTF8); }
                    }
                    optional binary test_setup_code (UTF8);
                }",
            )
            .unwrap(),
        );
        let properties = Arc::new(
            WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build(),
        );
        let file = std::fs::File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, properties).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let all_defined = vec![1i16; rows.len()];

        let mut column = group.next_column().unwrap().unwrap();
        let ids: Vec<i32> = rows.iter().map(|row| row.0).collect();
        column
            .typed::<Int32Type>()
            .write_batch(&ids, Some(&all_defined), None)
            .unwrap();
        column.close().unwrap();
        for field in [1, 2] {
            let mut column = group.next_column().unwrap().unwrap();
            let values: Vec<ByteArray> = rows
                .iter()
                .map(|row| ByteArray::from(if field == 1 { row.1 } else { row.2 }))
                .collect();
            column
                .typed::<ByteArrayType>()
                .write_batch(&values, Some(&all_defined), None)
                .unwrap();
            column.close().unwrap();
        }
        let mut column = group.next_column().unwrap().unwrap();
        let (mut values, mut definitions, mut repetitions) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            for (index, test) in row.3.iter().enumerate() {
                values.push(ByteArray::from(*test));
                definitions.push(3);
                repetitions.push(if index == 0 { 0 } else { 1 });
            }
        }
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, Some(&definitions), Some(&repetitions))
            .unwrap();
        column.close().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        let empty: Vec<ByteArray> = rows.iter().map(|_| ByteArray::from("")).collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&empty, Some(&all_defined), None)
            .unwrap();
        column.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();
    }

    fn fill_hub_cache(cache: &Path, commit: &str) {
        let repo_dir = cache.join("datasets--google-research-datasets--mbpp");
        let config_dir = repo_dir.join("snapshots").join(commit).join("full");
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
        write_mbpp_parquet(
            &config_dir.join("test-00000-of-00001.parquet"),
            &[
                (
                    11,
                    "remove chars",
                    "def remove_Occ(s, ch):\r\n    return s",
                    vec![
                        "assert remove_Occ('a','a') == 'a'",
                        "assert remove_Occ('b','a') == 'b'",
                    ],
                ),
                (
                    12,
                    "sort matrix",
                    "def sort_matrix(m):\r\n    return m",
                    vec!["assert sort_matrix([]) == []"],
                ),
            ],
        );
        write_mbpp_parquet(
            &config_dir.join("train-00000-of-00001.parquet"),
            &[(
                601,
                "chain",
                "def max_chain_length(a, n):\r\n    return n",
                vec!["assert max_chain_length([], 0) == 0"],
            )],
        );
        std::fs::write(config_dir.join("README.md"), "not parquet").unwrap();
    }

    #[test]
    fn offline_load_reads_every_split_from_the_hub_cache() {
        let cache = tempfile::tempdir().unwrap();
        fill_hub_cache(cache.path(), "0123abcd");
        let dataset = HubDataset {
            cache_dir: Some(cache.path().to_path_buf()),
            offline: true,
            ..HubDataset::default()
        };
        let loaded = load_mbpp(&dataset).unwrap();
        assert_eq!(loaded.commit.as_deref(), Some("0123abcd"));
        assert_eq!(
            loaded.files,
            vec![
                "full/test-00000-of-00001.parquet",
                "full/train-00000-of-00001.parquet"
            ]
        );
        let ids: Vec<&str> = loaded.problems.iter().map(|p| p.task_id.as_str()).collect();
        assert_eq!(ids, vec!["11", "12", "601"]);
        let first = &loaded.problems[0];
        assert_eq!(first.tests.len(), 2);
        assert_eq!(first.entry_point.as_deref(), Some("remove_Occ"));
        assert_eq!(
            first.reference.as_deref(),
            Some("def remove_Occ(s, ch):\n    return s")
        );
    }

    #[test]
    fn offline_load_of_an_uncached_revision_names_it() {
        let cache = tempfile::tempdir().unwrap();
        fill_hub_cache(cache.path(), "0123abcd");
        let dataset = HubDataset {
            revision: "v9".into(),
            cache_dir: Some(cache.path().to_path_buf()),
            offline: true,
            ..HubDataset::default()
        };
        let error = load_mbpp(&dataset).unwrap_err().to_string();
        assert!(
            error.contains("google-research-datasets/mbpp@v9"),
            "{error}"
        );
        assert!(error.contains("not in the hub cache"), "{error}");
    }

    #[test]
    fn local_parquet_loads_like_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mbpp.parquet");
        write_mbpp_parquet(
            &path,
            &[(5, "t", "def f():\r\n  return 1", vec!["assert f() == 1"])],
        );
        let problems = load_parquet(&path).unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].tests, vec!["assert f() == 1"]);
    }
}
