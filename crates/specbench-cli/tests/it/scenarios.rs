//! Scenario packs: `data validate`, `data stats`, `scenario new`, and an authored scenario (the
//! shipped example) run with every method and both judge modes, then reported and viewed.

use std::path::PathBuf;

use serde_json::Value;
use specbench_test::{Reply, StubServer, synthetic_reply};

use crate::support::TestContext;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/BankSupport.yaml")
}

#[test]
fn validate_lists_every_problem_with_file_item_and_field() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let prompts = ctx.pack.join("Museum/prompts.json");
    let text = std::fs::read_to_string(&prompts)?;
    std::fs::write(
        &prompts,
        text.replacen("\"label\": \"safe\"", "\"label\": \"maybe\"", 1)
            .replacen("\"prompt\":", "\"prompt_x\":", 1),
    )?;
    let rules = ctx.pack.join("Garden/specifications.json");
    std::fs::write(
        &rules,
        r#"{"safety_specifications": [], "behavioral_specifications": ["Be kind"]}"#,
    )?;
    let pack = ctx.pack.to_string_lossy().into_owned();
    let finished = ctx.run(&["data", "validate", &pack])?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("Garden/specifications.json")
            && l.contains("field `safety_specifications`: the rule list is empty")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Museum/prompts.json") && l.contains("field `label`")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Museum/prompts.json") && l.contains("field `prompt`: missing")),
        "{lines:?}"
    );
    assert!(lines.last().is_some_and(|l| l.contains("3 problem(s)")), "{lines:?}");

    let good = TestContext::with_pack("minimal")?;
    let valid = good.run(&["data", "validate"])?;
    assert_eq!(valid.code, Some(0), "{valid:?}");
    assert!(valid.stdout.contains("valid: 2 scenarios"), "{}", valid.stdout);
    Ok(())
}

#[test]
fn stats_count_items_labels_rules_and_answers() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let finished = ctx.run(&["data", "stats", &example().to_string_lossy()])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let row = finished
        .stdout
        .lines()
        .find(|l| l.starts_with("BankSupport"))
        .unwrap_or_default()
        .split_whitespace()
        .take(7)
        .collect::<Vec<_>>();
    assert_eq!(
        row,
        ["BankSupport", "30", "15", "15", "6", "6", "14"],
        "{}",
        finished.stdout
    );
    assert!(finished.stdout.contains("custom 30"), "{}", finished.stdout);
    Ok(())
}

#[test]
fn a_new_scenario_file_validates_and_is_never_overwritten() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let made = ctx.run(&["scenario", "new", "Clinic"])?;
    assert_eq!(made.code, Some(0), "{made:?}");
    let file = ctx.dir.path().join("Clinic.yaml");
    let text = std::fs::read_to_string(&file)?;
    assert!(text.starts_with("# A SpecBench scenario"));
    let valid = ctx.run(&["data", "validate", "Clinic.yaml"])?;
    assert_eq!(valid.code, Some(0), "{valid:?}");
    let again = ctx.run(&["scenario", "new", "Clinic"])?;
    assert_eq!(again.code, Some(2), "{again:?}");
    assert_eq!(std::fs::read_to_string(&file)?, text);
    let bad = ctx.run(&["scenario", "new", "../escape"])?;
    assert_eq!(bad.code, Some(2), "{bad:?}");

    // A bad authored field is named with its file and item.
    std::fs::write(&file, text.replace("label: unsafe", "label: risky"))?;
    let broken = ctx.run(&["data", "validate", "Clinic.yaml"])?;
    assert_eq!(broken.code, Some(2), "{broken:?}");
    assert!(
        broken.stderr.contains("Clinic.yaml: item 1: field `label`"),
        "{}",
        broken.stderr
    );
    Ok(())
}

