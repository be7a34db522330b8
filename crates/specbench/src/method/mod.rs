//! Test-time methods: turning one item's prompt into one response through `Model` calls.
//!
//! Owns: the messages each method sends, how its calls chain, how its thought and response are
//! read, and its token totals in two conventions (upstream's, and every token of every call).
//! Must not know URLs, wire formats, retries or the judge. Upstream semantics: the pack's
//! `README.md` ("Facts of the upstream protocol") and `golden/`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::backend::{Generation, Message, Model, ModelError, Request, Usage};
use crate::protocol::{self, Protocol, RuleLists, Template};

/// The methods specbench knows, by their upstream names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// The bare prompt, no rules.
    Raw,
    /// The prompt with the scenario's rules (upstream's `augment` text).
    Vanilla,
}

impl MethodKind {
    pub const ALL: [MethodKind; 2] = [MethodKind::Raw, MethodKind::Vanilla];

    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Raw => "raw",
            MethodKind::Vanilla => "vanilla",
        }
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MethodKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MethodKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = MethodKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown method `{s}` (known: {})", known.join(", "))
            })
    }
}

/// What a method gets for one item.
#[derive(Debug, Clone, Copy)]
pub struct MethodInput<'a> {
    /// The text generated from (the adversarial or the original prompt).
    pub prompt: &'a str,
    pub rules: &'a RuleLists,
    pub protocol: &'a Protocol,
}

/// A method's final output for one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Response {
    pub thought: String,
    pub text: String,
    /// Upstream's convention (what `generate.json` records).
    pub usage: Usage,
    /// Every prompt and completion token of every call: the true cost.
    pub cost: Usage,
    pub calls: u32,
    /// The last call's finish reason (`length` means the answer was cut short).
    pub finish_reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the model's response is empty after removing its thought")]
    EmptyResponse,
}

/// One item in, one response out, through `model` only.
#[async_trait]
pub trait Method: Send + Sync {
    fn kind(&self) -> MethodKind;

    async fn respond(
        &self,
        input: &MethodInput<'_>,
        model: &Model,
    ) -> Result<Response, MethodError>;
}

/// The method for `kind`, with its parameters.
pub fn method(kind: MethodKind) -> Arc<dyn Method> {
    match kind {
        MethodKind::Raw => Arc::new(SingleCall { with_rules: false }),
        MethodKind::Vanilla => Arc::new(SingleCall { with_rules: true }),
    }
}

/// Splits a generation into `(thought, response)`: a separate reasoning field when the backend
/// gives one (DeepSeek), else the `</think>` split upstream applies to the content.
pub fn thought_and_response(generation: &Generation) -> (String, String) {
    match &generation.reasoning {
        Some(reasoning) => (reasoning.clone(), generation.text.clone()),
        None => protocol::split_thought(&generation.text),
    }
}

/// The system and user messages of a plain generation; `with_rules` adds the scenario's rules.
pub fn generation_messages(input: &MethodInput<'_>, with_rules: bool) -> Vec<Message> {
    let user = if with_rules {
        input.protocol.render(
            Template::Augment,
            &[
                ("prompt", input.prompt),
                ("specification_string", &input.rules.generation),
            ],
        )
    } else {
        input.prompt.to_string()
    };
    vec![
        Message::system(input.protocol.text(Template::System)),
        Message::user(user),
    ]
}

/// `raw` and `vanilla`: one call; they differ only in the user message.
struct SingleCall {
    with_rules: bool,
}

#[async_trait]
impl Method for SingleCall {
    fn kind(&self) -> MethodKind {
        if self.with_rules {
            MethodKind::Vanilla
        } else {
            MethodKind::Raw
        }
    }

    async fn respond(
        &self,
        input: &MethodInput<'_>,
        model: &Model,
    ) -> Result<Response, MethodError> {
        let request = Request::chat(generation_messages(input, self.with_rules));
        let generation = model.generate(&request).await?;
        let (thought, text) = thought_and_response(&generation);
        // Upstream asserts a non-empty vanilla response; an empty one is a failed item here.
        if self.with_rules && text.is_empty() {
            return Err(MethodError::EmptyResponse);
        }
        Ok(Response {
            thought,
            text,
            usage: generation.usage,
            cost: generation.usage,
            calls: 1,
            finish_reason: generation.finish_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::Rules;

    #[test]
    fn method_names_round_trip() {
        for kind in MethodKind::ALL {
            assert_eq!(kind.name().parse::<MethodKind>(), Ok(kind));
        }
        assert!("align4".parse::<MethodKind>().is_err());
    }

    #[test]
    fn vanilla_wraps_the_prompt_with_rules_and_raw_does_not() {
        let protocol = Protocol::builtin();
        let rules = RuleLists::new(&Rules {
            safety: vec!["no harm".into()],
            behavioral: vec!["be brief".into()],
        });
        let input = MethodInput {
            prompt: "Tell me a story {response}",
            rules: &rules,
            protocol: &protocol,
        };
        let raw = generation_messages(&input, false);
        assert_eq!(raw[1].content, "Tell me a story {response}");
        let vanilla = generation_messages(&input, true);
        assert!(
            vanilla[1]
                .content
                .starts_with("Tell me a story {response}\n")
        );
        assert!(
            vanilla[1]
                .content
                .contains("**safety**\n- no harm\n**behavioral**\n- be brief\n")
        );
        assert_eq!(vanilla[0].content, protocol.text(Template::System));
    }

    #[test]
    fn reasoning_field_wins_over_the_split() {
        let generation = Generation {
            text: "answer".into(),
            reasoning: Some("because".into()),
            usage: Usage::default(),
            finish_reason: None,
        };
        assert_eq!(
            thought_and_response(&generation),
            ("because".into(), "answer".into())
        );
    }
}
