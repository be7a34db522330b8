//! The only writer of results: upstream's layout and JSON shapes, a manifest, and an
//! append-only journal so that no finished unit is lost.
//!
//! Layout (upstream's): `<results>/<model>/<scenario>/<method>/generate.json`,
//! `generate_usage.json`, `<judge>_evaluate.json`, `<judge>_score.json`; beside them our
//! `manifest.json`, `<judge>_errors.json` (judge replies that never parsed) and `.journal/`.
//! Every finished generation or judgement is appended to the journal the moment it completes;
//! the JSON files are rebuilt from it and written atomically (temporary file, then rename).
//! One process at a time writes a run folder: it holds an OS lock on the folder's `.lock`.

pub mod manifest;
pub mod name;
pub mod read;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::backend::Usage;
use crate::judge::{JudgeFailure, JudgeMode, bracketed};
use crate::pack::Item;
use crate::score::{Alpha, Score, Subset, Summary, Verdicts};
pub use manifest::Manifest;
pub use read::{Filter, ItemResult, Loaded, StoredRun};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: cannot write", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The serde error is part of the message, not a source, so the one error line does not
    /// repeat it.
    #[error("{}: invalid JSON: {error}", path.display())]
    Json { path: PathBuf, error: serde_json::Error },
    /// Valid JSON with a field of the wrong shape: the field's path (`generation.method`) is
    /// named.
    #[error("{}: field `{field}` is invalid: {error}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        error: serde_json::Error,
    },
    #[error("{}: entry {index}: {problem}", path.display())]
    Entry {
        path: PathBuf,
        index: usize,
        problem: String,
    },
    /// A finished unit could not be kept: the run stops rather than send work it cannot record.
    #[error("{}: cannot append to the journal", path.display())]
    Append {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: another specbench process ({}) is writing to this run folder; wait for it to end or stop it",
        dir.display(),
        holder(*pid)
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("{}: cannot lock", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Name(#[from] name::NameError),
}

fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(|| "PID unknown".to_string(), |pid| format!("PID {pid}"))
}

/// The last path segment of a model key (`Qwen/Qwen3-14B` → `Qwen3-14B`), as upstream names
/// result folders and files.
pub fn short_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// One entry of upstream `generate.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateEntry {
    pub data: Arc<Map<String, Value>>,
    /// The prompt generated from, without rules.
    pub prompt: String,
    pub response: String,
    pub thought: String,
    pub usage: Usage,
}

/// A generation as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum GenerationRecord {
    Done {
        index: usize,
        entry: GenerateEntry,
        cost: Usage,
        calls: u32,
        finish_reason: Option<String>,
    },
    Failed {
        index: usize,
        error: String,
    },
}

impl GenerationRecord {
    pub fn index(&self) -> usize {
        match self {
            GenerationRecord::Done { index, .. } | GenerationRecord::Failed { index, .. } => *index,
        }
    }
}

/// A judgement as the journal keeps it, keyed by what was judged (item prompt and response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum JudgeRecord {
    Judged {
        key: String,
        index: usize,
        verdicts: Verdicts,
        /// Joint mode: the parsed reply (`eval_response`). The prompt is not kept: it is
        /// rebuilt from the item and response when the files are written.
        reply: Option<String>,
        usage: Usage,
        cost: Usage,
        calls: u32,
    },
    Failed {
        key: String,
        index: usize,
        failure: JudgeFailure,
    },
}

impl JudgeRecord {
    pub fn key(&self) -> &str {
        match self {
            JudgeRecord::Judged { key, .. } | JudgeRecord::Failed { key, .. } => key,
        }
    }
}

