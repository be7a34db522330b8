//! Protocol parity: every request specbench sends equals a request the upstream harness sent
//! (`golden/requests.jsonl`, key order aside), and what specbench records of the replies —
//! responses, thoughts, usage, verdicts, scores, judge prompts — equals `golden/results.jsonl`.

use std::sync::Arc;

use serde_json::Value;
use specbench::backend::Stop;
use specbench::judge::JudgeMode;
use specbench::method::MethodConfig;
use specbench::pack;
use specbench::setup::{
    DataConfig, ExecConfig, JudgeConfig, MethodsConfig, ModelConfig, NoLocalEngine, Provider, RunConfig, Task,
};
use specbench::store::Store;
use specbench_test::golden::{self, ReplayServer, first_difference};

/// The configuration that asks for `method`, its parameters given explicitly.
fn methods_of(method: &MethodConfig) -> MethodsConfig {
    let mut config = MethodsConfig {
        methods: vec![method.kind()],
        ..MethodsConfig::default()
    };
    match method {
        MethodConfig::SelfRefine {
            max_iters,
            max_history_length,
        } => {
            config.max_iters = Some(*max_iters);
            config.max_history_length = Some(*max_history_length);
        }
        MethodConfig::MoreThink { rethink_count } => config.rethink_count = Some(*rethink_count),
        MethodConfig::Align3 { stages } => config.align3_stages = stages.clone(),
        _ => {}
    }
    config
}

const ITEMS: [usize; 4] = [0, 1, 200, 201];

struct Case {
    model_key: &'static str,
    method: MethodConfig,
    /// The method part of the golden tags (`self_refine-max_iters=3-max_history_length=1`).
    tag: &'static str,
    /// (judge key, mode) pairs the golden files hold for this case.
    judges: &'static [(&'static str, JudgeMode)],
}

const JUDGES: &[(&str, JudgeMode)] = &[
    ("GPT-4.1", JudgeMode::Joint),
    ("GPT-4.1", JudgeMode::Sequential),
    ("Qwen3-32B-thinking", JudgeMode::Joint),
];

