//! The chat-template renderer against renders made by Python `transformers` itself
//! (`tests/fixtures/chat_templates/transformers_renders.json`, made by
//! `tools/chat_template_fixtures.py`): our own conversations with their full expected text,
//! and every prefill request of the pack's golden file by SHA-256 (the text is pack data).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use specbench::backend::Message;
use specbench::backend::template::ChatTemplate;
use specbench_test::golden;

fn fixtures() -> anyhow::Result<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat_templates/transformers_renders.json");
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

fn messages(value: &Value) -> anyhow::Result<Vec<Message>> {
    Ok(serde_json::from_value(value.clone())?)
}

/// Special tokens first, then the kwargs, which win: the order `transformers` uses.
fn variables(special_tokens: &Value, kwargs: &Value) -> Map<String, Value> {
    let mut variables = special_tokens.as_object().cloned().unwrap_or_default();
    for (key, value) in kwargs.as_object().cloned().unwrap_or_default() {
        variables.insert(key, value);
    }
    variables
}

#[test]
fn own_conversations_render_as_transformers_renders_them() -> anyhow::Result<()> {
    let pack = golden::pack_dir()?;
    let fixtures = fixtures()?;
    let cases = fixtures["own"].as_array().cloned().unwrap_or_default();
    assert!(cases.len() >= 30, "fixture file lost its cases");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap_or("?");
        let source = match case["template"].as_str() {
            Some(inline) => inline.to_string(),
            None => std::fs::read_to_string(pack.join(case["template_file"].as_str().unwrap_or_default()))?,
        };
        let rendered = ChatTemplate::new(&source).and_then(|t| {
            t.render(
                &messages(&case["messages"]).unwrap_or_default(),
                case["add_generation_prompt"].as_bool().unwrap_or(false),
                case["continue_final_message"].as_bool().unwrap_or(false),
                &variables(&case["special_tokens"], &case["kwargs"]),
            )
        });
        match (case["expected"].as_str(), rendered) {
            (Some(expected), Ok(got)) if got == expected => {}
            (None, Err(_)) => {}
            (expected, got) => failures.push(format!("{name}:\n  expected {expected:?}\n  got      {got:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn every_golden_prefill_request_renders_as_transformers_renders_it() -> anyhow::Result<()> {
    let pack = golden::pack_dir()?;
    let requests = golden::requests(&pack)?;
    let fixtures = fixtures()?;
    let records = fixtures["golden"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        records.len(),
        requests
            .iter()
            .filter(|r| r.request.get("chat_template").is_some())
            .count()
    );
    for record in &records {
        let line = record["line"].as_u64().unwrap_or(u64::MAX) as usize;
        let request = &requests
            .get(line)
            .ok_or_else(|| anyhow::anyhow!("no golden line {line}"))?
            .request;
        let template = ChatTemplate::new(request["chat_template"].as_str().unwrap_or_default())?;
        let special = &fixtures["special_tokens"][record["template_file"].as_str().unwrap_or_default()];
        let rendered = template.render(
            &messages(&request["messages"])?,
            request["add_generation_prompt"].as_bool().unwrap_or(true),
            request["continue_final_message"].as_bool().unwrap_or(false),
            &variables(special, &request["chat_template_kwargs"]),
        )?;
        let digest = hex::encode(Sha256::digest(rendered.as_bytes()));
        assert_eq!(
            (digest.as_str(), rendered.chars().count() as u64),
            (
                record["sha256"].as_str().unwrap_or_default(),
                record["chars"].as_u64().unwrap_or(0)
            ),
            "{} (line {line})",
            record["tag"]
        );
    }
    Ok(())
}
