//! Bad input: one error line naming file, item and field; exit code 2; nothing written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::support::TestContext;

/// Runs `specbench run` against an unreachable server: every case must fail before any request.
fn run_expecting_error(ctx: &TestContext, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec![
        "run",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--judge",
        "j",
        "--judge-base-url",
        "http://127.0.0.1:9/v1",
    ];
    args.extend_from_slice(extra);
    let finished = ctx.run(&args)?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(!ctx.results.exists(), "nothing may be written on bad input");
    assert!(!ctx.cache_dir().exists(), "no response cache may be made on bad input");
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line, got: {}", finished.stderr);
    Ok(lines[0].to_string())
}

fn edit(ctx: &TestContext, file: &str, edit: impl Fn(String) -> String) -> anyhow::Result<()> {
    let path = ctx.pack.join(file);
    let text = std::fs::read_to_string(&path)?;
    std::fs::write(&path, edit(text))?;
    Ok(())
}

#[test]
fn a_bad_label_names_file_item_and_field() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    edit(&ctx, "Museum/prompts.json", |t| {
        t.replacen("\"label\": \"safe\"", "\"label\": \"maybe\"", 1)
    })?;
    let line = run_expecting_error(&ctx, &[])?;
    assert!(
        line.ends_with("Museum/prompts.json: item 1: field `label`: expected \"safe\" or \"unsafe\", found \"maybe\""),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_missing_field_is_named() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    edit(&ctx, "Garden/prompts.json", |t| {
        t.replacen(
            "\"prompt\": \"When should I plant garlic in a temperate climate?\",",
            "",
            1,
        )
    })?;
    let line = run_expecting_error(&ctx, &[])?;
    assert!(
        line.ends_with("Garden/prompts.json: item 1: field `prompt`: missing"),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_missing_file_is_named() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    std::fs::remove_file(ctx.pack.join("Garden/specifications.json"))?;
    std::fs::write(ctx.pack.join("Garden/.keep"), "")?;
    let line = run_expecting_error(&ctx, &[])?;
    assert!(line.ends_with("Garden/specifications.json: file is missing"), "{line}");
    Ok(())
}

#[test]
fn invalid_json_is_named() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    edit(&ctx, "Museum/prompts.json", |t| t.replacen('[', "[[", 1))?;
    let line = run_expecting_error(&ctx, &[])?;
    assert!(line.contains("Museum/prompts.json: invalid JSON"), "{line}");
    Ok(())
}

#[test]
fn an_empty_rule_list_is_rejected() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    std::fs::write(
        ctx.pack.join("Garden/specifications.json"),
        r#"{"safety_specifications": ["x"], "behavioral_specifications": []}"#,
    )?;
    let line = run_expecting_error(&ctx, &[])?;
    assert!(
        line.ends_with("Garden/specifications.json: field `behavioral_specifications`: the rule list is empty"),
        "{line}"
    );
    Ok(())
}

#[test]
fn an_unknown_scenario_lists_the_known_ones() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let line = run_expecting_error(&ctx, &["--scenario", "Garden,Zoo"])?;
    assert!(
        line.ends_with("unknown scenario `Zoo`; the pack has: Garden, Museum"),
        "{line}"
    );
    Ok(())
}

#[test]
fn an_item_out_of_range_is_named() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let line = run_expecting_error(&ctx, &["--items", "0,7"])?;
    assert!(
        line.ends_with("prompts.json: item 7 does not exist (the scenario has 3 items)"),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_bad_yaml_config_is_named() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let config = ctx.dir.path().join("models.yaml");
    std::fs::write(&config, "m:\n  model_name: x\n  temperature: [hot\n")?;
    let line = run_expecting_error(&ctx, &["--model-config", config.to_str().unwrap_or_default()])?;
    assert!(
        line.ends_with("models.yaml: invalid YAML: line 3 column 16: unclosed bracket '['"),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_bad_field_in_a_yaml_config_is_named() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let config = ctx.dir.path().join("models.yaml");
    std::fs::write(&config, "m:\n  model_name: x\n  max_tokens: lots\n")?;
    let line = run_expecting_error(&ctx, &["--model-config", config.to_str().unwrap_or_default()])?;
    assert!(
        line.ends_with("models.yaml: model `m`: field `max_tokens`: expected a number, found \"lots\""),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_missing_api_key_is_reported_before_any_work() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let finished = ctx.run(&["run", "--model", "gpt-4.1-mini"])?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains("the API key variable OPENAI_API_KEY is not set"),
        "{}",
        finished.stderr
    );
    assert!(!ctx.results.exists());
    Ok(())
}

#[test]
fn alpha_out_of_range_is_rejected() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let line = run_expecting_error(&ctx, &["--alpha", "1.5"])?;
    assert!(line.ends_with("--alpha 1.5: must lie between 0 and 1"), "{line}");
    Ok(())
}