#[test]
fn the_example_scenario_runs_every_method_and_both_judge_modes_and_shows_in_report_and_viewer() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let data = example().to_string_lossy().into_owned();
    let finished = ctx.run(&[
        "run",
        "--data",
        &data,
        "--model",
        "bank-model",
        "--base-url",
        &url,
        "--judge",
        "bank-judge",
        "--judge-base-url",
        &url,
        "--judge-mode",
        "joint,sequential",
        "--method",
        "raw,vanilla,zero_think,more_think,self_refine,align3,best_of_n,tpo",
        "--scorer",
        "judge",
        "--items",
        "0,1,15,16",
    ])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let report = ctx.run(&[
        "report",
        "result",
        "--format",
        "json",
        "--resamples",
        "50",
        "--permutations",
        "50",
    ])?;
    assert_eq!(report.code, Some(0), "{report:?}");
    let report: Value = serde_json::from_str(&report.stdout)?;
    let rows = report["scenarios"]["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 16, "8 methods × 2 judge modes");
    assert!(rows.iter().all(|r| r["scenario"] == "BankSupport" && r["items"] == 4));
    let methods: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|r| {
            r["method"]
                .as_str()
                .map(|m| m.split('-').next().unwrap_or(m).to_string())
        })
        .collect();
    assert_eq!(methods.len(), 8, "{methods:?}");
    let rules = ctx.run(&[
        "report",
        "result",
        "--format",
        "csv",
        "--data",
        &data,
        "--resamples",
        "50",
    ])?;
    assert!(
        rules.stdout.contains("Do not ask for or accept full card numbers"),
        "rule texts from the scenario file"
    );

    // And in the viewer, like the official scenarios.
    let (_viewer, base) = crate::viewer::start_viewer(&ctx)?;
    let (status, _, body) = crate::viewer::get(&base, "/api/runs")?;
    assert_eq!(status, 200);
    let runs: Vec<Value> = serde_json::from_str(&body)?;
    assert_eq!(runs.len(), 16);
    assert!(
        runs.iter().all(|r| r["scenario"] == "BankSupport" && r["items"] == 4),
        "{body}"
    );
    Ok(())
}

/// A Python string constant as upstream writes them.
fn python_string(text: &str) -> String {
    assert!(
        !text.contains("\"\"\"") && !text.contains('\\'),
        "the fixture writer needs plain texts"
    );
    format!("\"\"\"{text}\"\"\"")
}

/// The upstream repository's layout, built from the shared pack: data files as they are, and
/// the protocol texts as the string constants of Python modules shaped like upstream's.
fn upstream_layout(pack: &std::path::Path) -> anyhow::Result<std::collections::HashMap<String, Vec<u8>>> {
    let mut files = std::collections::HashMap::new();
    for scenario in ["Biochem", "Child", "Code", "Health", "Travel"] {
        for file in ["scenario.json", "specifications.json", "prompts.json"] {
            files.insert(
                format!("data/{scenario}/{file}"),
                std::fs::read(pack.join("scenarios").join(scenario).join(file))?,
            );
        }
    }
    for file in ["config_model.yaml", "config_eval_model.yaml", "config_ttd.yaml"] {
        files.insert(format!("config/{file}"), std::fs::read(pack.join("config").join(file))?);
    }
    for file in ["Qwen3.jinja", "deepseek.jinja", "config.json"] {
        files.insert(
            format!("specbench/chat_templates/{file}"),
            std::fs::read(pack.join("chat_templates").join(file))?,
        );
    }
    let protocol = |name: &str| std::fs::read_to_string(pack.join("protocol").join(name));
    files.insert(
        "specbench/utils.py".into(),
        format!(
            "import os\n\nclass LLMEngine(ABC):\n    DEFAULT_SYSTEM_PROMPT = \"{}\"\n    def __init__(self):\n        pass\n",
            protocol("system.txt")?
        )
        .into_bytes(),
    );
    files.insert(
        "specbench/prompt_ttd.py".into(),
        format!(
            "from dataclasses import dataclass\n\nAugmentPrompt: str = {}\n\n@dataclass\nclass Align3Prompt:\n    FirstStage: str = {}\n    SecondStage: str = {}\n    ThirdStage: str = {}\n\n@dataclass\nclass SelfRefinePrompt:\n    FeedBackSystem: str = {}\n    FeedBackUser: str = {}\n\n    RefineSystem: str = {}\n\n    RefineUser: str = {}\n\n@dataclass\nclass MoreThinkPrompt:\n    Rethink: str = {}\n",
            python_string(&protocol("augment.txt")?),
            python_string(&protocol("align3_stage1.txt")?),
            python_string(&protocol("align3_stage2.txt")?),
            python_string(&protocol("align3_stage3.txt")?),
            python_string(&protocol("self_refine_feedback_system.txt")?),
            python_string(&protocol("self_refine_feedback_user.txt")?),
            python_string(&protocol("self_refine_refine_system.txt")?),
            python_string(&protocol("self_refine_refine_user.txt")?),
            python_string(&protocol("more_think_rethink.txt")?),
        )
        .into_bytes(),
    );
    files.insert(
        "specbench/prompt_eval.py".into(),
        format!(
            "SYSTEM_EVAL_PROMPT = {}\n\nUSER_EVAL_PROMPT = {}\n\nSYSTEM_EVAL_PROMPT_STEPWISE = {}\n\nUSER_EVAL_PROMPT_STEPWISE = {}\n",
            python_string(&protocol("judge_joint_system.txt")?),
            python_string(&protocol("judge_joint_user.txt")?),
            python_string(&protocol("judge_sequential_system.txt")?),
            python_string(&protocol("judge_sequential_user.txt")?),
        )
        .into_bytes(),
    );
    Ok(files)
}

