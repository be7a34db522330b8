//! The response cache: every successful model reply, keyed by what produced it, so that a
//! repeated request (a rerun, another method sharing a first call, a crashed run resumed from
//! before its journal line) is never paid for twice.
//!
//! Owns: the SQLite file (WAL, so several runs on one machine share it) and hit counts. The key,
//! a SHA-256 of the endpoint's identity and the whole request (never a key or header), is
//! `backend::CacheKey`, made beside the request it is made of.
//! Errors are never stored: `Model` stores only a reply it returns, and the judge takes back a
//! reply that did not parse.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::backend::{CacheFailure, CacheKey, Generation, ReplyCache, Usage};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("response cache {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("response cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("response cache {path}: {reason}")]
    Unavailable { path: PathBuf, reason: String },
}

/// `Model`'s view of the cache.
impl ReplyCache for ResponseCache {
    fn get(&self, key: &CacheKey) -> Result<Option<Generation>, CacheFailure> {
        Ok(ResponseCache::get(self, key)?)
    }

    fn put(&self, key: &CacheKey, model: &str, generation: &Generation) -> Result<(), CacheFailure> {
        Ok(ResponseCache::put(self, key, model, generation)?)
    }

    fn remove(&self, key: &CacheKey) -> Result<(), CacheFailure> {
        Ok(ResponseCache::remove(self, key)?)
    }
}

/// What `specbench cache stats` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub path: PathBuf,
    pub entries: u64,
    /// Replies served from the cache, in all runs since it was made or cleared.
    pub hits: u64,
    pub bytes: u64,
    /// Entries per model key, most first.
    pub models: Vec<(String, u64)>,
}

/// One SQLite file of replies. Cheap calls under one lock: a lookup or an insert takes
/// microseconds next to a request's seconds, so no thread pool is needed.
#[derive(Debug)]
pub struct ResponseCache {
    dir: PathBuf,
    path: PathBuf,
    /// Opened at the first lookup for a run ([`ResponseCache::deferred`]), so that a command
    /// refused for bad input leaves no cache file behind; the error text when it could not be.
    connection: OnceLock<Result<Mutex<Connection>, String>>,
    /// Looks replies up and changes nothing: no hit counted, nothing stored or removed.
    read_only: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS responses (
    key BLOB PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    reasoning TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    created INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
";

impl ResponseCache {
    /// The file name inside a cache folder.
    pub const FILE: &str = "responses.sqlite3";

    /// Opens (creating) `dir/responses.sqlite3` now.
    pub fn open(dir: &Path) -> Result<ResponseCache, CacheError> {
        let path = dir.join(Self::FILE);
        let connection = connect(dir, &path)?;
        Ok(ResponseCache {
            dir: dir.to_path_buf(),
            path,
            connection: OnceLock::from(Ok(Mutex::new(connection))),
            read_only: false,
        })
    }

    /// `dir/responses.sqlite3` for lookups only, when it exists (a study's plan asks what it
    /// holds): nothing is created, counted, stored or removed.
    pub fn read_only(dir: &Path) -> Option<ResponseCache> {
        let path = dir.join(Self::FILE);
        if !path.is_file() {
            return None;
        }
        let connection = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|connection| {
                connection.busy_timeout(std::time::Duration::from_secs(10))?;
                Ok(connection)
            })
            .map(Mutex::new)
            .map_err(|error| {
                tracing::warn!(%error, path = %path.display(), "cannot read the response cache");
                error.to_string()
            });
        Some(ResponseCache {
            dir: dir.to_path_buf(),
            path,
            connection: OnceLock::from(connection),
            read_only: true,
        })
    }

    /// `dir/responses.sqlite3`, created or opened at the first lookup or store: nothing is
    /// written before a run has passed every check. A cache that cannot be opened then is
    /// warned about once and the run goes on without it (it costs requests, not results).
    pub fn deferred(dir: &Path) -> ResponseCache {
        ResponseCache {
            dir: dir.to_path_buf(),
            path: dir.join(Self::FILE),
            connection: OnceLock::new(),
            read_only: false,
        }
    }
}

/// Creates the folder and the file if need be, and sets the connection up.
fn connect(dir: &Path, path: &Path) -> Result<Connection, CacheError> {
    fs_err::create_dir_all(dir).map_err(|source| CacheError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let sqlite = |source| CacheError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let connection = Connection::open(path).map_err(sqlite)?;
    // WAL: readers and one writer at once, several processes (shards on one machine) too.
    // synchronous=NORMAL: a power cut may lose the last replies, never corrupt the file; the
    // run's journal, not the cache, is what guarantees finished work.
    connection.pragma_update(None, "journal_mode", "WAL").map_err(sqlite)?;
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite)?;
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sqlite)?;
    connection.execute_batch(SCHEMA).map_err(sqlite)?;
    Ok(connection)
}