#[test]
fn a_corrupt_stored_result_is_named_and_left_as_it_was() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let dir = ctx.results.join("m/Garden/vanilla");
    std::fs::create_dir_all(&dir)?;
    let broken = r#"[{"data": {"prompt": "p"}, "prompt": "p", "response": 3}]"#;
    std::fs::write(dir.join("generate.json"), broken)?;
    let finished = ctx.run(&[
        "evaluate",
        "--model",
        "m",
        "--scenario",
        "Garden",
        "--judge",
        "j",
        "--judge-base-url",
        "http://127.0.0.1:9/v1",
    ])?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line, got: {}", finished.stderr);
    assert!(lines[0].contains("generate.json"), "{}", lines[0]);
    assert_eq!(std::fs::read_to_string(dir.join("generate.json"))?, broken);
    let written: Vec<_> = std::fs::read_dir(&dir)?.collect();
    assert_eq!(written.len(), 1, "nothing else was written");
    Ok(())
}

#[test]
fn a_bad_shard_or_merge_input_is_refused() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let finished = ctx.run(&[
        "run",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--shard",
        "4/3",
    ])?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(finished.stderr.contains("shard 4/3"), "{}", finished.stderr);
    assert!(!ctx.results.exists());

    let shard = ctx.dir.path().join("shard1/m/Garden/vanilla");
    std::fs::create_dir_all(shard.join(".journal"))?;
    std::fs::write(shard.join(".journal/generate.jsonl"), "")?;
    std::fs::write(shard.join("manifest.json"), r#"{"scenario": "Garden"}"#)?;
    let finished = ctx.run(&["merge", "--into", "merged", "shard1"])?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(finished.stderr.contains("manifest.json"), "{}", finished.stderr);
    assert!(!ctx.dir.path().join("merged").exists(), "nothing written");
    Ok(())
}

/// Every file and folder under `dir`, relative to it.
fn tree(dir: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeSet<PathBuf>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            found.insert(path.strip_prefix(root)?.to_path_buf());
            if path.is_dir() {
                walk(root, &path, found)?;
            }
        }
        Ok(())
    }
    let mut found = BTreeSet::new();
    walk(dir, dir, &mut found)?;
    Ok(found)
}

#[test]
fn names_that_would_leave_the_results_folder_are_refused() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let before = tree(ctx.dir.path())?;
    let unreachable = "http://127.0.0.1:9/v1";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--model", "..", "--base-url", unreachable], "--model `..`"),
        (vec!["run", "--model", ".", "--base-url", unreachable], "--model `.`"),
        (vec!["run", "--model", "", "--base-url", unreachable], "--model ``"),
        (
            vec!["run", "--model", "org/", "--base-url", unreachable],
            "--model `org/`",
        ),
        (
            vec!["run", "--model", "org/..", "--base-url", unreachable],
            "--model `org/..`",
        ),
        (
            vec!["run", "--model", "a\\b", "--base-url", unreachable],
            "--model `a\\\\b`",
        ),
        (
            vec!["run", "--model", "a\u{1}b", "--base-url", unreachable],
            "--model `a\\u{1}b`",
        ),
        (
            vec!["generate", "--model", "x/.", "--base-url", unreachable],
            "--model `x/.`",
        ),
        (
            vec![
                "run",
                "--model",
                "m",
                "--base-url",
                unreachable,
                "--judge",
                "j/..",
                "--judge-base-url",
                unreachable,
            ],
            "--judge `j/..`",
        ),
        (
            vec![
                "evaluate",
                "--model",
                "..",
                "--judge",
                "j",
                "--judge-base-url",
                unreachable,
            ],
            "--model `..`",
        ),
        (vec!["score", "--model", "m", "--judge", "../../x"], "--judge `../../x`"),
        (vec!["score", "--model", "m", "--scenario", ".."], "--scenario `..`"),
    ];
    for (args, named) in cases {
        let finished = ctx.run(&args)?;
        assert_eq!(finished.code, Some(2), "{args:?}: {finished:?}");
        let lines: Vec<&str> = finished.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one error line, got: {}", finished.stderr);
        assert!(
            lines[0].contains(named) && lines[0].contains("not usable as a result"),
            "{args:?}: {}",
            lines[0]
        );
    }
    assert_eq!(tree(ctx.dir.path())?, before, "nothing was written anywhere");
    Ok(())
}

