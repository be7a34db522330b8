//! `specbench report` on results the test makes itself: two models, two methods, a judge in
//! both modes, on the fixture pack; every figure is checked against the stored files.

use std::collections::BTreeMap;

use serde_json::Value;
use specbench_test::{Reply, StubServer, synthetic_reply};

use crate::support::TestContext;

/// Runs both models with both methods, judged jointly and sequentially.
fn make_results(ctx: &TestContext) -> anyhow::Result<()> {
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    for model in ["org/alpha-model", "beta-model"] {
        let finished = ctx.run(&[
            "run",
            "--model",
            model,
            "--base-url",
            &url,
            "--judge",
            "test-judge",
            "--judge-base-url",
            &url,
            "--judge-mode",
            "joint,sequential",
            "--method",
            "vanilla,zero_think",
        ])?;
        anyhow::ensure!(finished.code == Some(0), "{finished:?}");
    }
    Ok(())
}

fn report_json(ctx: &TestContext, extra: &[&str]) -> anyhow::Result<Value> {
    let mut args = vec![
        "report",
        "result",
        "--format",
        "json",
        "--resamples",
        "300",
        "--permutations",
        "300",
    ];
    args.extend_from_slice(extra);
    let finished = ctx.run(&args)?;
    anyhow::ensure!(finished.code == Some(0), "{finished:?}");
    Ok(serde_json::from_str(&finished.stdout)?)
}

/// The mean over scenarios of the stored `full_dataset_SAR` averages, read from score files.
fn stored_sar(ctx: &TestContext, model: &str, method: &str, judge: &str) -> anyhow::Result<f64> {
    let mut values = Vec::new();
    for scenario in ["Garden", "Museum"] {
        let score = ctx.read_json(&format!("{model}/{scenario}/{method}/{judge}_score.json"))?;
        values.push(score["full_dataset_SAR"]["avg"].as_f64().unwrap_or(f64::NAN));
    }
    Ok(values.iter().sum::<f64>() / values.len() as f64)
}