impl ResponseCache {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open connection; `None` when a deferred open failed (warned about once).
    fn connection(&self) -> Option<std::sync::MutexGuard<'_, Connection>> {
        let opened = self.connection.get_or_init(|| {
            connect(&self.dir, &self.path).map(Mutex::new).map_err(|error| {
                tracing::warn!(%error, "running without the response cache (--no-cache silences this)");
                error.to_string()
            })
        });
        opened
            .as_ref()
            .ok()
            .map(|connection| connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The connection, or why there is none, for commands about the cache itself.
    fn required(&self) -> Result<std::sync::MutexGuard<'_, Connection>, CacheError> {
        self.connection().ok_or_else(|| CacheError::Unavailable {
            path: self.path.clone(),
            reason: "could not be opened".into(),
        })
    }

    fn error(&self, source: rusqlite::Error) -> CacheError {
        CacheError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The stored reply for `key`, counting the hit.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Generation>, CacheError> {
        let Some(connection) = self.connection() else {
            return Ok(None);
        };
        let found = connection
            .prepare_cached(
                "SELECT text, reasoning, prompt_tokens, completion_tokens, total_tokens, finish_reason
                 FROM responses WHERE key = ?1",
            )
            .and_then(|mut statement| {
                statement.query_row(params![key.as_bytes().as_slice()], |row| {
                    Ok(Generation {
                        text: row.get(0)?,
                        reasoning: row.get(1)?,
                        usage: Usage {
                            prompt_tokens: count(row.get(2)?),
                            completion_tokens: count(row.get(3)?),
                            total_tokens: count(row.get(4)?),
                        },
                        finish_reason: row.get(5)?,
                    })
                })
            })
            .optional()
            .map_err(|e| self.error(e))?;
        if found.is_some() && !self.read_only {
            connection
                .execute(
                    "UPDATE responses SET hits = hits + 1 WHERE key = ?1",
                    params![key.as_bytes().as_slice()],
                )
                .map_err(|e| self.error(e))?;
        }
        Ok(found)
    }

    pub fn put(&self, key: &CacheKey, model: &str, generation: &Generation) -> Result<(), CacheError> {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let Some(connection) = self.connection().filter(|_| !self.read_only) else {
            return Ok(());
        };
        connection
            .prepare_cached(
                "INSERT OR REPLACE INTO responses
                 (key, model, text, reasoning, prompt_tokens, completion_tokens, total_tokens, finish_reason, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    key.as_bytes().as_slice(),
                    model,
                    generation.text,
                    generation.reasoning,
                    column(generation.usage.prompt_tokens),
                    column(generation.usage.completion_tokens),
                    column(generation.usage.total_tokens),
                    generation.finish_reason,
                    created,
                ])
            })
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Takes back a reply that turned out to be unusable (a judge reply that does not parse),
    /// so the next attempt asks the model again.
    pub fn remove(&self, key: &CacheKey) -> Result<(), CacheError> {
        let Some(connection) = self.connection().filter(|_| !self.read_only) else {
            return Ok(());
        };
        connection
            .execute(
                "DELETE FROM responses WHERE key = ?1",
                params![key.as_bytes().as_slice()],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub fn stats(&self) -> Result<CacheStats, CacheError> {
        let connection = self.required()?;
        let (entries, hits) = connection
            .query_row("SELECT COUNT(*), COALESCE(SUM(hits), 0) FROM responses", [], |row| {
                Ok((count(row.get(0)?), count(row.get(1)?)))
            })
            .map_err(|e| self.error(e))?;
        let mut statement = connection
            .prepare("SELECT model, COUNT(*) AS n FROM responses GROUP BY model ORDER BY n DESC, model")
            .map_err(|e| self.error(e))?;
        let models = statement
            .query_map([], |row| Ok((row.get(0)?, count(row.get(1)?))))
            .map_err(|e| self.error(e))?
            .collect::<Result<Vec<(String, u64)>, _>>()
            .map_err(|e| self.error(e))?;
        let bytes = ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut name = self.path.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(PathBuf::from(name)).ok()
            })
            .map(|meta| meta.len())
            .sum();
        Ok(CacheStats {
            path: self.path.clone(),
            entries,
            hits,
            bytes,
            models,
        })
    }

