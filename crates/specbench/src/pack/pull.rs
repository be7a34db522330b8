//! `specbench data pull`: the official pack from the upstream repository's public raw files.
//!
//! Scenario files, configs and chat templates are taken as they are; the protocol texts are
//! the string constants of upstream's prompt modules, read out of the Python source. Every file
//! is checked (JSON and YAML parse, every protocol constant found, the pack loads), its SHA-256
//! is recorded in `manifest.json`, and the pack appears at its destination in one rename.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Upstream at the commit this version of specbench was checked against.
pub const UPSTREAM: &str =
    "https://raw.githubusercontent.com/zzzhr97/SpecBench/2d4679e04e49ae6971c0d02d1d85f8512c8527ac/";

/// Where `data pull` puts the pack, and where commands look when neither `--data` nor
/// `SPECBENCH_DATA` names one: `data/` in the per-user cache folder.
pub fn default_dir() -> PathBuf {
    crate::cache::default_dir().join("data")
}

pub const SCENARIOS: [&str; 5] = ["Biochem", "Child", "Code", "Health", "Travel"];

/// Files copied as they are: (upstream path, pack path).
fn copied() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for scenario in SCENARIOS {
        for file in ["scenario.json", "specifications.json", "prompts.json"] {
            files.push((
                format!("data/{scenario}/{file}"),
                format!("scenarios/{scenario}/{file}"),
            ));
        }
    }
    for file in ["config_model.yaml", "config_eval_model.yaml", "config_ttd.yaml"] {
        files.push((format!("config/{file}"), format!("config/{file}")));
    }
    for file in ["Qwen3.jinja", "deepseek.jinja", "config.json"] {
        files.push((
            format!("specbench/chat_templates/{file}"),
            format!("chat_templates/{file}"),
        ));
    }
    files
}