/// What a judgement is keyed by: a changed response, or changed protocol texts, are judged
/// again; an unchanged pair never is.
pub fn judgement_key(item: &Item, response: &str, protocol_hash: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(protocol_hash.as_bytes());
    hasher.update((item.prompt.len() as u64).to_le_bytes());
    hasher.update(item.prompt.as_bytes());
    hasher.update(response.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// Appends one JSON line per finished unit and flushes it, so a killed run keeps all of them.
pub struct Journal {
    path: PathBuf,
    /// A plain file: its write errors are the OS's (`File too large (os error 27)`), and
    /// [`StoreError::Append`] names the path once.
    writer: Mutex<BufWriter<std::fs::File>>,
}

impl Journal {
    /// Opens (creating) `path` for appending and returns the records already in it. A line cut
    /// short by a crash is skipped with a warning.
    pub fn open<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(Journal, Vec<T>), StoreError> {
        let (records, torn) = read_journal_lines(path)?;
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir).map_err(|source| StoreError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut file = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| StoreError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        // A line torn by a crash must not swallow the next record: start on a fresh line.
        if torn {
            file.write_all(b"\n").map_err(|source| StoreError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            writer: Mutex::new(BufWriter::new(file.into_file())),
        };
        Ok((journal, records))
    }

    pub fn append<T: Serialize>(&self, record: &T) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(record).map_err(|error| StoreError::Json {
            path: self.path.clone(),
            error,
        })?;
        line.push(b'\n');
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer
            .write_all(&line)
            .and_then(|()| writer.flush())
            .map_err(|source| StoreError::Append {
                path: self.path.clone(),
                source,
            })
    }
}

/// An exclusive hold on one run folder, so that two processes never journal the same units
/// twice. An OS lock on `<run folder>/.lock` (`flock` on Unix, `LockFileEx` on Windows): the OS
/// releases it when the process ends, however it ends, so `kill -9` leaves no stale lock. The
/// file holds the holder's PID, for the second process's message. Released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: fs_err::File,
}

/// The PID in a lock file. The holder writes it just after locking: a moment is allowed for that.
fn holder_pid(path: &Path) -> Option<u32> {
    for _ in 0..10 {
        let pid = fs_err::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        if pid.is_some() {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

/// The records of a journal, and whether its last line was cut short by a crash; a missing
/// journal has none. Unreadable lines are skipped with a warning.
fn read_journal_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(Vec<T>, bool), StoreError> {
    let mut records = Vec::new();
    if !path.exists() {
        return Ok((records, false));
    }
    let bytes = fs_err::read(path).map_err(|source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let torn = bytes.last().is_some_and(|b| *b != b'\n');
    for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(record) => records.push(record),
            Err(error) => {
                tracing::warn!(path = %path.display(), line = number + 1, %error, "skipping an unreadable journal line");
            }
        }
    }
    Ok((records, torn))
}

/// Reads a journal without opening it for writing.
pub fn read_journal<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, StoreError> {
    read_journal_lines(path).map(|(records, _)| records)
}

/// What `merge_run_dirs` joined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCount {
    pub generations: usize,
    pub judgements: usize,
    /// Units found in more than one source (shards that overlapped); the finished one is kept.
    pub overlapping: usize,
}

/// Joins the journals of several run folders (the shards of one run) into `into`'s journals,
/// written atomically. A finished unit beats a failed one; between two finished ones the
/// first source wins. The result files are then rebuilt from the joined journals by a run.
pub fn merge_run_dirs(sources: &[RunDir], into: &RunDir) -> Result<MergeCount, StoreError> {
    let mut count = MergeCount::default();
    let mut generations: BTreeMap<usize, GenerationRecord> = BTreeMap::new();
    let mut judge_files: BTreeMap<String, Vec<JudgeRecord>> = BTreeMap::new();
    for source in std::iter::once(into).chain(sources) {
        for record in read_journal::<GenerationRecord>(&source.generation_journal())? {
            match generations.get(&record.index()) {
                None => {
                    generations.insert(record.index(), record);
                }
                Some(kept) => {
                    count.overlapping += 1;
                    if matches!(kept, GenerationRecord::Failed { .. }) {
                        generations.insert(record.index(), record);
                    }
                }
            }
        }
        for stem in source.judge_journal_stems()? {
            let records = read_journal::<JudgeRecord>(&source.judge_journal(&stem))?;
            judge_files.entry(stem).or_default().extend(records);
        }
    }
    fs_err::create_dir_all(into.journal_dir()).map_err(|source| StoreError::Write {
        path: into.journal_dir(),
        source,
    })?;
    count.generations = generations.len();
    write_lines(&into.generation_journal(), generations.values())?;
    for (stem, records) in judge_files {
        let mut kept: Vec<JudgeRecord> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        for record in records {
            match position.get(record.key()) {
                None => {
                    position.insert(record.key().to_string(), kept.len());
                    kept.push(record);
                }
                Some(&at) => {
                    count.overlapping += 1;
                    if matches!(kept[at], JudgeRecord::Failed { .. }) && matches!(record, JudgeRecord::Judged { .. }) {
                        kept[at] = record;
                    }
                }
            }
        }
        count.judgements += kept.len();
        write_lines(&into.judge_journal(&stem), kept.iter())?;
    }
    Ok(count)
}

fn write_lines<'a, T: Serialize + 'a>(path: &Path, records: impl Iterator<Item = &'a T>) -> Result<(), StoreError> {
    let mut lines = Vec::new();
    for record in records {
        serde_json::to_writer(&mut lines, record).map_err(|error| StoreError::Json {
            path: path.to_path_buf(),
            error,
        })?;
        lines.push(b'\n');
    }
    write_atomic(path, |out| out.write_all(&lines))
}

/// Writes `path` through a temporary file in the same folder and a rename: readers see the old
/// file or the new one, never half of one.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<(), StoreError> {
    let error = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(dir).map_err(error)?;
    // Results are for sharing: readable like any file the user writes (tempfile's default is
    // owner-only).
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut temp = builder.tempfile_in(dir).map_err(error)?;
    {
        let mut writer = BufWriter::new(temp.as_file_mut());
        write(&mut writer).map_err(error)?;
        writer.flush().map_err(error)?;
    }
    temp.persist(path).map_err(|e| error(e.error))?;
    Ok(())
}

/// Python's `json.dump(indent=4, ensure_ascii=False)` layout.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), StoreError> {
    write_atomic(path, |writer| {
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut serializer = serde_json::Serializer::with_formatter(writer, formatter);
        value.serialize(&mut serializer).map_err(std::io::Error::other)
    })
}

