//! OpenAI's Batch API through `BatchBackend`, against a loopback server implementing it: one
//! batch for requests sent together, holding exactly the bodies a direct call sends; a run
//! stopped at each step of a batch's life collects that batch again instead of paying twice;
//! failed lines and expired batches go into a new batch.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use specbench::backend::batch::{BatchBackend, BatchTiming};
use specbench::backend::{AnthropicBackend, Message, Model, OpenAiBackend, Preset, Request, RetryPolicy, Stop};
use specbench_test::StubServer;
use specbench_test::batch::{BatchFault, BatchServer, Flavor};

const MODEL: &str = "gpt-test";

/// The reply to a body: its last message, reversed, so each reply is its request's own.
fn answer(body: &Value) -> String {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    format!("answer to {}", last.chars().rev().collect::<String>())
}

fn requests(count: usize) -> Vec<Request> {
    (0..count)
        .map(|i| {
            Request::chat(vec![
                Message::system("be brief"),
                Message::user(format!("question {i}")),
            ])
        })
        .collect()
}

fn direct(base_url: &str) -> anyhow::Result<OpenAiBackend> {
    let mut builder = OpenAiBackend::builder(Preset::Compatible, MODEL);
    builder.base_urls([base_url.to_string()]);
    Ok(builder.build()?)
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        ..RetryPolicy::default()
    }
}

fn timing() -> BatchTiming {
    BatchTiming {
        poll: Duration::from_millis(20),
        gather: Duration::from_millis(50),
    }
}

fn batched(server: &BatchServer, journal: &std::path::Path, stop: &Stop) -> anyhow::Result<Model> {
    let backend = BatchBackend::openai(direct(&server.base_url())?, journal, timing(), stop.clone());
    Ok(Model::new(MODEL, Arc::new(backend), retry()).with_stop(stop.clone()))
}

async fn generate_all(model: &Model, requests: &[Request]) -> Vec<Result<String, String>> {
    futures::future::join_all(
        requests
            .iter()
            .map(|request| async move { model.generate(request).await.map(|g| g.text).map_err(|e| e.to_string()) }),
    )
    .await
}

fn expected(requests: &[Request]) -> Vec<Result<String, String>> {
    requests
        .iter()
        .map(|r| {
            Ok(format!(
                "answer to {}",
                r.messages[1].content.chars().rev().collect::<String>()
            ))
        })
        .collect()
}

/// Waits until the server holds `count` batches.
async fn until_batches(server: &BatchServer, count: usize) -> anyhow::Result<()> {
    for _ in 0..500 {
        if server.batches().len() >= count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("the server never saw {count} batches: {:?}", server.calls())
}

#[tokio::test]
async fn requests_sent_together_go_into_one_batch_with_the_bodies_a_direct_call_sends() -> anyhow::Result<()> {
    let server = BatchServer::start(BatchFault::None, answer)?;
    let journal = tempfile::tempdir()?;
    let stop = Stop::default();
    let model = batched(&server, journal.path(), &stop)?;
    let requests = requests(5);
    assert_eq!(generate_all(&model, &requests).await, expected(&requests));

    let batches = server.batches();
    assert_eq!(batches.len(), 1, "{:?}", server.calls());
    let lines = &batches[0];
    assert_eq!(lines.len(), 5);
    let ids: std::collections::BTreeSet<&str> = lines.iter().filter_map(|l| l["custom_id"].as_str()).collect();
    assert_eq!(ids.len(), 5, "custom ids are distinct");
    assert!(
        lines
            .iter()
            .all(|l| l["method"] == "POST" && l["url"] == "/v1/chat/completions")
    );

    // The same requests sent directly: the server sees exactly the batch lines' bodies.
    let stub = StubServer::start(|body| specbench_test::Reply::Content(answer(body)))?;
    let plain = Model::new(MODEL, Arc::new(direct(&stub.base_url())?), retry());
    assert_eq!(generate_all(&plain, &requests).await, expected(&requests));
    let mut sent: Vec<String> = stub.requests().iter().map(Value::to_string).collect();
    let mut batched: Vec<String> = lines.iter().map(|l| l["body"].to_string()).collect();
    sent.sort();
    batched.sort();
    assert_eq!(batched, sent);

    // A request sent again with the same custom id is the same unit: a later batch of the same
    // requests carries the same ids.
    let again = batched_ids(&server, &requests).await?;
    assert_eq!(again, ids.iter().map(|s| s.to_string()).collect());
    Ok(())
}

/// The custom ids a fresh journal's batch of `requests` carries.
async fn batched_ids(server: &BatchServer, requests: &[Request]) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let fresh = tempfile::tempdir()?;
    let model = batched(server, fresh.path(), &Stop::default())?;
    let before = server.batches().len();
    generate_all(&model, requests).await;
    let batches = server.batches();
    let last = batches.get(before).context("no new batch")?;
    Ok(last
        .iter()
        .filter_map(|l| l["custom_id"].as_str().map(str::to_string))
        .collect())
}

