//! Property tests over everything that reads outside input: judge replies, protocol templates,
//! chat templates and scenario files. No input may panic; well-formed input must round-trip.
//! A bounded pass runs with the tests (256 cases each); `PROPTEST_CASES=100000` runs longer.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use specbench::backend::template::ChatTemplate;
use specbench::backend::{Message, Role};
use specbench::judge::{parse_joint, parse_sequential};
use specbench::pack;
use specbench::protocol::substitute;
use specbench::score::Verdict;

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![Just(Verdict::Yes), Just(Verdict::No), Just(Verdict::Na)]
}

fn tag(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Yes => "<YES>",
        Verdict::No => "<NO>",
        Verdict::Na => "<NA>",
    }
}

/// Text that looks like a judge reply's pieces, so the parser's branches are reached.
fn reply_like() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("<safety_specifications>".to_string()),
        Just("</safety_specifications>".to_string()),
        Just("<behavioral_specifications>".to_string()),
        Just("</behavioral_specifications>".to_string()),
        Just("<behavior_specifications>".to_string()),
        Just("<YES>".to_string()),
        Just("<NO>".to_string()),
        Just("<NA>".to_string()),
        Just("<N/A>".to_string()),
        Just("\n".to_string()),
        "[0-9]{1,2}\\. ".prop_map(|s| s),
        any::<String>(),
    ];
    prop::collection::vec(pieces, 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn the_joint_parser_never_panics(reply in reply_like(), safety in 0usize..15, behavioral in 0usize..15) {
        let _ = parse_joint(&reply, safety, behavioral);
    }

    #[test]
    fn the_sequential_parser_never_panics(reply in reply_like()) {
        let _ = parse_sequential(&reply);
    }

    #[test]
    fn a_well_formed_joint_reply_parses_to_its_verdicts(
        safety in prop::collection::vec(verdict(), 0..12),
        behavioral in prop::collection::vec(verdict(), 0..12),
        filler in "[a-zA-Z ,.]{0,40}",
    ) {
        let mut reply = String::from("<safety_specifications>\n");
        for (i, v) in safety.iter().enumerate() {
            reply.push_str(&format!("{}. {filler}{}\n", i + 1, tag(*v)));
        }
        reply.push_str("</safety_specifications>\n<behavioral_specifications>\n");
        for (i, v) in behavioral.iter().enumerate() {
            reply.push_str(&format!("{}. {filler}{}\n", i + 1, tag(*v)));
        }
        reply.push_str("</behavioral_specifications>");
        let parsed = parse_joint(&reply, safety.len(), behavioral.len());
        prop_assert!(parsed.is_ok(), "{reply}");
        if let Ok(parsed) = parsed {
            prop_assert_eq!(parsed.verdicts.safety, safety);
            prop_assert_eq!(parsed.verdicts.behavioral, behavioral);
        }
    }

    #[test]
    fn substitution_never_panics_and_leaves_plain_text_alone(
        template in "([a-z{} ]|\\{[a-z_]{0,8}\\}){0,30}",
        value in any::<String>(),
        plain in "[a-zA-Z .,\n]{0,60}",
    ) {
        let _ = substitute(&template, &[("name", value.as_str()), ("prompt", "p")]);
        prop_assert_eq!(substitute(&plain, &[("name", value.as_str())]), plain);
    }

    #[test]
    fn an_arbitrary_chat_template_never_panics(source in any::<String>(), content in any::<String>()) {
        if let Ok(template) = ChatTemplate::new(&source) {
            let messages = [Message::user(content.clone()), Message::assistant(content)];
            let _ = template.render(&messages, false, true, &Map::new());
            let _ = template.render(&messages[..1], true, false, &Map::new());
        }
    }

    #[test]
    fn the_pack_templates_render_any_message(content in any::<String>(), prefix in any::<String>()) {
        let Ok(pack) = specbench_test::golden::pack_dir() else {
            // The pack is required elsewhere; here an absent pack only skips the case.
            return Ok(());
        };
        for name in ["Qwen3.jinja", "deepseek.jinja"] {
            let source = std::fs::read_to_string(pack.join("chat_templates").join(name));
            prop_assert!(source.is_ok(), "{name}");
            let template = ChatTemplate::new(&source.unwrap_or_default());
            prop_assert!(template.is_ok(), "{name}");
            if let Ok(template) = template {
                let messages = [
                    Message { role: Role::System, content: "rules".into() },
                    Message::user(content.clone()),
                    Message::assistant(prefix.clone()),
                ];
                let _ = template.render(&messages, false, true, &Map::new());
            }
        }
    }
}

fn write_scenario(dir: &Path, prompts: &[u8], specifications: &[u8]) -> std::io::Result<()> {
    let scenario = dir.join("scenarios").join("Fuzz");
    std::fs::create_dir_all(&scenario)?;
    std::fs::write(scenario.join("prompts.json"), prompts)?;
    std::fs::write(scenario.join("specifications.json"), specifications)?;
    std::fs::write(
        scenario.join("scenario.json"),
        br#"{"name": "Fuzz", "description": "d"}"#,
    )
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(json!("unsafe")),
        Just(json!("safe")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("prompt".to_string()),
                    Just("adversarial_prompt".to_string()),
                    Just("label".to_string()),
                    Just("safety_specifications".to_string()),
                    Just("behavioral_specifications".to_string()),
                    "[a-z_]{1,10}".prop_map(|s| s),
                ],
                inner,
                0..6
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_scenario_loader_never_panics_on_bytes(prompts in any::<Vec<u8>>(), specifications in any::<Vec<u8>>()) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        write_scenario(dir.path(), &prompts, &specifications).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(pack::load(dir.path()).is_err(), "random bytes are not a scenario");
    }

    #[test]
    fn the_scenario_loader_never_panics_on_json(prompts in json_value(), specifications in json_value()) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (p, s) = (prompts.to_string(), specifications.to_string());
        write_scenario(dir.path(), p.as_bytes(), s.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(error) = pack::load(dir.path()) {
            // Every error names the file it is about.
            prop_assert!(error.to_string().contains("Fuzz"), "{error}");
        }
    }
}