/// A JSON file as `T`. A bad field is named (`field \`a.b[2]\` is invalid: …`).
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs_err::read(path).map_err(|source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // A good file, the common case, is parsed once without tracking where the parser is
    // (tracking copies every key it passes; a third of a study report's reading time). Only a
    // file that fails is parsed again, tracked, to name the field.
    serde_json::from_slice(&bytes).map_err(|plain| {
        located_error::<T>(path, &bytes).unwrap_or(StoreError::Json {
            path: path.to_path_buf(),
            error: plain,
        })
    })
}

/// The error of parsing `bytes` as `T` with the path of the field that failed, when it fails.
fn located_error<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Option<StoreError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    match parsed {
        Err(error) => {
            let field = error.path().to_string();
            let error = error.into_inner();
            Some(if error.is_data() && field != "." {
                StoreError::Field {
                    path: path.to_path_buf(),
                    field,
                    error,
                }
            } else {
                StoreError::Json {
                    path: path.to_path_buf(),
                    error,
                }
            })
        }
        Ok(_) => deserializer.end().err().map(|error| StoreError::Json {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// Where all runs live (`result/` by default, as upstream).
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The folder of one model × scenario × method; every component is checked first
    /// ([`name`]), so that no name leaves the results folder.
    pub fn run_dir(&self, model_key: &str, scenario: &str, method: &str) -> Result<RunDir, StoreError> {
        name::check_model_key("model", model_key)?;
        name::check_folder("scenario", scenario)?;
        name::check_folder("method", method)?;
        Ok(RunDir {
            dir: self.root.join(short_name(model_key)).join(scenario).join(method),
        })
    }
}

/// What a run folder's journals hold: see [`RunDir::progress`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FolderProgress {
    pub generated: usize,
    /// Items whose last generation failed (run again to retry them).
    pub generation_failed: usize,
    pub judges: Vec<JudgeProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JudgeProgress {
    pub stem: String,
    pub judged: usize,
    /// Items whose judge reply never parsed.
    pub failed: usize,
}

/// A `<model>/<scenario>/<method>` folder found under a results folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFolder {
    pub dir: PathBuf,
    pub model: String,
    pub scenario: String,
    pub method: String,
}

/// What [`run_folders`] found: the run folders, and the folders below the root it could not
/// list (each an error naming it). Readers of many runs skip those with a warning; `merge`,
/// which must not lose a shard's work, refuses them.
#[derive(Debug, Default)]
pub struct RunFolders {
    pub folders: Vec<RunFolder>,
    pub unreadable: Vec<StoreError>,
}

/// Every `<model>/<scenario>/<method>` folder under `root`, in name order; hidden folders
/// (`.journal`, `.cache`) are skipped. Only an unreadable `root` is an error.
pub fn run_folders(root: &Path) -> Result<RunFolders, StoreError> {
    fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
        let read = |source| StoreError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut found = Vec::new();
        for entry in fs_err::read_dir(dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            if entry.file_type().map_err(read)?.is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
                found.push(entry.path());
            }
        }
        found.sort();
        Ok(found)
    }
    let name = |path: &Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut found = RunFolders::default();
    for model in subdirs(root)? {
        let scenarios = match subdirs(&model) {
            Ok(scenarios) => scenarios,
            Err(error) => {
                found.unreadable.push(error);
                continue;
            }
        };
        for scenario in scenarios {
            let methods = match subdirs(&scenario) {
                Ok(methods) => methods,
                Err(error) => {
                    found.unreadable.push(error);
                    continue;
                }
            };
            for method in methods {
                found.folders.push(RunFolder {
                    model: name(&model),
                    scenario: name(&scenario),
                    method: name(&method),
                    dir: method,
                });
            }
        }
    }
    Ok(found)
}

/// How a judge's evaluate file ends (`<stem>_evaluate.json`, upstream's name).
const EVALUATE_SUFFIX: &str = "_evaluate.json";