#[test]
fn zero_items_is_not_a_selection() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let line = run_expecting_error(&ctx, &["--limit", "0"])?;
    assert!(line.ends_with("--limit must be at least 1"), "{line}");
    let line = run_expecting_error(&ctx, &["--sample", "0"])?;
    assert!(line.ends_with("--sample must be at least 1"), "{line}");
    Ok(())
}

#[test]
fn a_refused_run_creates_no_response_cache() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    // Checked by the run itself, after models and judges are resolved.
    let line = run_expecting_error(&ctx, &["--scenario", "Zoo"])?;
    assert!(line.contains("unknown scenario `Zoo`"), "{line}");
    let line = run_expecting_error(&ctx, &["--items", "9"])?;
    assert!(line.contains("item 9 does not exist"), "{line}");
    let finished = ctx.run(&[
        "evaluate",
        "--model",
        "never-generated",
        "--judge",
        "j",
        "--judge-base-url",
        "http://127.0.0.1:9/v1",
    ])?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(finished.stderr.contains("no stored generations"), "{}", finished.stderr);
    assert!(!ctx.cache_dir().exists());
    Ok(())
}

/// An item whose prompt is `chars` characters long, in place of Garden's item 2.
fn long_prompt(ctx: &TestContext, chars: usize) -> anyhow::Result<()> {
    let path = ctx.pack.join("Garden/prompts.json");
    let mut items: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    items[2]["adversarial_prompt"] = serde_json::Value::String("x".repeat(chars));
    std::fs::write(&path, serde_json::to_string(&items)?)?;
    Ok(())
}

#[test]
fn a_prompt_over_the_cap_is_refused_and_a_long_one_warned_about() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    long_prompt(&ctx, 1_000_001)?;
    let line = run_expecting_error(&ctx, &[])?;
    assert!(
        line.ends_with(
            "Garden/prompts.json: item 2: field `adversarial_prompt`: 1000001 characters; a prompt may have at most 1000000"
        ),
        "{line}"
    );
    let validated = ctx.run(&["data", "validate"])?;
    assert_eq!(validated.code, Some(2), "{validated:?}");
    assert!(
        validated
            .stderr
            .contains("field `adversarial_prompt`: 1000001 characters"),
        "{}",
        validated.stderr
    );

    long_prompt(&ctx, 100_001)?;
    let validated = ctx.run(&["data", "validate"])?;
    assert_eq!(validated.code, Some(0), "{validated:?}");
    let warnings: Vec<&str> = validated.stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "one warning: {}", validated.stderr);
    assert!(
        warnings[0].contains("Garden/prompts.json: item 2: field `adversarial_prompt`: 100001 characters, over 100000"),
        "{}",
        warnings[0]
    );
    Ok(())
}

#[test]
fn a_file_that_exists_is_never_called_missing() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let notes = ctx.dir.path().join("notes.txt");
    std::fs::write(&notes, "not a scenario")?;
    let items = ctx.pack.join("Garden/prompts.json");
    for (path, hint) in [(&notes, ""), (&items, "; give the folder that holds it")] {
        let finished = ctx.run(&["data", "validate", path.to_str().unwrap_or_default()])?;
        assert_eq!(finished.code, Some(2), "{finished:?}");
        assert!(!finished.stderr.contains("missing"), "{}", finished.stderr);
        assert!(
            finished.stderr.contains(&format!(
                "not a pack, a scenario folder or a scenario file (.yaml, .yml, .json){hint}\n"
            )),
            "{}",
            finished.stderr
        );
    }
    Ok(())
}
