//! Scenario packs: `data validate`, `data stats`, `scenario new`, and an authored scenario (the
//! shipped example) run with every method and both judge modes, then reported.

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
fn the_example_scenario_runs_every_method_and_both_judge_modes_and_is_reported() -> anyhow::Result<()> {
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
    Ok(())
}