    /// Deletes every entry; returns how many there were.
    pub fn clear(&self) -> Result<u64, CacheError> {
        let connection = self.required()?;
        let removed = connection
            .execute("DELETE FROM responses", [])
            .map_err(|e| self.error(e))?;
        connection.execute_batch("VACUUM").map_err(|e| self.error(e))?;
        Ok(removed as u64)
    }
}

/// SQLite integers are signed; token counts never come near the limit.
fn column(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// Where the cache lives unless told: `$SPECBENCH_CACHE_DIR`, else `$XDG_CACHE_HOME/specbench`,
/// else `~/.cache/specbench`, else `.specbench-cache` in the working folder.
pub fn default_dir() -> PathBuf {
    let from = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = from(crate::env::Env::CACHE_DIR) {
        return dir;
    }
    if let Some(dir) = from("XDG_CACHE_HOME") {
        return dir.join("specbench");
    }
    if let Some(home) = from("HOME") {
        return home.join(".cache").join("specbench");
    }
    PathBuf::from(".specbench-cache")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Message, Request};

    fn generation(text: &str) -> Generation {
        Generation {
            text: text.into(),
            reasoning: Some("why".into()),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
            },
            finish_reason: Some("stop".into()),
        }
    }

    #[test]
    fn stores_counts_hits_removes_and_clears() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = ResponseCache::open(dir.path())?;
        let request = Request::chat(vec![Message::user("hello")]);
        let key = request.cache_key("endpoint-a");
        assert_eq!(cache.get(&key)?, None);
        cache.put(&key, "m", &generation("hi"))?;
        assert_eq!(cache.get(&key)?, Some(generation("hi")));
        assert_eq!(cache.get(&key)?, Some(generation("hi")));
        let stats = cache.stats()?;
        assert_eq!((stats.entries, stats.hits), (1, 2));
        assert_eq!(stats.models, vec![("m".to_string(), 1)]);
        cache.remove(&key)?;
        assert_eq!(cache.get(&key)?, None);
        cache.put(&key, "m", &generation("hi"))?;
        assert_eq!(cache.clear()?, 1);
        assert_eq!(cache.stats()?.entries, 0);
        Ok(())
    }

    #[test]
    fn a_second_process_sees_the_first_ones_entries() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = ResponseCache::open(dir.path())?;
        let second = ResponseCache::open(dir.path())?;
        let key = Request::chat(vec![Message::user("q")]).cache_key("e");
        first.put(&key, "m", &generation("a"))?;
        assert_eq!(second.get(&key)?, Some(generation("a")));
        Ok(())
    }
}
