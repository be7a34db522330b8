//! Native providers, against loopback servers that speak their documented wire formats.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use specbench_test::{Reply, StubServer, synthetic_reply, user_text};

use crate::support::{TestContext, finish};

/// A Messages API reply (`POST /v1/messages`): a thinking block and a text block.
fn anthropic_reply(request: &Value) -> Value {
    let reply = synthetic_reply(request);
    // The stub's generations carry their thought before `</think>`; a judge's reply has none.
    let (thought, text) = match reply.split_once("</think>") {
        Some((thought, text)) => (Some(thought.trim().to_string()), text.trim().to_string()),
        None => (None, reply),
    };
    let mut content = Vec::new();
    if let Some(thought) = thought {
        content.push(json!({"type": "thinking", "thinking": thought, "signature": "c2ln"}));
    }
    content.push(json!({"type": "text", "text": text}));
    json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": request["model"],
        "content": content, "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": user_text(request).len() / 4, "output_tokens": 7},
    })
}

/// The first stored generation has the stub's thought as its thought and the rest as its response.
fn assert_thought_split(generated: &Value) {
    assert!(
        generated[0]["thought"]
            .as_str()
            .is_some_and(|t| t.starts_with("Thinking about")),
        "{generated}"
    );
    assert!(
        generated[0]["response"]
            .as_str()
            .is_some_and(|r| r.starts_with("A synthetic response")),
        "{generated}"
    );
}

#[test]
fn anthropic_messages_carry_the_key_version_and_system_field_and_a_529_is_retried() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = StubServer::start(move |request| {
        // The first request finds the API overloaded, as Anthropic says it with 529.
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply::Status {
                status: 529,
                body: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.into(),
                retry_after: Some("0".into()),
            };
        }
        Reply::RawBody(anthropic_reply(request).to_string())
    })?;
    let url = server.base_url();
    let finished = finish(ctx.specbench().env("TEST_ANTHROPIC_KEY", "sk-ant-test-secret").args([
        "run",
        "--provider",
        "anthropic",
        "--model",
        "claude-test",
        "--base-url",
        &url,
        "--api-key-env",
        "TEST_ANTHROPIC_KEY",
        "--judge",
        "claude-judge",
        "--judge-provider",
        "anthropic",
        "--judge-base-url",
        &url,
        "--judge-api-key-env",
        "TEST_ANTHROPIC_KEY",
        "--method",
        "vanilla,zero_think",
        "--scenario",
        "Museum",
        "--limit",
        "2",
    ]))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    // 2 items × 2 methods generated, 2 judged (zero_think's answers are vanilla's: the stub
    // answers by the prompt's length, so the response cache answers their judge requests), and
    // the one retried 529.
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    assert!(
        server.targets().iter().all(|target| target == "/v1/messages"),
        "{:?}",
        server.targets()
    );
    for headers in server.headers() {
        assert_eq!(
            headers.get("x-api-key").and_then(|v| v.to_str().ok()),
            Some("sk-ant-test-secret")
        );
        assert_eq!(
            headers.get("anthropic-version").and_then(|v| v.to_str().ok()),
            Some("2023-06-01")
        );
        assert!(headers.get("authorization").is_none());
    }
    for body in server.requests() {
        // The system prompt is its own field; max_tokens is always sent; no OpenAI fields.
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["role"].as_str())
            .collect();
        assert!(
            roles.iter().all(|role| *role == "user" || *role == "assistant"),
            "{body}"
        );
        assert!(body["max_tokens"].as_u64().is_some_and(|n| n > 0), "{body}");
        assert!(
            body.get("continue_final_message").is_none() && body.get("stop").is_none(),
            "{body}"
        );
    }
    // zero_think's prefill is the final assistant message, its trailing white space cut.
    let prefilled = server.requests().into_iter().find(|body| {
        body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| m["role"] == "assistant")
    });
    let last = prefilled.as_ref().and_then(|body| {
        body["messages"].as_array()?.last()?["content"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(last.as_deref(), Some("<think>\n</think>"));
    // The thinking block is the thought; the text block the response.
    assert_thought_split(&ctx.read_json("claude-test/Museum/vanilla/generate.json")?);
    let scores = ctx.read_json("claude-test/Museum/vanilla/claude-judge_score.json")?;
    assert!(scores.is_object(), "{scores}");
    // The key is in no file and no output.
    assert!(!ctx.all_result_text()?.contains("sk-ant-test-secret"));
    let cache = std::fs::read(ctx.cache_dir().join("responses.sqlite3"))?;
    assert!(!String::from_utf8_lossy(&cache).contains("sk-ant-test-secret"));
    assert!(!finished.stdout.contains("sk-ant") && !finished.stderr.contains("sk-ant"));
    Ok(())
}

#[test]
fn anthropic_without_its_key_is_refused_before_anything_is_written() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let args = [
        "generate",
        "--provider",
        "anthropic",
        "--model",
        "claude-test",
        "--base-url",
        "http://127.0.0.1:9/v1",
    ];
    let unset = ctx.run(&args)?;
    assert_eq!(unset.code, Some(2), "{unset:?}");
    assert!(
        unset.stderr.contains("ANTHROPIC_API_KEY is not set"),
        "{}",
        unset.stderr
    );
    assert!(!ctx.results.exists());
    Ok(())
}

#[test]
fn azure_openai_sends_to_the_deployment_with_an_api_version_and_an_api_key_header() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let deployment = format!("http://{}/openai/deployments/gpt-4o", server.addr);
    let finished = finish(ctx.specbench().env("AZURE_OPENAI_API_KEY", "azure-test-secret").args([
        "generate",
        "--provider",
        "azure",
        "--model",
        "gpt-4o",
        "--base-url",
        &deployment,
        "--scenario",
        "Museum",
        "--limit",
        "1",
    ]))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(
        server.targets(),
        ["/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"]
    );
    for headers in server.headers() {
        assert_eq!(
            headers.get("api-key").and_then(|v| v.to_str().ok()),
            Some("azure-test-secret")
        );
        assert!(headers.get("authorization").is_none());
    }
    assert!(ctx.results.join("gpt-4o/Museum/vanilla/generate.json").is_file());
    assert!(!ctx.all_result_text()?.contains("azure-test-secret"));
    Ok(())
}