#[test]
fn the_report_agrees_with_the_stored_scores() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    let report = report_json(&ctx, &[])?;

    let rows = report["leaderboard"]["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 8, "2 models × 2 methods × 2 judge stems");
    for row in &rows {
        let (model, method, judge) = (
            row["model"].as_str().unwrap_or(""),
            row["method"].as_str().unwrap_or(""),
            row["judge"].as_str().unwrap_or(""),
        );
        let expected = stored_sar(&ctx, model, method, judge)?;
        let sar = &row["SAR"];
        assert!(
            (sar["estimate"].as_f64().unwrap_or(f64::NAN) - expected).abs() < 1e-12,
            "{row}"
        );
        assert!(sar["low"].as_f64() <= sar["estimate"].as_f64() && sar["estimate"].as_f64() <= sar["high"].as_f64());
        assert_eq!(row["scenarios"], 2);
    }
    let sars: Vec<f64> = rows.iter().filter_map(|r| r["SAR"]["estimate"].as_f64()).collect();
    assert!(sars.windows(2).all(|w| w[0] >= w[1]), "sorted by SAR: {sars:?}");

    // Per scenario: the stored score files' averages.
    let scenarios = report["scenarios"]["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(scenarios.len(), 16, "8 systems × 2 scenarios");
    for row in &scenarios {
        let path = format!(
            "{}/{}/{}/{}_score.json",
            row["model"].as_str().unwrap_or(""),
            row["scenario"].as_str().unwrap_or(""),
            row["method"].as_str().unwrap_or(""),
            row["judge"].as_str().unwrap_or("")
        );
        let stored = ctx.read_json(&path)?;
        for (column, key) in [
            ("safety", "full_dataset_safety"),
            ("behavioral", "full_dataset_behavioral"),
            ("SAR", "full_dataset_SAR"),
        ] {
            let expected = stored[key]["avg"].as_f64().unwrap_or(f64::NAN);
            let got = row[column]["estimate"].as_f64().unwrap_or(f64::NAN);
            assert!((got - expected).abs() < 1e-12, "{path} {column}: {got} vs {expected}");
        }
    }

    // Method table: ΔSAR is zero_think's SAR minus vanilla's on the same items.
    let methods = report["methods"]["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(methods.len(), 8);
    for row in &methods {
        if row["method"] == "vanilla" {
            assert!(row["ΔSAR"].is_null(), "{row}");
            continue;
        }
        let (model, judge) = (row["model"].as_str().unwrap_or(""), row["judge"].as_str().unwrap_or(""));
        let mut differences = Vec::new();
        for scenario in ["Garden", "Museum"] {
            let read = |method: &str| -> anyhow::Result<BTreeMap<String, f64>> {
                let entries = ctx.read_json(&format!("{model}/{scenario}/{method}/{judge}_evaluate.json"))?;
                Ok(entries
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| {
                        Some((
                            e["data"]["prompt"].as_str()?.to_string(),
                            e["eval"]["result"]["score"]["total"].as_f64()?,
                        ))
                    })
                    .collect())
            };
            let (base, other) = (read("vanilla")?, read("zero_think")?);
            for (prompt, sar) in &other {
                if let Some(b) = base.get(prompt) {
                    differences.push(sar - b);
                }
            }
        }
        let expected = differences.iter().sum::<f64>() / differences.len() as f64;
        let delta = row["ΔSAR"]["estimate"].as_f64().unwrap_or(f64::NAN);
        assert!((delta - expected).abs() < 1e-12, "{row} vs {expected}");
        assert_eq!(row["paired items"], differences.len());
        let p = row["p"].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&p), "{row}");
        let generation = row["generation tokens"].as_u64().unwrap_or(0);
        assert!(generation > 0, "{row}");
    }

    // Judge agreement between the joint and the sequential judgements.
    let agreement = report["judge_agreement"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(agreement.len(), 1);
    assert_eq!(agreement[0]["judge A"], "test-judge");
    assert_eq!(agreement[0]["judge B"], "test-judge-sequential");
    assert_eq!(
        agreement[0]["items"],
        2 * 2 * 2 * 3,
        "models × methods × scenarios × items"
    );
    assert_eq!(agreement[0]["systems ranked"], 4);

    // Models compared pairwise on the same items: alpha against beta (or the other way round,
    // by leaderboard order), for each method and judge stem.
    let pairs = report["model_comparisons"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(pairs.len(), 4, "2 methods × 2 judge stems, one neighbour pair each");
    for row in &pairs {
        assert_eq!(row["paired items"], 6);
        let difference = row["SAR B − A"]["estimate"].as_f64().unwrap_or(f64::NAN);
        let (a, b) = (
            row["SAR A"].as_f64().unwrap_or(f64::NAN),
            row["SAR B"].as_f64().unwrap_or(f64::NAN),
        );
        assert!((difference - (b - a)).abs() < 1e-12, "{row}");
        assert!(a >= b - 1e-12, "neighbours in leaderboard order: {row}");
    }
    let chosen = report_json(&ctx, &["--compare", "beta-model,alpha-model"])?;
    let chosen = chosen["model_comparisons"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        chosen
            .iter()
            .all(|r| r["model A"] == "beta-model" && r["model B"] == "alpha-model")
    );

    // Per-rule shares add up to one.
    for row in report["rules"]["rows"].as_array().cloned().unwrap_or_default() {
        let total: f64 = ["violated (NO)", "met (YES)", "not applicable"]
            .iter()
            .filter_map(|c| row[*c].as_f64())
            .sum();
        assert!((total - 1.0).abs() < 1e-12, "{row}");
    }
    Ok(())
}

#[test]
fn every_format_renders_and_the_seed_fixes_the_intervals() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    let first = report_json(&ctx, &["--seed", "7"])?;
    let again = report_json(&ctx, &["--seed", "7"])?;
    assert_eq!(first, again, "the same seed gives the same report");
    let other = report_json(&ctx, &["--seed", "8"])?;
    assert_ne!(
        first["leaderboard"], other["leaderboard"],
        "another seed draws other resamples"
    );

    let filtered = report_json(&ctx, &["--model", "beta-model", "--judge", "test-judge"])?;
    assert_eq!(filtered["leaderboard"]["rows"].as_array().map(Vec::len), Some(2));

    let table = ctx.run(&["report", "result", "--resamples", "100", "--permutations", "100"])?;
    assert_eq!(table.code, Some(0), "{table:?}");
    assert!(table.stdout.starts_with("Leaderboard\nmodel"), "{}", table.stdout);
    let markdown = ctx.run(&["report", "result", "--format", "markdown", "--resamples", "100"])?;
    assert!(
        markdown.stdout.contains("## Leaderboard\n\n| model | method | judge |"),
        "{}",
        markdown.stdout
    );
    let csv = ctx.run(&["report", "result", "--format", "csv", "--resamples", "100"])?;
    assert!(
        csv.stdout
            .contains("# leaderboard\nmodel,method,judge,scenarios,safety,safety low,safety high"),
        "{}",
        csv.stdout
    );

    let prices = ctx.dir.path().join("prices.yaml");
    std::fs::write(
        &prices,
        "beta-model: {prompt: 1.0, completion: 2.0}\ntest-judge: {prompt: 3.0, completion: 4.0}\n",
    )?;
    let html = ctx.run(&[
        "report",
        "result",
        "--format",
        "html",
        "--output",
        "report.html",
        "--plots",
        "plots",
        "--prices",
        &prices.to_string_lossy(),
        "--resamples",
        "100",
    ])?;
    assert_eq!(html.code, Some(0), "{html:?}");
    let page = std::fs::read_to_string(ctx.dir.path().join("report.html"))?;
    assert!(page.contains("<svg") && page.contains("<h2>Leaderboard</h2>"));
    assert!(
        !page.contains("<script") && !page.contains("<link"),
        "one self-contained file"
    );
    for plot in ["tradeoff", "heatmap", "tokens"] {
        let svg = std::fs::read_to_string(ctx.dir.path().join("plots").join(format!("{plot}.svg")))?;
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{plot}");
        let png = std::fs::read(ctx.dir.path().join("plots").join(format!("{plot}.png")))?;
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 2000, "{plot}.png");
    }
    let costed = report_json(&ctx, &["--prices", &prices.to_string_lossy()])?;
    for row in costed["cost"]["rows"].as_array().cloned().unwrap_or_default() {
        let judge = row["judge cost"].as_f64().unwrap_or(f64::NAN);
        let expected = (row["judge prompt tokens"].as_f64().unwrap_or(0.0) * 3.0
            + row["judge completion tokens"].as_f64().unwrap_or(0.0) * 4.0)
            / 1e6;
        assert!((judge - expected).abs() < 1e-12, "{row}");
        if row["model"] == "alpha-model" {
            assert!(row["generation cost"].is_null(), "no price given: {row}");
        }
    }
    Ok(())
}