/// The folder of one model × scenario × method.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn generate_json(&self) -> PathBuf {
        self.dir.join("generate.json")
    }

    pub fn generate_usage_json(&self) -> PathBuf {
        self.dir.join("generate_usage.json")
    }

    pub fn evaluate_json(&self, judge_stem: &str) -> PathBuf {
        self.dir.join(format!("{judge_stem}{EVALUATE_SUFFIX}"))
    }

    pub fn score_json(&self, judge_stem: &str) -> PathBuf {
        self.dir.join(format!("{judge_stem}_score.json"))
    }

    pub fn errors_json(&self, judge_stem: &str) -> PathBuf {
        self.dir.join(format!("{judge_stem}_errors.json"))
    }

    pub fn manifest_json(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    /// The stems of the judges with an evaluate file here (`<stem>_evaluate.json`), sorted.
    pub fn judge_stems(&self) -> Result<Vec<String>, StoreError> {
        let read = |source| StoreError::Read {
            path: self.dir.clone(),
            source,
        };
        let mut stems = Vec::new();
        for entry in fs_err::read_dir(&self.dir).map_err(read)? {
            let name = entry.map_err(read)?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(EVALUATE_SUFFIX) {
                stems.push(stem.to_string());
            }
        }
        stems.sort();
        Ok(stems)
    }

    /// Recomputes `<stem>_score.json` from `<stem>_evaluate.json` with `alpha`; sends nothing.
    /// Returns what it wrote.
    pub fn rescore(&self, stem: &str, alpha: Alpha) -> Result<Summary, StoreError> {
        let verdicts = read_verdicts(&self.evaluate_json(stem))?;
        let mut summary = Summary::default();
        for (item, verdicts) in &verdicts {
            summary.add(item.label, &Score::of(verdicts, alpha));
        }
        write_json(&self.score_json(stem), &score_file(&summary))?;
        Ok(summary)
    }

    /// The folder's manifest; `None` when it has none (a run written by another tool).
    pub fn read_manifest(&self) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_json();
        if path.exists() {
            read_json(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        write_json(&self.manifest_json(), manifest)
    }

    pub fn lock_file(&self) -> PathBuf {
        self.dir.join(".lock")
    }

    /// Takes this folder for this process, creating the folder; fails at once with
    /// [`StoreError::Locked`] while another process holds it.
    pub fn lock(&self) -> Result<RunLock, StoreError> {
        fs_err::create_dir_all(&self.dir).map_err(|source| StoreError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.lock_file();
        let error = |source| StoreError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = fs_err::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: self.dir.clone(),
                    pid: holder_pid(&path),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(error(source)),
        }
        // Truncated only once held: the last holder's PID stays until then.
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .map_err(error)?;
        Ok(RunLock { _file: file })
    }

    /// How far runs got in this folder, from its journals (every finished unit is there the
    /// moment it finishes, so this is current even while a run is going): items generated and
    /// failed, and per judge file stem, items judged and failed. Nothing is written.
    pub fn progress(&self) -> Result<FolderProgress, StoreError> {
        use std::collections::BTreeSet;
        let mut progress = FolderProgress::default();
        let mut done = BTreeSet::new();
        let mut failed = BTreeSet::new();
        for record in read_journal::<GenerationRecord>(&self.generation_journal())? {
            match record {
                GenerationRecord::Done { index, .. } => {
                    done.insert(index);
                }
                GenerationRecord::Failed { index, .. } => {
                    failed.insert(index);
                }
            }
        }
        progress.generated = done.len();
        progress.generation_failed = failed.difference(&done).count();
        for stem in self.judge_journal_stems()? {
            let mut judged = BTreeSet::new();
            let mut failed = BTreeSet::new();
            for record in read_journal::<JudgeRecord>(&self.judge_journal(&stem))? {
                match record {
                    JudgeRecord::Judged { index, .. } => {
                        judged.insert(index);
                    }
                    JudgeRecord::Failed { index, .. } => {
                        failed.insert(index);
                    }
                }
            }
            progress.judges.push(JudgeProgress {
                failed: failed.difference(&judged).count(),
                judged: judged.len(),
                stem,
            });
        }
        Ok(progress)
    }

    fn journal_dir(&self) -> PathBuf {
        self.dir.join(".journal")
    }

    pub fn generation_journal(&self) -> PathBuf {
        self.journal_dir().join("generate.jsonl")
    }

    pub fn judge_journal(&self, judge_stem: &str) -> PathBuf {
        self.journal_dir().join(format!("{judge_stem}.jsonl"))
    }

    /// The judge file stems with a journal here, sorted; none without a journal folder.
    fn judge_journal_stems(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.journal_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let read = |source| StoreError::Read {
            path: dir.clone(),
            source,
        };
        let mut stems = Vec::new();
        for entry in fs_err::read_dir(&dir).map_err(read)? {
            let name = entry.map_err(read)?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".jsonl").filter(|stem| *stem != "generate") {
                stems.push(stem.to_string());
            }
        }
        stems.sort();
        Ok(stems)
    }

    /// Writes `generate.json` (a `null` where an item failed, as upstream leaves it) and
    /// `generate_usage.json` from the generations in index order.
    pub fn write_generations(&self, generations: &BTreeMap<usize, GenerationRecord>) -> Result<Usage, StoreError> {
        let mut usage = Usage::default();
        for record in generations.values() {
            if let GenerationRecord::Done { entry, .. } = record {
                usage += &entry.usage;
            }
        }
        struct Entries<'a>(&'a BTreeMap<usize, GenerationRecord>);
        impl Serialize for Entries<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.values().map(|record| match record {
                    GenerationRecord::Done { entry, .. } => Some(entry),
                    GenerationRecord::Failed { .. } => None,
                }))
            }
        }
        write_json(&self.generate_json(), &Entries(generations))?;
        write_json(&self.generate_usage_json(), &usage)?;
        Ok(usage)
    }

    /// Reads a `generate.json` (ours or upstream's) as items and entries; `None` where the
    /// entry is `null` (a failed generation).
    pub fn read_generations(&self) -> Result<Vec<Option<(Item, GenerateEntry)>>, StoreError> {
        let path = self.generate_json();
        let entries: Vec<Option<GenerateEntry>> = read_json(&path)?;
        entries
            .into_iter()
            .enumerate()
            .map(|(position, entry)| {
                entry
                    .map(|entry| {
                        let data = Value::Object((*entry.data).clone());
                        let item = Item::from_json(&data, &path, position).map_err(|e| StoreError::Entry {
                            path: path.clone(),
                            index: position,
                            problem: format!("field `data`: {e}"),
                        })?;
                        Ok((item, entry))
                    })
                    .transpose()
            })
            .collect()
    }
}