#[test]
fn gemini_reads_a_thought_summary_and_refuses_a_prefill_method() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    // Gemini's OpenAI-compatible endpoint with include_thoughts: the summary in `<thought>`
    // tags at the start of the content.
    let server = StubServer::start(|request| {
        let reply = synthetic_reply(request);
        let content = match reply.split_once("</think>") {
            Some((thought, text)) => format!("<thought>{}</thought>{}", thought.trim(), text.trim()),
            None => reply,
        };
        Reply::Content(content)
    })?;
    let base = format!("http://{}/v1beta/openai", server.addr);
    let generate = |method: &str| {
        finish(ctx.specbench().env("GEMINI_API_KEY", "gemini-test-secret").args([
            "generate",
            "--provider",
            "gemini",
            "--model",
            "gemini-test",
            "--base-url",
            &base,
            "--method",
            method,
            "--scenario",
            "Museum",
            "--limit",
            "1",
        ]))
    };
    let refused = generate("align3")?;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("--method align3") && refused.stderr.contains("gemini cannot continue"),
        "{}",
        refused.stderr
    );
    assert!(server.targets().is_empty() && !ctx.results.exists());

    let finished = generate("vanilla")?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(server.targets(), ["/v1beta/openai/chat/completions"]);
    for headers in server.headers() {
        assert_eq!(
            headers.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer gemini-test-secret")
        );
    }
    assert_thought_split(&ctx.read_json("gemini-test/Museum/vanilla/generate.json")?);
    assert!(!ctx.all_result_text()?.contains("gemini-test-secret"));
    Ok(())
}

#[test]
fn openai_and_azure_refuse_a_prefill_method_before_anything_is_sent() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    for provider in ["openai", "azure"] {
        let refused = finish(ctx.specbench().env("TEST_KEY", "k").args([
            "generate",
            "--provider",
            provider,
            "--model",
            "gpt-test",
            "--base-url",
            &url,
            "--api-key-env",
            "TEST_KEY",
            "--method",
            "zero_think",
        ]))?;
        assert_eq!(refused.code, Some(2), "{refused:?}");
        assert!(
            refused.stderr.contains(&format!(
                "--method zero_think sends an assistant prefill for the model to continue, and {provider} cannot"
            )),
            "{}",
            refused.stderr
        );
    }
    assert!(server.targets().is_empty() && !ctx.results.exists());
    Ok(())
}