/// The run is stopped while its batch is in progress; the next run finds the batch in the
/// journal and collects it: nothing is submitted twice.
#[tokio::test]
async fn a_run_stopped_while_its_batch_runs_collects_that_batch_next_time() -> anyhow::Result<()> {
    let server = BatchServer::start(BatchFault::Hold, answer)?;
    let journal = tempfile::tempdir()?;
    let requests = requests(3);

    let first_stop = Stop::default();
    let first = batched(&server, journal.path(), &first_stop)?;
    let stopped = {
        let requests = requests.clone();
        tokio::spawn(async move { generate_all(&first, &requests).await })
    };
    until_batches(&server, 1).await?;
    first_stop.stop();
    let results = stopped.await?;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.contains("stopping"))),
        "{results:?}"
    );

    server.release();
    let second = batched(&server, journal.path(), &Stop::default())?;
    assert_eq!(generate_all(&second, &requests).await, expected(&requests));
    assert_eq!(server.batches().len(), 1, "{:?}", server.calls());
    Ok(())
}

/// Killed after the batch was created but before its id was journaled: the next run finds it
/// among the recent batches by the name in its metadata.
#[tokio::test]
async fn a_batch_whose_id_was_never_journaled_is_found_by_its_metadata() -> anyhow::Result<()> {
    let server = BatchServer::start(BatchFault::Hold, answer)?;
    let journal = tempfile::tempdir()?;
    let requests = requests(3);

    let first_stop = Stop::default();
    let first = batched(&server, journal.path(), &first_stop)?;
    let stopped = {
        let requests = requests.clone();
        tokio::spawn(async move { generate_all(&first, &requests).await })
    };
    until_batches(&server, 1).await?;
    first_stop.stop();
    stopped.await?;

    // What a kill between the API's answer and the journal's write leaves: the intent only.
    let path = journal_file(journal.path())?;
    let text = std::fs::read_to_string(&path)?;
    let intent_only: String = text
        .lines()
        .filter(|line| line.contains("\"ids\""))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(intent_only, text, "the batch id had been journaled");
    std::fs::write(&path, intent_only)?;
    // A busy account: the lost batch is on the third page of the list.
    server.add_others(250);

    server.release();
    let second = batched(&server, journal.path(), &Stop::default())?;
    assert_eq!(generate_all(&second, &requests).await, expected(&requests));
    assert_eq!(server.batches().len(), 1, "{:?}", server.calls());
    assert!(
        server.calls().iter().filter(|c| *c == "GET /v1/batches").count() >= 3,
        "paged"
    );
    Ok(())
}

/// Killed after the intent was journaled but before anything was uploaded: the batch is not
/// found, and the requests go into one new batch.
#[tokio::test]
async fn an_intent_that_was_never_submitted_is_submitted_once() -> anyhow::Result<()> {
    let server = BatchServer::start(BatchFault::None, answer)?;
    let journal = tempfile::tempdir()?;
    let requests = requests(3);
    // The journal a first run wrote: one intent, through the public pieces that make it.
    let backend = BatchBackend::openai(direct(&server.base_url())?, journal.path(), timing(), Stop::default());
    let identity = backend.describe_identity();
    let ids: Vec<String> = requests
        .iter()
        .map(|r| hex::encode(r.cache_key(&identity).as_bytes()))
        .collect();
    let intent = serde_json::json!({"batch": "never-uploaded", "ids": ids});
    std::fs::write(backend.journal_path(), format!("{intent}\n"))?;

    let model = Model::new(MODEL, Arc::new(backend), retry());
    assert_eq!(generate_all(&model, &requests).await, expected(&requests));
    assert_eq!(server.batches().len(), 1, "{:?}", server.calls());
    assert_eq!(server.batches()[0].len(), 3);
    Ok(())
}

#[tokio::test]
async fn failed_lines_go_into_a_new_batch() -> anyhow::Result<()> {
    let server = BatchServer::start(BatchFault::FailOddLinesOfFirst, answer)?;
    let journal = tempfile::tempdir()?;
    let model = batched(&server, journal.path(), &Stop::default())?;
    let requests = requests(4);
    assert_eq!(generate_all(&model, &requests).await, expected(&requests));
    let batches = server.batches();
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 2],
        "{:?}",
        server.calls()
    );
    Ok(())
}

#[tokio::test]
async fn an_expired_batch_is_submitted_again() -> anyhow::Result<()> {
    let server = BatchServer::start(BatchFault::ExpireFirst, answer)?;
    let journal = tempfile::tempdir()?;
    let model = batched(&server, journal.path(), &Stop::default())?;
    let requests = requests(3);
    assert_eq!(generate_all(&model, &requests).await, expected(&requests));
    assert_eq!(server.batches().iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3]);
    Ok(())
}

fn journal_file(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    anyhow::ensure!(files.len() == 1, "one journal: {files:?}");
    files.pop().context("no journal")
}