#[test]
fn bad_report_input_is_named() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let missing = ctx.run(&["report", "nowhere"])?;
    assert_eq!(missing.code, Some(2), "{missing:?}");
    assert!(missing.stderr.contains("nowhere"), "{}", missing.stderr);
    make_results(&ctx)?;
    let prices = ctx.dir.path().join("prices.yaml");
    std::fs::write(&prices, "beta-model: {prompt: cheap}\n")?;
    let bad = ctx.run(&["report", "result", "--prices", &prices.to_string_lossy()])?;
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("prices.yaml"), "{}", bad.stderr);
    Ok(())
}

/// One quick run (two Garden items) of `model`, judged by `test-judge`.
fn run_model(ctx: &TestContext, url: &str, model: &str) -> anyhow::Result<()> {
    // `--model=NAME`: a name may start with `-`.
    let model = format!("--model={model}");
    let finished = ctx.run(&[
        "run",
        &model,
        "--base-url",
        url,
        "--judge",
        "test-judge",
        "--judge-base-url",
        url,
        "--scenario",
        "Garden",
        "--limit",
        "2",
    ])?;
    anyhow::ensure!(finished.code == Some(0), "{finished:?}");
    Ok(())
}

#[test]
fn spreadsheet_formulas_and_markup_in_names_are_neutralised() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    for model in ["=HYPERLINK(\"x\")", "-2+3", "<img src=x onerror=alert(1)>"] {
        run_model(&ctx, &url, model)?;
    }
    let csv = ctx.run(&[
        "report",
        "result",
        "--format",
        "csv",
        "--resamples",
        "50",
        "--permutations",
        "50",
    ])?;
    assert_eq!(csv.code, Some(0), "{csv:?}");
    let leaderboard: Vec<&str> = csv
        .stdout
        .split("# ")
        .find(|table| table.starts_with("leaderboard\n"))
        .map(|table| table.lines().skip(2).filter(|line| !line.is_empty()).collect())
        .unwrap_or_default();
    assert_eq!(leaderboard.len(), 3, "{}", csv.stdout);
    for row in &leaderboard {
        assert!(!row.starts_with(['=', '+', '-', '@']), "a formula cell: {row}");
    }
    assert!(
        leaderboard.iter().any(|r| r.starts_with("\"'=HYPERLINK(\"\"x\"\")\",")),
        "{}",
        csv.stdout
    );
    let minus = leaderboard
        .iter()
        .find(|r| r.starts_with("'-2+3,"))
        .copied()
        .unwrap_or_default();
    // Numbers stay numbers: the safety estimate after model, method, judge and scenarios.
    let safety = minus.split(',').nth(4).unwrap_or_default();
    assert!(safety.parse::<f64>().is_ok(), "{minus}");

    let markdown = ctx.run(&["report", "result", "--format", "markdown", "--resamples", "50"])?;
    assert_eq!(markdown.code, Some(0), "{markdown:?}");
    assert!(!markdown.stdout.contains("<img"), "{}", markdown.stdout);
    assert!(
        markdown
            .stdout
            .contains("| &lt;img src=x onerror=alert(1)&gt; | vanilla |"),
        "{}",
        markdown.stdout
    );
    Ok(())
}