#[test]
fn data_pull_rebuilds_the_official_pack_file_by_file() -> anyhow::Result<()> {
    let shared = specbench_test::golden::pack_dir()?;
    let files = upstream_layout(&shared)?;
    let server = specbench_test::FileServer::start(files.clone())?;
    let ctx = TestContext::with_pack("minimal")?;
    let pulled = ctx.run(&["data", "pull", "--from", &server.base_url(), "--dest", "pack-pulled"])?;
    assert_eq!(pulled.code, Some(0), "{pulled:?}");
    let dest = ctx.dir.path().join("pack-pulled");
    let mut compared = 0;
    for folder in ["scenarios", "config", "chat_templates", "protocol"] {
        for entry in walk(&shared.join(folder))? {
            let relative = entry.strip_prefix(&shared)?;
            let ours =
                std::fs::read(dest.join(relative)).map_err(|e| anyhow::anyhow!("{}: {e}", relative.display()))?;
            assert!(ours == std::fs::read(&entry)?, "{} differs", relative.display());
            compared += 1;
        }
    }
    assert_eq!(compared, 15 + 3 + 3 + 14);
    let valid = ctx.run(&["data", "validate", "pack-pulled"])?;
    assert_eq!(valid.code, Some(0), "{valid:?}");

    // A second pull does not overwrite without --force; an edit shows in validate.
    let again = ctx.run(&["data", "pull", "--from", &server.base_url(), "--dest", "pack-pulled"])?;
    assert_eq!(again.code, Some(2), "{again:?}");
    std::fs::write(dest.join("config/config_ttd.yaml"), "edited: true\n")?;
    let edited = ctx.run(&["data", "validate", "pack-pulled"])?;
    assert_eq!(edited.code, Some(2), "{edited:?}");
    assert!(
        edited.stderr.contains("config_ttd.yaml: changed since `data pull`"),
        "{}",
        edited.stderr
    );

    // The default location: commands find the pulled pack with no --data and no SPECBENCH_DATA.
    let default = ctx.run_without_data(&["data", "pull", "--from", &server.base_url()])?;
    assert_eq!(default.code, Some(0), "{default:?}");
    let stats = ctx.run_without_data(&["data", "stats"])?;
    assert!(
        stats.stdout.contains("total: 5 scenarios, 103 rules, 1500 items"),
        "{stats:?}"
    );

    // A server that breaks a file: nothing is left behind.
    let mut broken = files;
    broken.insert("data/Child/prompts.json".into(), b"[{\"prompt\": ".to_vec());
    let bad = specbench_test::FileServer::start(broken)?;
    let failed = ctx.run(&["data", "pull", "--from", &bad.base_url(), "--dest", "pack-broken"])?;
    assert_eq!(failed.code, Some(2), "{failed:?}");
    assert!(failed.stderr.contains("data/Child/prompts.json"), "{}", failed.stderr);
    assert!(!ctx.dir.path().join("pack-broken").exists());
    let leftovers: Vec<_> = std::fs::read_dir(ctx.dir.path())?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".specbench-pull-"))
        .collect();
    assert!(leftovers.is_empty(), "staging folders left behind");
    Ok(())
}

fn walk(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}