/// Protocol texts: (upstream module, constant, pack file). A constant is named by its
/// attribute (`FirstStage`), the class it sits in being implied by the order in the module.
pub const PROTOCOL: [(&str, &str, &str); 14] = [
    ("specbench/utils.py", "DEFAULT_SYSTEM_PROMPT", "system.txt"),
    ("specbench/prompt_ttd.py", "AugmentPrompt", "augment.txt"),
    ("specbench/prompt_ttd.py", "FirstStage", "align3_stage1.txt"),
    ("specbench/prompt_ttd.py", "SecondStage", "align3_stage2.txt"),
    ("specbench/prompt_ttd.py", "ThirdStage", "align3_stage3.txt"),
    (
        "specbench/prompt_ttd.py",
        "FeedBackSystem",
        "self_refine_feedback_system.txt",
    ),
    (
        "specbench/prompt_ttd.py",
        "FeedBackUser",
        "self_refine_feedback_user.txt",
    ),
    (
        "specbench/prompt_ttd.py",
        "RefineSystem",
        "self_refine_refine_system.txt",
    ),
    ("specbench/prompt_ttd.py", "RefineUser", "self_refine_refine_user.txt"),
    ("specbench/prompt_ttd.py", "Rethink", "more_think_rethink.txt"),
    (
        "specbench/prompt_eval.py",
        "SYSTEM_EVAL_PROMPT",
        "judge_joint_system.txt",
    ),
    ("specbench/prompt_eval.py", "USER_EVAL_PROMPT", "judge_joint_user.txt"),
    (
        "specbench/prompt_eval.py",
        "SYSTEM_EVAL_PROMPT_STEPWISE",
        "judge_sequential_system.txt",
    ),
    (
        "specbench/prompt_eval.py",
        "USER_EVAL_PROMPT_STEPWISE",
        "judge_sequential_user.txt",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{url}: {problem}")]
    Fetch { url: String, problem: String },
    #[error("{path}: {problem}")]
    Content { path: String, problem: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: exists (--force replaces it)", path.display())]
    Exists { path: PathBuf },
    #[error("the pulled pack does not load: {0}")]
    Invalid(String),
}

/// What a pull wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub dest: PathBuf,
    /// Pack path → SHA-256, as recorded in `manifest.json`.
    pub files: BTreeMap<String, String>,
}

/// Reads the string assigned to `name` in Python source: `NAME = "..."`, `NAME: str = """..."""`
/// (single, double or triple quotes; the usual backslash escapes). `None` when absent.
pub fn python_constant(source: &str, name: &str) -> Option<String> {
    let mut search = 0;
    while let Some(found) = source[search..].find(name) {
        let start = search + found;
        search = start + name.len();
        let before = source[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let mut rest = source[start + name.len()..].trim_start_matches([' ', '\t']);
        if let Some(annotated) = rest.strip_prefix(':') {
            // `: str` — a type annotation, up to the `=`.
            let Some(equals) = annotated.find('=') else { continue };
            if annotated[..equals].contains('\n') {
                continue;
            }
            rest = &annotated[equals..];
        }
        let Some(value) = rest.strip_prefix('=') else { continue };
        if value.starts_with('=') {
            continue;
        }
        return string_literal(value.trim_start_matches([' ', '\t']));
    }
    None
}

fn string_literal(text: &str) -> Option<String> {
    let quote = ["\"\"\"", "'''", "\"", "'"].into_iter().find(|q| text.starts_with(q))?;
    let mut chars = text[quote.len()..].char_indices().peekable();
    let body = &text[quote.len()..];
    let mut out = String::new();
    while let Some((at, c)) = chars.next() {
        if body[at..].starts_with(quote) {
            return Some(out);
        }
        if c == '\\' {
            let (_, escaped) = chars.next()?;
            match escaped {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '\\' => out.push('\\'),
                '\'' => out.push('\''),
                '"' => out.push('"'),
                // A backslash at the end of a line continues it.
                '\n' => {}
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
            continue;
        }
        if quote.len() == 1 && c == '\n' {
            return None;
        }
        out.push(c);
    }
    None
}

async fn fetch(client: &reqwest::Client, base: &str, path: &str) -> Result<Vec<u8>, PullError> {
    let url = format!("{base}{path}");
    let failed = |problem: String| PullError::Fetch {
        url: url.clone(),
        problem,
    };
    let response = client.get(&url).send().await.map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status().as_u16())));
    }
    let expected = response.content_length();
    let bytes = response.bytes().await.map_err(|e| failed(e.to_string()))?;
    if expected.is_some_and(|n| n != bytes.len() as u64) {
        return Err(failed("the answer was cut short".into()));
    }
    Ok(bytes.to_vec())
}

fn check(path: &str, bytes: &[u8]) -> Result<(), PullError> {
    let bad = |problem: String| PullError::Content {
        path: path.to_string(),
        problem,
    };
    if path.ends_with(".json") {
        serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    } else if path.ends_with(".yaml") {
        let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
        serde_saphyr::from_str::<serde_json::Value>(text).map_err(|e| bad(format!("invalid YAML: {e}")))?;
    }
    Ok(())
}

