//! A fresh folder with a copy of the fixture pack, and the binary to run in it.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestContext {
    pub dir: tempfile::TempDir,
    pub pack: PathBuf,
    pub results: PathBuf,
}

/// What a finished command printed, and how it exited.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl TestContext {
    /// A temp folder holding `pack/` (a copy of `fixtures/packs/<name>`) and no results yet.
    pub fn with_pack(name: &str) -> anyhow::Result<TestContext> {
        let dir = tempfile::tempdir()?;
        let pack = dir.path().join("pack");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/packs")
            .join(name);
        copy_dir(&fixture, &pack)?;
        let results = dir.path().join("result");
        Ok(TestContext { dir, pack, results })
    }

    /// The binary, run in the temp folder, with no key or token variables of the caller's
    /// environment.
    pub fn specbench(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_specbench"));
        command
            .current_dir(self.dir.path())
            .env("SPECBENCH_DATA", &self.pack)
            .env("SPECBENCH_CACHE_DIR", self.cache_dir())
            .env_remove("OPENAI_API_KEY")
            .env_remove("DEEPSEEK_API_KEY")
            .env_remove("SPECBENCH_LOG")
            .env_remove("SPECBENCH_VIEW_TOKEN");
        command
    }

    /// Each test's own response cache, inside its temp folder.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Like `run`, with neither SPECBENCH_DATA nor --data: commands look for a pulled pack.
    pub fn run_without_data(&self, args: &[&str]) -> anyhow::Result<Finished> {
        finish(self.specbench().env_remove("SPECBENCH_DATA").args(args))
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<Finished> {
        finish(self.specbench().args(args))
    }

    pub fn read_json(&self, relative: &str) -> anyhow::Result<serde_json::Value> {
        let path = self.results.join(relative);
        let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Every file under the results folder, as text (binary journals included).
    pub fn all_result_text(&self) -> anyhow::Result<String> {
        let mut text = String::new();
        collect_text(&self.results, &mut text)?;
        Ok(text)
    }
}

pub fn finish(command: &mut Command) -> anyhow::Result<Finished> {
    let output = command.output()?;
    Ok(Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn collect_text(dir: &Path, text: &mut String) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_text(&path, text)?;
        } else {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(&path)?));
        }
    }
    Ok(())
}