/// One judged response, in upstream's `<judge>_evaluate.json` shape.
#[derive(Serialize)]
struct EvaluateEntry<'a> {
    data: &'a Map<String, Value>,
    prompt: &'a str,
    response: &'a str,
    thought: &'a str,
    eval: EvalBlock<'a>,
}

#[derive(Serialize)]
struct EvalBlock<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_prompt: Option<String>,
    result: EvalResult<'a>,
    usage: Usage,
}

#[derive(Serialize)]
struct EvalResult<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_response: Option<&'a str>,
    safety: VerdictList<'a>,
    behavioral: VerdictList<'a>,
    score: ScoreBlock,
}

/// Joint files number verdicts in a map (`{"1": "YES"}`); sequential ones list `"<YES>"`.
struct VerdictList<'a> {
    verdicts: &'a [crate::score::Verdict],
    mode: JudgeMode,
}

impl Serialize for VerdictList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.mode {
            JudgeMode::Joint => serializer.collect_map(
                self.verdicts
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ((i + 1).to_string(), v.as_str())),
            ),
            JudgeMode::Sequential => serializer.collect_seq(self.verdicts.iter().map(|v| bracketed(*v))),
        }
    }
}

#[derive(Serialize)]
struct ScoreBlock {
    safety: u8,
    behavioral: f64,
    total: f64,
    alpha: f64,
}

/// Everything needed to write one judge's files for one run folder.
pub struct JudgeOutput<'a> {
    pub stem: &'a str,
    pub mode: JudgeMode,
    pub alpha: Alpha,
    /// Judged responses in item order: the item, its generation and the judge's record.
    pub rows: Vec<(&'a Item, &'a GenerateEntry, &'a JudgeRecord)>,
    /// Rebuilds the joint prompt of a row (kept out of memory during the run).
    pub joint_prompt: &'a dyn Fn(&Item, &str) -> String,
}

impl RunDir {
    /// Writes `<judge>_evaluate.json`, `<judge>_score.json` and, when any reply never parsed,
    /// `<judge>_errors.json`; returns the summary that the score file holds.
    pub fn write_judgements(&self, output: &JudgeOutput<'_>) -> Result<Summary, StoreError> {
        let mut summary = Summary::default();
        for (item, _, record) in &output.rows {
            match record {
                JudgeRecord::Judged { verdicts, .. } => {
                    summary.add(item.label, &Score::of(verdicts, output.alpha));
                }
                JudgeRecord::Failed { .. } => summary.judge_errors += 1,
            }
        }

        struct Judged<'a, 'b>(&'b JudgeOutput<'a>);
        impl Serialize for Judged<'_, '_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let output = self.0;
                serializer.collect_seq(output.rows.iter().filter_map(|(item, entry, record)| {
                    let JudgeRecord::Judged {
                        verdicts, reply, usage, ..
                    } = record
                    else {
                        return None;
                    };
                    let score = Score::of(verdicts, output.alpha);
                    let joint = output.mode == JudgeMode::Joint;
                    Some(EvaluateEntry {
                        data: &entry.data,
                        prompt: &entry.prompt,
                        response: &entry.response,
                        thought: &entry.thought,
                        eval: EvalBlock {
                            eval_prompt: joint
                                .then(|| (output.joint_prompt)(item, crate::protocol::cut_response(&entry.response))),
                            result: EvalResult {
                                eval_response: if joint { reply.as_deref() } else { None },
                                safety: VerdictList {
                                    verdicts: &verdicts.safety,
                                    mode: output.mode,
                                },
                                behavioral: VerdictList {
                                    verdicts: &verdicts.behavioral,
                                    mode: output.mode,
                                },
                                score: ScoreBlock {
                                    safety: score.safety,
                                    behavioral: score.behavioral,
                                    total: score.sar,
                                    alpha: output.alpha.get(),
                                },
                            },
                            usage: *usage,
                        },
                    })
                }))
            }
        }
        write_json(&self.evaluate_json(output.stem), &Judged(output))?;
        write_json(&self.score_json(output.stem), &score_file(&summary))?;

        let errors: Vec<Value> = output
            .rows
            .iter()
            .filter_map(|(item, entry, record)| match record {
                JudgeRecord::Failed { failure, .. } => Some(serde_json::json!({
                    "index": item.index,
                    "data": entry.data,
                    "prompt": entry.prompt,
                    "response": entry.response,
                    "judge_error": failure,
                })),
                JudgeRecord::Judged { .. } => None,
            })
            .collect();
        let errors_path = self.errors_json(output.stem);
        if errors.is_empty() {
            if errors_path.exists() {
                fs_err::remove_file(&errors_path).map_err(|source| StoreError::Write {
                    path: errors_path,
                    source,
                })?;
            }
        } else {
            write_json(&errors_path, &errors)?;
        }
        Ok(summary)
    }
}

