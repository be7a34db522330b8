//! The whole pipeline on the embedded model: no server, no key.

use crate::support::TestContext;

fn model_path() -> anyhow::Result<String> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = specbench_local::default_model_path(&workspace);
    anyhow::ensure!(path.is_file(), "{}: no model; run scripts/fetch-model", path.display());
    Ok(path.to_string_lossy().into_owned())
}

#[test]
fn vanilla_and_align3_run_and_are_judged_on_the_embedded_model() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let model = model_path()?;
    let config = ctx.dir.path().join("models.yaml");
    // Short generations keep the test quick; the judge (the same model) gets room for its verdicts.
    std::fs::write(&config, "SmolLM2-135M-Instruct:\n  max_tokens: 48\n")?;
    let finished = crate::support::finish(ctx.specbench().env("SPECBENCH_MODEL_PATH", &model).args([
        "run",
        "--scenario",
        "Garden",
        "--items",
        "0,1",
        "--method",
        "vanilla,align3",
        "--concurrency",
        "4",
        "--local-context",
        "4096",
        "--model-config",
        config.to_str().unwrap_or_default(),
    ]))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    for method in ["vanilla", "align3"] {
        let generated = ctx.read_json(&format!("SmolLM2-135M-Instruct/Garden/{method}/generate.json"))?;
        assert!(
            generated
                .as_array()
                .is_some_and(|l| l.len() == 2 && l.iter().all(|e| e["response"].is_string()))
        );
        let scores = ctx.read_json(&format!(
            "SmolLM2-135M-Instruct/Garden/{method}/SmolLM2-135M-Instruct_score.json"
        ))?;
        assert_eq!(scores["full_dataset_SAR"]["count"], 2, "{method}: every item judged");
        let manifest = ctx.read_json(&format!("SmolLM2-135M-Instruct/Garden/{method}/manifest.json"))?;
        let judge = &manifest["judges"]["SmolLM2-135M-Instruct"]["model"]["backend"];
        assert_eq!(judge["provider"], "local");
        assert_eq!(judge["constrained_judging"], true, "{manifest}");
    }
    let align3 = ctx.read_json("SmolLM2-135M-Instruct/Garden/align3/generate.json")?;
    assert!(
        align3[0]["thought"]
            .as_str()
            .is_some_and(|t| t.starts_with("<think>Let me plan"))
    );
    assert!(finished.stdout.contains("== method align3"), "{}", finished.stdout);
    Ok(())
}
