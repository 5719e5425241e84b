//! The content-addressed response cache: a teacher answer is paid for once.
//!
//! Layout: `DIR/ab/abcdef….json`, one file per (request, sample index), named by
//! [`ChatRequest::cache_key`](crate::wire::ChatRequest::cache_key), holding the request and
//! the server's response body exactly as received (so a better parser can re-read old
//! answers). Writes go to a temporary file in the same directory, are synced, then renamed
//! over the final name: a reader (or a run killed mid-write) sees either no entry or a
//! whole one, never half. A file that does not parse is treated as a miss and overwritten.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TeacherError};
use crate::wire::ChatRequest;

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The key this entry is filed under (checked on read).
    pub key: String,
    /// Which sample of the request this answer is.
    pub sample_index: u32,
    /// The request that was sent.
    pub request: ChatRequest,
    /// The response body as the teacher sent it.
    pub response: serde_json::Value,
}

/// A directory of cached teacher answers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResponseCache {
    dir: PathBuf,
}

impl ResponseCache {
    /// Opens (creating it when missing) the cache directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|err| TeacherError::io(&dir, err))?;
        Ok(Self { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `key` lives.
    pub fn path_of(&self, key: &str) -> PathBuf {
        let shard = key.get(..2).unwrap_or("__");
        self.dir.join(shard).join(format!("{key}.json"))
    }

    /// The entry for `key`, if one is stored and readable. An unreadable or corrupt entry is
    /// logged and reported as a miss: the answer will be fetched again and overwrite it.
    pub async fn get(&self, key: &str) -> Option<CacheEntry> {
        let path = self.path_of(key);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot read cache entry; refetching");
                return None;
            }
        };
        match serde_json::from_slice::<CacheEntry>(&bytes) {
            Ok(entry) if entry.key == key => Some(entry),
            Ok(entry) => {
                tracing::warn!(path = %path.display(), stored_key = %entry.key, "cache entry filed under the wrong key; refetching");
                None
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "corrupt cache entry; refetching");
                None
            }
        }
    }

    /// Stores an entry atomically (temporary file, fsync, rename).
    pub async fn put(&self, entry: &CacheEntry) -> Result<()> {
        let path = self.path_of(&entry.key);
        let bytes = serde_json::to_vec(entry).expect("a cache entry always serialises");
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .expect("the cache writer does not panic")
    }
}

/// Writes `bytes` to `path` so that `path` is never seen half-written.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|err| TeacherError::io(dir, err))?;
    let mut file =
        tempfile::NamedTempFile::new_in(dir).map_err(|err| TeacherError::io(dir, err))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_data())
        .map_err(|err| TeacherError::io(file.path(), err))?;
    file.persist(path)
        .map_err(|err| TeacherError::io(path, err.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ChatMessage;

    fn entry(sample_index: u32) -> CacheEntry {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![ChatMessage::user("q")],
            temperature: 0.7,
            top_p: 0.8,
            presence_penalty: 1.5,
            max_tokens: 8,
            stream: false,
            seed: None,
            chat_template_kwargs: None,
        };
        CacheEntry {
            key: request.cache_key(sample_index),
            sample_index,
            request,
            response: serde_json::json!({"choices": [{"message": {"content": "a"}}]}),
        }
    }

    #[tokio::test]
    async fn round_trip_and_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResponseCache::open(dir.path().join("c")).unwrap();
        let stored = entry(3);
        assert_eq!(cache.get(&stored.key).await, None);
        cache.put(&stored).await.unwrap();
        assert_eq!(cache.get(&stored.key).await, Some(stored.clone()));
        assert_eq!(cache.get(&entry(4).key).await, None);
        // Nothing but the entry is left behind (no temporary files).
        let shard = cache.path_of(&stored.key).parent().unwrap().to_owned();
        assert_eq!(std::fs::read_dir(shard).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn corrupt_or_misfiled_entries_are_misses_and_get_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResponseCache::open(dir.path()).unwrap();
        let stored = entry(0);
        let path = cache.path_of(&stored.key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"key\": \"trunc").unwrap();
        assert_eq!(cache.get(&stored.key).await, None);
        let mut misfiled = entry(1);
        misfiled.key = "someone else".into();
        std::fs::write(&path, serde_json::to_vec(&misfiled).unwrap()).unwrap();
        assert_eq!(cache.get(&stored.key).await, None);
        cache.put(&stored).await.unwrap();
        assert_eq!(cache.get(&stored.key).await, Some(stored));
    }
}