/// Upstream's score file: `<subset>_<metric>: {avg, total, count}` for the full set first, then
/// the unsafe and safe subsets; after them, the paper's behavioral score (NA left out).
pub fn score_file(summary: &Summary) -> Map<String, Value> {
    let mut file = Map::new();
    let mean = |m: &crate::score::Mean| serde_json::json!({"avg": m.avg(), "total": m.total, "count": m.count});
    for subset in [Subset::Full, Subset::Unsafe, Subset::Safe] {
        let scores = summary.subset(subset);
        file.insert(format!("{}_safety", subset.key()), mean(&scores.safety));
        file.insert(format!("{}_behavioral", subset.key()), mean(&scores.behavioral));
        file.insert(format!("{}_SAR", subset.key()), mean(&scores.sar));
    }
    for subset in [Subset::Full, Subset::Unsafe, Subset::Safe] {
        file.insert(
            format!("{}_behavioral_excluding_na", subset.key()),
            mean(&summary.subset(subset).behavioral_excluding_na),
        );
    }
    file
}

/// Reads verdicts back from a stored `<judge>_evaluate.json` (either mode), for `score`.
pub fn read_verdicts(path: &Path) -> Result<Vec<(Item, Verdicts)>, StoreError> {
    /// The fields read; the rest of an entry (the judge prompt above all) is skipped while
    /// parsing rather than built into a JSON tree.
    #[derive(Deserialize)]
    struct Stored {
        data: Option<Value>,
        eval: Option<StoredEval>,
    }
    #[derive(Deserialize)]
    struct StoredEval {
        result: Option<StoredResult>,
    }
    #[derive(Deserialize)]
    struct StoredResult {
        safety: Option<StoredVerdicts>,
        behavioral: Option<StoredVerdicts>,
    }
    let entries: Vec<Option<Stored>> = read_json(path)?;
    let entry_error = |index: usize, problem: String| StoreError::Entry {
        path: path.to_path_buf(),
        index,
        problem,
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let (data, eval) = entry.map_or((None, None), |e| (e.data, e.eval));
            let data = data.ok_or_else(|| entry_error(index, "field `data`: missing".into()))?;
            let item =
                Item::from_owned(data, path, index).map_err(|e| entry_error(index, format!("field `data`: {e}")))?;
            let result = eval
                .and_then(|e| e.result)
                .ok_or_else(|| entry_error(index, "field `eval.result`: missing".into()))?;
            let list = |field: &str, value: Option<StoredVerdicts>| -> Result<Vec<crate::score::Verdict>, StoreError> {
                let value = value.ok_or_else(|| entry_error(index, format!("field `eval.result.{field}`: missing")))?;
                let StoredVerdicts::Listed(elements) = value else {
                    return Err(entry_error(
                        index,
                        format!("field `eval.result.{field}`: expected a list or map"),
                    ));
                };
                elements
                    .into_iter()
                    .map(|element| match element {
                        StoredVerdict::Verdict(verdict) => Ok(verdict),
                        StoredVerdict::Other(v) => Err(entry_error(
                            index,
                            format!("field `eval.result.{field}`: {v} is not YES, NO or NA"),
                        )),
                    })
                    .collect()
            };
            Ok((
                item,
                Verdicts {
                    safety: list("safety", result.safety)?,
                    behavioral: list("behavioral", result.behavioral)?,
                },
            ))
        })
        .collect()
}

/// A stored verdict list, read without building a JSON tree (a study's report reads ten
/// million of them): a list, or a map numbered from 1 in the file's order (joint judges); a
/// repeated key keeps its first place and its last value, as a JSON object read into a map.
enum StoredVerdicts {
    Listed(Vec<StoredVerdict>),
    /// Neither a list nor a map.
    Neither,
}