#[test]
fn one_unreadable_run_is_skipped_with_a_warning_by_report_and_view() -> anyhow::Result<()> {
    use std::io::{BufRead, Read};
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    run_model(&ctx, &url, "good-model")?;
    let broken = ctx.results.join("broken-model/Garden/vanilla");
    std::fs::create_dir_all(&broken)?;
    std::fs::write(broken.join("test-judge_evaluate.json"), "[{\"data\": ")?;

    let report = report_json(&ctx, &[])?;
    let models: Vec<&str> = report["leaderboard"]["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["model"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(models, ["good-model"]);
    let finished = ctx.run(&["report", "result", "--resamples", "50", "--permutations", "50"])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let warnings: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "{}", finished.stderr);
    assert!(
        warnings[0].contains("skipped:")
            && warnings[0].contains("broken-model/Garden/vanilla/test-judge_evaluate.json"),
        "{}",
        warnings[0]
    );

    let mut child = ctx
        .specbench()
        .args(["view", "result", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        std::io::BufReader::new(stdout).read_line(&mut line)?;
    }
    child.kill()?;
    child.wait()?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)?;
    }
    assert!(line.contains("(1 runs)"), "the readable run is served: {line:?}");
    assert!(
        stderr.contains("skipped:") && stderr.contains("broken-model/Garden/vanilla/test-judge_evaluate.json"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_leaderboard_groups_models_by_the_families_of_the_packs_model_file() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    let plain = report_json(&ctx, &[])?;
    assert!(
        plain["leaderboard"]["rows"][0].get("family").is_none(),
        "no model file, no families"
    );
    // As upstream's model file does: one section of instruct models, one of reasoning models.
    std::fs::create_dir_all(ctx.pack.join("config"))?;
    std::fs::write(
        ctx.pack.join("config/config_model.yaml"),
        "######## instruct models ########\nbeta-model:\n  model_name: beta\n\n\
         ######## reasoning models ########\norg/alpha-model:\n  model_name: alpha\n",
    )?;
    let grouped = report_json(&ctx, &[])?;
    let rows = grouped["leaderboard"]["rows"].as_array().cloned().unwrap_or_default();
    let families: Vec<(&str, &str)> = rows
        .iter()
        .map(|row| {
            (
                row["family"].as_str().unwrap_or(""),
                row["model"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(families.len(), 8, "{families:?}");
    // Every instruct row comes before every reasoning row, each family ranked by SAR.
    assert!(
        families[..4]
            .iter()
            .all(|(f, m)| *f == "instruct" && *m == "beta-model"),
        "{families:?}"
    );
    assert!(
        families[4..]
            .iter()
            .all(|(f, m)| *f == "reasoning" && *m == "alpha-model"),
        "{families:?}"
    );
    let sar = |row: &Value| row["SAR"]["estimate"].as_f64().unwrap_or(f64::NAN);
    for pair in rows[..4].windows(2).chain(rows[4..].windows(2)) {
        assert!(sar(&pair[0]) >= sar(&pair[1]), "{pair:?}");
    }
    Ok(())
}