fn anthropic_batched(server: &BatchServer, journal: &std::path::Path, stop: &Stop) -> anyhow::Result<Model> {
    let mut builder = AnthropicBackend::builder("claude-test");
    builder.base_url(Some(server.base_url())).without_key();
    let backend = BatchBackend::anthropic(builder.build()?, journal, timing(), stop.clone());
    Ok(Model::new(MODEL, Arc::new(backend), retry()).with_stop(stop.clone()))
}

#[tokio::test]
async fn anthropic_message_batches_hold_every_request_sent_together() -> anyhow::Result<()> {
    let server = BatchServer::start_as(Flavor::Anthropic, BatchFault::None, answer)?;
    let journal = tempfile::tempdir()?;
    let model = anthropic_batched(&server, journal.path(), &Stop::default())?;
    let requests = requests(3);
    assert_eq!(generate_all(&model, &requests).await, expected(&requests));
    let batches = server.batches();
    assert_eq!(batches.len(), 1, "{:?}", server.calls());
    for request in &batches[0] {
        // The params are a direct call's body: the system prompt its own field, max_tokens set.
        assert_eq!(request["params"]["model"], "claude-test", "{request}");
        assert_eq!(request["params"]["system"], "be brief", "{request}");
        assert!(request["params"]["max_tokens"].as_u64().is_some(), "{request}");
        assert_eq!(request["custom_id"].as_str().map(str::len), Some(64));
    }
    assert!(
        server
            .headers()
            .iter()
            .all(|h| h.get("anthropic-version").is_some_and(|v| v == "2023-06-01"))
    );
    Ok(())
}

/// Anthropic's batches carry no metadata: a batch killed before its id was journaled is found
/// as the one created after the intent with as many requests.
#[tokio::test]
async fn an_anthropic_batch_whose_id_was_never_journaled_is_found_by_its_time_and_size() -> anyhow::Result<()> {
    let server = BatchServer::start_as(Flavor::Anthropic, BatchFault::Hold, answer)?;
    let journal = tempfile::tempdir()?;
    let requests = requests(3);
    let first_stop = Stop::default();
    let first = anthropic_batched(&server, journal.path(), &first_stop)?;
    let stopped = {
        let requests = requests.clone();
        tokio::spawn(async move { generate_all(&first, &requests).await })
    };
    until_batches(&server, 1).await?;
    first_stop.stop();
    stopped.await?;
    let path = journal_file(journal.path())?;
    let text = std::fs::read_to_string(&path)?;
    let intent_only: String = text
        .lines()
        .filter(|line| line.contains("\"ids\""))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(intent_only, text, "the batch id had been journaled");
    std::fs::write(&path, intent_only)?;
    server.add_others(250);

    server.release();
    let second = anthropic_batched(&server, journal.path(), &Stop::default())?;
    assert_eq!(generate_all(&second, &requests).await, expected(&requests));
    assert_eq!(server.batches().len(), 1, "{:?}", server.calls());
    assert!(
        server
            .calls()
            .iter()
            .filter(|c| *c == "GET /v1/messages/batches")
            .count()
            >= 3,
        "paged"
    );
    Ok(())
}

#[tokio::test]
async fn anthropic_errored_and_expired_requests_go_into_a_new_batch() -> anyhow::Result<()> {
    for (fault, sizes) in [
        (BatchFault::FailOddLinesOfFirst, vec![4, 2]),
        (BatchFault::ExpireFirst, vec![4, 4]),
    ] {
        let server = BatchServer::start_as(Flavor::Anthropic, fault, answer)?;
        let journal = tempfile::tempdir()?;
        let model = anthropic_batched(&server, journal.path(), &Stop::default())?;
        let requests = requests(4);
        assert_eq!(generate_all(&model, &requests).await, expected(&requests));
        assert_eq!(
            server.batches().iter().map(Vec::len).collect::<Vec<_>>(),
            sizes,
            "{fault:?}"
        );
    }
    Ok(())
}

/// The batch was created but the answer to that call was lost (a 502): the request's retry
/// looks for the batch by its metadata instead of submitting a second one.
#[tokio::test]
async fn a_lost_answer_to_the_create_call_finds_the_batch_instead_of_paying_again() -> anyhow::Result<()> {
    let server = BatchServer::start(BatchFault::LoseFirstCreateAnswer, answer)?;
    let journal = tempfile::tempdir()?;
    let model = batched(&server, journal.path(), &Stop::default())?;
    let requests = requests(3);
    assert_eq!(generate_all(&model, &requests).await, expected(&requests));
    assert_eq!(server.batches().len(), 1, "{:?}", server.calls());
    Ok(())
}

#[tokio::test]
async fn polls_that_fail_for_a_while_keep_the_batch() -> anyhow::Result<()> {
    let server = BatchServer::start(BatchFault::FailThreePolls, answer)?;
    let journal = tempfile::tempdir()?;
    let model = batched(&server, journal.path(), &Stop::default())?;
    let requests = requests(3);
    assert_eq!(generate_all(&model, &requests).await, expected(&requests));
    assert_eq!(server.batches().len(), 1, "{:?}", server.calls());
    Ok(())
}