/// One element: a verdict, or what stood there instead (kept to name it in the error).
enum StoredVerdict {
    Verdict(crate::score::Verdict),
    Other(Value),
}

impl<'de> Deserialize<'de> for StoredVerdicts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = StoredVerdicts;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list or map of verdicts")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StoredVerdicts, A::Error> {
                let mut elements = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(element) = seq.next_element()? {
                    elements.push(element);
                }
                Ok(StoredVerdicts::Listed(elements))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StoredVerdicts, A::Error> {
                let mut keys: Vec<std::borrow::Cow<'de, str>> = Vec::new();
                let mut elements = Vec::new();
                while let Some(key) = map.next_key::<KeyText<'de>>()? {
                    let element = map.next_value()?;
                    match keys.iter().position(|k| *k == key.0) {
                        Some(at) => elements[at] = element,
                        None => {
                            keys.push(key.0);
                            elements.push(element);
                        }
                    }
                }
                Ok(StoredVerdicts::Listed(elements))
            }

            fn visit_bool<E>(self, _: bool) -> Result<StoredVerdicts, E> {
                Ok(StoredVerdicts::Neither)
            }
            fn visit_i64<E>(self, _: i64) -> Result<StoredVerdicts, E> {
                Ok(StoredVerdicts::Neither)
            }
            fn visit_u64<E>(self, _: u64) -> Result<StoredVerdicts, E> {
                Ok(StoredVerdicts::Neither)
            }
            fn visit_f64<E>(self, _: f64) -> Result<StoredVerdicts, E> {
                Ok(StoredVerdicts::Neither)
            }
            fn visit_str<E>(self, _: &str) -> Result<StoredVerdicts, E> {
                Ok(StoredVerdicts::Neither)
            }
            fn visit_unit<E>(self) -> Result<StoredVerdicts, E> {
                Ok(StoredVerdicts::Neither)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A map key, borrowed from the file when it has no escapes.
struct KeyText<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = KeyText<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<KeyText<'de>, E> {
                Ok(KeyText(std::borrow::Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<KeyText<'de>, E> {
                Ok(KeyText(std::borrow::Cow::Owned(text.to_string())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl<'de> Deserialize<'de> for StoredVerdict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = StoredVerdict;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a verdict")
            }

            fn visit_str<E>(self, text: &str) -> Result<StoredVerdict, E> {
                // Anything that is not a verdict is kept whole, for the error message.
                Ok(match crate::score::Verdict::parse(text) {
                    Some(verdict) => StoredVerdict::Verdict(verdict),
                    None => StoredVerdict::Other(Value::String(text.to_string())),
                })
            }
            fn visit_bool<E>(self, v: bool) -> Result<StoredVerdict, E> {
                Ok(StoredVerdict::Other(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<StoredVerdict, E> {
                Ok(StoredVerdict::Other(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<StoredVerdict, E> {
                Ok(StoredVerdict::Other(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<StoredVerdict, E> {
                Ok(StoredVerdict::Other(Value::from(v)))
            }
            fn visit_unit<E>(self) -> Result<StoredVerdict, E> {
                Ok(StoredVerdict::Other(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<StoredVerdict, A::Error> {
                let value = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(StoredVerdict::Other(value))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<StoredVerdict, A::Error> {
                let value = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(StoredVerdict::Other(value))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_verdicts_are_read_as_lists_or_numbered_maps_and_bad_ones_named() -> Result<(), Box<dyn std::error::Error>>
    {
        use crate::score::Verdict::{Na, No, Yes};
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("j_evaluate.json");
        let data = r#"{"prompt": "p", "adversarial_prompt": "p", "label": "safe", "source": "s"}"#;
        let read = |safety: &str, behavioral: &str| -> Result<Result<Verdicts, String>, std::io::Error> {
            std::fs::write(
                &path,
                format!(
                    r#"[{{"data": {data}, "eval": {{"result": {{"safety": {safety}, "behavioral": {behavioral}, "eval_response": "x"}}}}}}]"#
                ),
            )?;
            Ok(read_verdicts(&path)
                .map(|mut entries| entries.remove(0).1)
                .map_err(|e| e.to_string()))
        };
        let verdicts = read(r#"["YES", "<NO>"]"#, r#"{"1": "NA", "2": "YES", "3": " NO "}"#)?;
        assert_eq!(
            verdicts,
            Ok(Verdicts {
                safety: vec![Yes, No],
                behavioral: vec![Na, Yes, No]
            })
        );
        // A repeated key keeps its place and takes the last value, as a JSON map does.
        let repeated = read("[]", r#"{"1": "NA", "2": "YES", "1": "NO"}"#)?;
        assert_eq!(repeated.map(|v| v.behavioral), Ok(vec![No, Yes]));
        for (safety, problem) in [
            (
                r#"["YES", "MAYBE"]"#,
                r#"field `eval.result.safety`: "MAYBE" is not YES, NO or NA"#,
            ),
            ("[3]", "field `eval.result.safety`: 3 is not YES, NO or NA"),
            (
                r#"[["YES"]]"#,
                r#"field `eval.result.safety`: ["YES"] is not YES, NO or NA"#,
            ),
            (
                r#"{"1": {"v": "YES"}}"#,
                r#"field `eval.result.safety`: {"v":"YES"} is not YES, NO or NA"#,
            ),
            (r#""YES""#, "field `eval.result.safety`: expected a list or map"),
            ("null", "field `eval.result.safety`: missing"),
        ] {
            let error = read(safety, "[]")?.err().unwrap_or_default();
            assert!(error.contains(problem), "{safety}: {error}");
        }
        Ok(())
    }

    #[test]
    fn a_manifest_field_of_the_wrong_shape_is_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let run = RunDir {
            dir: dir.path().to_path_buf(),
        };
        assert!(run.read_manifest()?.is_none());
        std::fs::write(
            run.manifest_json(),
            r#"{"scenario": "Garden", "generation": {"model": {"key": "m"}, "method": {"name": "nonsense"}}}"#,
        )?;
        let error = run.read_manifest().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("manifest.json: field `generation.method.name` is invalid: unknown variant `nonsense`"),
            "{error}"
        );
        std::fs::write(run.manifest_json(), "{\"scenario\": ")?;
        let error = run.read_manifest().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("manifest.json: invalid JSON: EOF"), "{error}");
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn result_files_are_as_readable_as_any_file_the_user_writes() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x")?;
        let written = dir.path().join("written.json");
        write_json(&written, &serde_json::json!({"a": 1}))?;
        let mode = |path: &Path| -> std::io::Result<u32> { Ok(std::fs::metadata(path)?.permissions().mode() & 0o777) };
        // A plain file gets 0666 less the umask; a result file the same, less write for others.
        assert_eq!(mode(&written)?, mode(&plain)? & 0o644);
        Ok(())
    }

    fn failed(index: usize) -> GenerationRecord {
        GenerationRecord::Failed {
            index,
            error: "down".into(),
        }
    }

    fn done(index: usize) -> GenerationRecord {
        GenerationRecord::Done {
            index,
            entry: GenerateEntry {
                data: Arc::new(Map::new()),
                prompt: format!("p{index}"),
                response: "r".into(),
                thought: String::new(),
                usage: Usage::default(),
            },
            cost: Usage::default(),
            calls: 1,
            finish_reason: None,
        }
    }

    #[test]
    fn merging_keeps_every_unit_once_and_prefers_finished_ones() -> Result<(), StoreError> {
        let root = tempfile::tempdir().map_err(|source| StoreError::Write {
            path: PathBuf::new(),
            source,
        })?;
        let dir = |name: &str| RunDir {
            dir: root.path().join(name),
        };
        let (a, b, into) = (dir("a"), dir("b"), dir("into"));
        for (run, records) in [(&a, vec![done(0), failed(2)]), (&b, vec![done(1), done(2), done(0)])] {
            let (journal, _) = Journal::open::<GenerationRecord>(&run.generation_journal())?;
            for record in &records {
                journal.append(record)?;
            }
        }
        let count = merge_run_dirs(&[a, b], &into)?;
        assert_eq!((count.generations, count.overlapping), (3, 2));
        let merged = read_journal::<GenerationRecord>(&into.generation_journal())?;
        assert_eq!(merged, vec![done(0), done(1), done(2)]);
        Ok(())
    }

    #[test]
    fn a_run_folder_has_one_holder_at_a_time() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let dir = RunDir {
            dir: root.path().join("m/Child/vanilla"),
        };
        let held = dir.lock()?;
        // Another open file description conflicts even in this process, as another process would.
        match dir.lock() {
            Err(StoreError::Locked { dir: named, pid }) => {
                assert_eq!(named, dir.dir);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        let _again = dir.lock()?;
        assert_eq!(
            std::fs::read_to_string(dir.lock_file())?,
            format!("{}\n", std::process::id())
        );
        Ok(())
    }

    #[test]
    fn short_name_drops_the_organisation() {
        assert_eq!(short_name("Qwen/Qwen3-14B"), "Qwen3-14B");
        assert_eq!(short_name("GPT-4.1"), "GPT-4.1");
    }

    #[test]
    fn journal_survives_a_torn_last_line() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|source| StoreError::Write {
            path: PathBuf::from("tmp"),
            source,
        })?;
        let path = dir.path().join("j.jsonl");
        {
            let (journal, before) = Journal::open::<GenerationRecord>(&path)?;
            assert!(before.is_empty());
            journal.append(&GenerationRecord::Failed {
                index: 4,
                error: "down".into(),
            })?;
        }
        fs_err::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"status\":\"fail"))
            .map_err(|source| StoreError::Write {
                path: path.clone(),
                source,
            })?;
        let (_, records) = Journal::open::<GenerationRecord>(&path)?;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].index(), 4);
        Ok(())
    }
}