/// Downloads the pack from `base` (a URL ending in `/`, laid out as the upstream repository)
/// into `dest`. Nothing is left behind on failure; an existing `dest` is replaced only with
/// `force`.
pub async fn pull(base: &str, dest: &Path, force: bool) -> Result<Pulled, PullError> {
    if dest.exists() && !force {
        return Err(PullError::Exists {
            path: dest.to_path_buf(),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PullError::Io { path, source }
    };
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs_err::create_dir_all(parent).map_err(io(parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".specbench-pull-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| PullError::Fetch {
            url: base.to_string(),
            problem: e.to_string(),
        })?;

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (upstream, local) in copied() {
        let bytes = fetch(&client, base, &upstream).await?;
        check(&upstream, &bytes)?;
        files.insert(local, bytes);
    }
    let mut modules: BTreeMap<&str, String> = BTreeMap::new();
    for (module, name, file) in PROTOCOL {
        if !modules.contains_key(module) {
            let bytes = fetch(&client, base, module).await?;
            let text = String::from_utf8(bytes).map_err(|e| PullError::Content {
                path: module.to_string(),
                problem: e.to_string(),
            })?;
            modules.insert(module, text);
        }
        let source = modules.get(module).map(String::as_str).unwrap_or_default();
        let text = python_constant(source, name).ok_or_else(|| PullError::Content {
            path: module.to_string(),
            problem: format!("no string constant `{name}`"),
        })?;
        files.insert(format!("protocol/{file}"), text.into_bytes());
    }

    let mut checksums = BTreeMap::new();
    for (path, bytes) in &files {
        let target = staging.path().join(path);
        if let Some(dir) = target.parent() {
            fs_err::create_dir_all(dir).map_err(io(dir))?;
        }
        fs_err::write(&target, bytes).map_err(io(&target))?;
        checksums.insert(path.clone(), hex::encode(Sha256::digest(bytes)));
    }
    let manifest = serde_json::json!({
        "source": base,
        "files": checksums,
    });
    let manifest_path = staging.path().join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| PullError::Content {
        path: "manifest.json".into(),
        problem: e.to_string(),
    })?;
    fs_err::write(&manifest_path, text).map_err(io(&manifest_path))?;
    super::load(staging.path()).map_err(|e| PullError::Invalid(e.to_string()))?;

    // In place in one rename; an old pack is moved aside first and removed after.
    let staged = staging.keep();
    if dest.exists() {
        let old = parent.join(format!(".specbench-old-{}", std::process::id()));
        fs_err::rename(dest, &old).map_err(io(dest))?;
        fs_err::rename(&staged, dest).map_err(io(dest))?;
        let _ = fs_err::remove_dir_all(&old);
    } else {
        fs_err::rename(&staged, dest).map_err(io(dest))?;
    }
    Ok(Pulled {
        dest: dest.to_path_buf(),
        files: checksums,
    })
}

/// Files whose content no longer matches the checksums `manifest.json` recorded at pull time.
pub fn changed_since_pull(dir: &Path) -> Option<Vec<String>> {
    let manifest: serde_json::Value = serde_json::from_slice(&fs_err::read(dir.join("manifest.json")).ok()?).ok()?;
    let files = manifest.get("files")?.as_object()?;
    Some(
        files
            .iter()
            .filter(|(path, sum)| {
                fs_err::read(dir.join(path))
                    .map(|bytes| hex::encode(Sha256::digest(&bytes)) != sum.as_str().unwrap_or_default())
                    .unwrap_or(true)
            })
            .map(|(path, _)| path.clone())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_constants_are_read_in_every_shape() {
        let source = "X = 1\nclass E:\n    DEFAULT_SYSTEM_PROMPT = \"You are a \\\"helpful\\\" one.\"\n\n\
                      Augment: str = \"\"\"{prompt}\n\nline two\n\"\"\"\n@dataclass\nclass A:\n    FirstStage: str = \"\"\"<think>a\nSo\"\"\"\n\
                      SYSTEM_EVAL_PROMPT_STEPWISE = '''step'''\nSYSTEM_EVAL_PROMPT = 'joint'\n";
        assert_eq!(
            python_constant(source, "DEFAULT_SYSTEM_PROMPT").as_deref(),
            Some("You are a \"helpful\" one.")
        );
        assert_eq!(
            python_constant(source, "Augment").as_deref(),
            Some("{prompt}\n\nline two\n")
        );
        assert_eq!(python_constant(source, "FirstStage").as_deref(), Some("<think>a\nSo"));
        assert_eq!(python_constant(source, "SYSTEM_EVAL_PROMPT").as_deref(), Some("joint"));
        assert_eq!(
            python_constant(source, "SYSTEM_EVAL_PROMPT_STEPWISE").as_deref(),
            Some("step")
        );
        assert_eq!(python_constant(source, "Missing"), None);
        assert_eq!(python_constant("A = \"\"\"never closed", "A"), None);
    }
}