fn cases() -> Vec<Case> {
    let case = |model_key, method, tag, judges| Case {
        model_key,
        method,
        tag,
        judges,
    };
    vec![
        case("Qwen3-14B", MethodConfig::Raw, "raw", &[]),
        case("Qwen3-14B", MethodConfig::Vanilla, "vanilla", JUDGES),
        case("Qwen3-14B-thinking", MethodConfig::Vanilla, "vanilla", JUDGES),
        case(
            "Qwen3-14B",
            MethodConfig::SelfRefine {
                max_iters: 3,
                max_history_length: 1,
            },
            "self_refine-max_iters=3-max_history_length=1",
            &[],
        ),
        case(
            "Qwen3-14B",
            MethodConfig::SelfRefine {
                max_iters: 2,
                max_history_length: 2,
            },
            "self_refine-max_iters=2-max_history_length=2",
            &[],
        ),
        case("Qwen3-14B-thinking", MethodConfig::ZeroThink, "zero_think", &[]),
        case(
            "Qwen3-14B-thinking",
            MethodConfig::MoreThink { rethink_count: 3 },
            "more_think-rethink_count=3",
            &[],
        ),
        case(
            "Qwen3-14B-thinking",
            MethodConfig::Align3 { stages: vec![1, 2, 3] },
            "align3",
            JUDGES,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_and_judge_matches_upstream_byte_for_byte() -> anyhow::Result<()> {
    let pack_dir = golden::pack_dir()?;
    let requests = golden::requests(&pack_dir)?;
    let expected = golden::results(&pack_dir)?;
    let replay = ReplayServer::start(&requests)?;
    let pack = Arc::new(pack::load(&pack_dir)?);
    let results = tempfile::tempdir()?;
    let base_url = replay.server.base_url();
    let served = |key: &str| -> (Option<String>, Option<Provider>, Vec<String>) {
        (Some(key.to_string()), Some(Provider::Vllm), vec![base_url.clone()])
    };

    let mut compared = 0;
    let cases = cases();
    for case in &cases {
        // Built as every run is built: from a configuration, through `resolve`.
        let (key, provider, base_urls) = served(case.model_key);
        let mut judges: Vec<JudgeConfig> = Vec::new();
        for (judge_key, mode) in case.judges {
            match judges.iter_mut().find(|j| j.key.as_deref() == Some(*judge_key)) {
                Some(judge) => judge.modes.push(*mode),
                None => {
                    let (key, provider, base_urls) = served(judge_key);
                    judges.push(JudgeConfig {
                        key,
                        provider,
                        base_urls,
                        modes: vec![*mode],
                        ..JudgeConfig::default()
                    });
                }
            }
        }
        let config = RunConfig {
            task: if judges.is_empty() { Task::Generate } else { Task::Run },
            data: DataConfig {
                data: Some(pack_dir.clone()),
                items: ITEMS.to_vec(),
                results: results.path().to_path_buf(),
                ..DataConfig::default()
            },
            model: ModelConfig {
                key,
                provider,
                base_urls,
                ..ModelConfig::default()
            },
            methods: methods_of(&case.method),
            judges,
            exec: ExecConfig {
                concurrency: 16,
                timeout: 30.0,
                max_attempts: 2,
                no_cache: true,
                ..ExecConfig::default()
            },
            adversarial: true,
        };
        let mut runners = config.resolve(&NoLocalEngine, Stop::default())?;
        anyhow::ensure!(runners.len() == 1, "one method, one runner");
        let runner = runners.remove(0);
        assert_eq!(runner.plan.method, case.method, "{}", case.tag);
        let report = Arc::new(runner).run(Arc::new(|_| {})).await?;
        let unmatched = replay.unmatched();
        if let Some(request) = unmatched.first() {
            // The nearest golden request: the longest common prefix of the canonical forms.
            let actual = golden::canonical(request);
            let common = |g: &&golden::GoldenRequest| {
                let wanted = golden::canonical(&g.request);
                wanted.bytes().zip(actual.bytes()).take_while(|(a, b)| a == b).count()
            };
            let tag_hint = requests
                .iter()
                .max_by_key(common)
                .map(|g| (first_difference(&g.request, request), g.tag.clone()));
            let (difference, tag) = tag_hint.unwrap_or_default();
            anyhow::bail!(
                "{} request(s) not in golden/requests.jsonl; nearest golden request {tag}: {}",
                unmatched.len(),
                difference.unwrap_or_default()
            );
        }
        assert_eq!(
            report.problems(),
            0,
            "{}/{}: some items failed: {report:?}",
            case.model_key,
            case.tag
        );

        for scenario in &pack.scenarios {
            let dir = Store::new(results.path()).run_dir(case.model_key, &scenario.name, &case.method.dir_name())?;
            let generated: Vec<Value> = read(&dir.generate_json())?;
            assert_eq!(generated.len(), ITEMS.len());
            for (position, index) in ITEMS.iter().enumerate() {
                let tag = format!("{}/{index}/generate/{}/{}", scenario.name, case.model_key, case.tag);
                let want = expected
                    .get(&(tag.clone(), "generation".to_string()))
                    .ok_or_else(|| anyhow::anyhow!("{tag}: not in golden/results.jsonl"))?;
                let got = &generated[position];
                for field in ["response", "thought", "usage"] {
                    if let Some(difference) = first_difference(&want[field], &got[field]) {
                        anyhow::bail!("{tag}: {field}{difference}");
                    }
                }
                assert_eq!(
                    got["data"],
                    Value::Object((*scenario.items[*index].raw).clone()),
                    "{tag}: data"
                );
                compared += 1;

                for (judge_key, mode) in case.judges {
                    let stem = match mode {
                        JudgeMode::Joint => judge_key.to_string(),
                        JudgeMode::Sequential => format!("{judge_key}-sequential"),
                    };
                    let evaluated: Vec<Value> = read(&dir.evaluate_json(&stem))?;
                    let judge_tag = format!("{tag}/judge/{judge_key}/{mode}");
                    let want = expected
                        .get(&(judge_tag.clone(), "judge".to_string()))
                        .ok_or_else(|| anyhow::anyhow!("{judge_tag}: not in golden/results.jsonl"))?;
                    if let Some(difference) = first_difference(want, &evaluated[position]["eval"]) {
                        anyhow::bail!("{judge_tag}: eval{difference}");
                    }
                    compared += 1;
                }
            }
        }
    }
    // 5 scenarios × 4 items × (8 generations + 3 cases with 3 judges each).
    assert_eq!(compared, 5 * 4 * (8 + 3 * 3));
    Ok(())
}

fn read<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}
