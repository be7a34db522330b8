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

use crate::backend::{Message, Model, ModelError, Request, Usage};
use crate::protocol::{Protocol, RuleLists, Template, thought_and_response};

mod deliberate;
mod search;

pub use deliberate::{Align3, MoreThink, SelfRefine, ZeroThink};
pub use search::{BestOfN, Scorer, ScorerKind, Tpo};

/// See [`MethodConfig::calls_per_item`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ItemCalls {
    pub generation: u32,
    /// Samples scored (a reward-model call each, or a judge call with `scorer: judge`).
    pub scored: u32,
}

/// The methods specbench knows, by their upstream names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// The bare prompt, no rules.
    Raw,
    /// The prompt with the scenario's rules (upstream's `augment` text).
    Vanilla,
    /// Vanilla with an empty thought prefilled: answer without deliberating.
    ZeroThink,
    /// Vanilla, with the thought reopened `rethink_count - 1` times by a rethink cue.
    MoreThink,
    /// Draft, then rounds of self-feedback and refinement against the rules.
    SelfRefine,
    /// Three reflection stages (behavioral, safety, holistic) injected into the thought.
    Align3,
    /// N samples, the best-scored one kept.
    BestOfN,
    /// Test-time preference optimization: sample, critique best against worst, revise.
    Tpo,
}

impl MethodKind {
    pub const ALL: [MethodKind; 8] = [
        MethodKind::Raw,
        MethodKind::Vanilla,
        MethodKind::ZeroThink,
        MethodKind::MoreThink,
        MethodKind::SelfRefine,
        MethodKind::Align3,
        MethodKind::BestOfN,
        MethodKind::Tpo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Raw => "raw",
            MethodKind::Vanilla => "vanilla",
            MethodKind::ZeroThink => "zero_think",
            MethodKind::MoreThink => "more_think",
            MethodKind::SelfRefine => "self_refine",
            MethodKind::Align3 => "align3",
            MethodKind::BestOfN => "best_of_n",
            MethodKind::Tpo => "tpo",
        }
    }

    /// Whether the method ranks samples with a scorer (a reward model or the judge).
    pub fn needs_scorer(self) -> bool {
        matches!(self, MethodKind::BestOfN | MethodKind::Tpo)
    }

    /// Whether the method prefills the assistant turn (needs a server that can continue it).
    pub fn prefills(self) -> bool {
        matches!(self, MethodKind::ZeroThink | MethodKind::MoreThink | MethodKind::Align3)
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

/// A method with its parameters: what a run uses and records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum MethodConfig {
    Raw,
    Vanilla,
    ZeroThink,
    MoreThink {
        rethink_count: u32,
    },
    SelfRefine {
        max_iters: u32,
        max_history_length: u32,
    },
    /// `stages` are Align3's stage numbers (1 behavioral, 2 safety, 3 holistic) in the order
    /// they run; the paper's method is `[1, 2, 3]`, any subset and order is an ablation.
    Align3 {
        stages: Vec<u8>,
    },
    BestOfN {
        n: u32,
        scorer: ScorerKind,
    },
    Tpo {
        samples: u32,
        iterations: u32,
        scorer: ScorerKind,
    },
}

impl MethodConfig {
    /// Upstream's defaults (`config_ttd.yaml` and its code).
    pub const DEFAULT_RETHINK_COUNT: u32 = 3;
    pub const DEFAULT_MAX_ITERS: u32 = 3;
    pub const DEFAULT_MAX_HISTORY_LENGTH: u32 = 1;
    pub const ALIGN3_STAGES: [u8; 3] = [1, 2, 3];
    pub const DEFAULT_N: u32 = 4;
    pub const DEFAULT_TPO_SAMPLES: u32 = 5;
    pub const DEFAULT_TPO_ITERATIONS: u32 = 2;

    /// `kind` with upstream's default parameters.
    pub fn with_defaults(kind: MethodKind) -> MethodConfig {
        match kind {
            MethodKind::Raw => MethodConfig::Raw,
            MethodKind::Vanilla => MethodConfig::Vanilla,
            MethodKind::ZeroThink => MethodConfig::ZeroThink,
            MethodKind::MoreThink => MethodConfig::MoreThink {
                rethink_count: Self::DEFAULT_RETHINK_COUNT,
            },
            MethodKind::SelfRefine => MethodConfig::SelfRefine {
                max_iters: Self::DEFAULT_MAX_ITERS,
                max_history_length: Self::DEFAULT_MAX_HISTORY_LENGTH,
            },
            MethodKind::Align3 => MethodConfig::Align3 {
                stages: Self::ALIGN3_STAGES.to_vec(),
            },
            MethodKind::BestOfN => MethodConfig::BestOfN {
                n: Self::DEFAULT_N,
                scorer: ScorerKind::RewardModel,
            },
            MethodKind::Tpo => MethodConfig::Tpo {
                samples: Self::DEFAULT_TPO_SAMPLES,
                iterations: Self::DEFAULT_TPO_ITERATIONS,
                scorer: ScorerKind::RewardModel,
            },
        }
    }

    pub fn kind(&self) -> MethodKind {
        match self {
            MethodConfig::Raw => MethodKind::Raw,
            MethodConfig::Vanilla => MethodKind::Vanilla,
            MethodConfig::ZeroThink => MethodKind::ZeroThink,
            MethodConfig::MoreThink { .. } => MethodKind::MoreThink,
            MethodConfig::SelfRefine { .. } => MethodKind::SelfRefine,
            MethodConfig::Align3 { .. } => MethodKind::Align3,
            MethodConfig::BestOfN { .. } => MethodKind::BestOfN,
            MethodConfig::Tpo { .. } => MethodKind::Tpo,
        }
    }

    /// The calls one item costs: to the model under test, and to the scorer (Best-of-N's and
    /// TPO's samples), as each method's code makes them (no method stops early). What a study
    /// plan counts; a test checks it against the requests a run sends.
    pub fn calls_per_item(&self) -> ItemCalls {
        let (generation, scored) = match self {
            MethodConfig::Raw | MethodConfig::Vanilla | MethodConfig::ZeroThink => (1, 0),
            MethodConfig::MoreThink { rethink_count } => ((*rethink_count).max(1), 0),
            MethodConfig::SelfRefine { max_iters, .. } => (1 + 2 * max_iters, 0),
            MethodConfig::Align3 { stages } => (stages.len() as u32, 0),
            MethodConfig::BestOfN { n, .. } => (*n, *n),
            MethodConfig::Tpo {
                samples, iterations, ..
            } => (samples + iterations * (2 + samples), samples * (1 + iterations)),
        };
        ItemCalls { generation, scored }
    }

    /// The result folder: upstream's method name, with the parameters appended when they are
    /// not upstream's defaults (`self_refine-max_iters=2-max_history_length=2`), so runs with
    /// other parameters never overwrite the paper's configuration.
    pub fn dir_name(&self) -> String {
        let name = self.kind().name();
        // Methods upstream never published always name their scorer: a reward model's and the
        // oracle judge's results must never be mistaken for each other.
        match self {
            MethodConfig::BestOfN { n, scorer } => return format!("{name}-n={n}-scorer={}", scorer.name()),
            MethodConfig::Tpo {
                samples,
                iterations,
                scorer,
            } => {
                return format!(
                    "{name}-samples={samples}-iterations={iterations}-scorer={}",
                    scorer.name()
                );
            }
            _ => {}
        }
        if *self == MethodConfig::with_defaults(self.kind()) {
            return name.to_string();
        }
        match self {
            MethodConfig::MoreThink { rethink_count } => format!("{name}-rethink_count={rethink_count}"),
            MethodConfig::SelfRefine {
                max_iters,
                max_history_length,
            } => format!("{name}-max_iters={max_iters}-max_history_length={max_history_length}"),
            MethodConfig::Align3 { stages } => {
                let stages: Vec<String> = stages.iter().map(u8::to_string).collect();
                format!("{name}-stages={}", stages.join(","))
            }
            _ => name.to_string(),
        }
    }

    /// The method, ready to run; Best-of-N and TPO need the `scorer` their config names.
    pub fn build(&self, scorer: Option<&Scorer>) -> Result<Arc<dyn Method>, MethodError> {
        let scorer_for = |kind: ScorerKind| match scorer {
            Some(scorer) if scorer.kind() == kind => Ok(scorer.clone()),
            _ => Err(MethodError::Scorer(format!(
                "{} needs a {} scorer",
                self.kind(),
                kind.name()
            ))),
        };
        Ok(match self {
            MethodConfig::Raw => Arc::new(SingleCall { with_rules: false }),
            MethodConfig::Vanilla => Arc::new(SingleCall { with_rules: true }),
            MethodConfig::ZeroThink => Arc::new(ZeroThink),
            MethodConfig::MoreThink { rethink_count } => Arc::new(MoreThink {
                rethink_count: *rethink_count,
            }),
            MethodConfig::SelfRefine {
                max_iters,
                max_history_length,
            } => Arc::new(SelfRefine {
                max_iters: *max_iters,
                max_history_length: *max_history_length,
            }),
            MethodConfig::Align3 { stages } => Arc::new(Align3 { stages: stages.clone() }),
            MethodConfig::BestOfN { n, scorer } => Arc::new(BestOfN {
                n: *n,
                scorer: scorer_for(*scorer)?,
            }),
            MethodConfig::Tpo {
                samples,
                iterations,
                scorer,
            } => Arc::new(Tpo {
                samples: *samples,
                iterations: *iterations,
                scorer: scorer_for(*scorer)?,
            }),
        })
    }
}

/// What a method gets for one item.
#[derive(Debug, Clone, Copy)]
pub struct MethodInput<'a> {
    /// The item, for scorers that judge against it (label, reference answer).
    pub item: &'a crate::pack::Item,
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
    #[error("Align3 was given no stages to run")]
    NoStages,
    #[error("scorer: {0}")]
    Scorer(String),
    #[error("no candidate response to choose from")]
    NoCandidates,
}

/// One item in, one response out, through `model` only.
#[async_trait]
pub trait Method: Send + Sync {
    async fn respond(&self, input: &MethodInput<'_>, model: &Model) -> Result<Response, MethodError>;
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
    async fn respond(&self, input: &MethodInput<'_>, model: &Model) -> Result<Response, MethodError> {
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
    use crate::backend::Generation;
    use crate::pack::Rules;

    #[test]
    fn method_names_round_trip() {
        for kind in MethodKind::ALL {
            assert_eq!(kind.name().parse::<MethodKind>(), Ok(kind));
        }
        assert!("align4".parse::<MethodKind>().is_err());
    }

    #[test]
    fn result_folders_name_non_default_parameters() {
        assert_eq!(
            MethodConfig::with_defaults(MethodKind::SelfRefine).dir_name(),
            "self_refine"
        );
        let refine = MethodConfig::SelfRefine {
            max_iters: 2,
            max_history_length: 2,
        };
        assert_eq!(refine.dir_name(), "self_refine-max_iters=2-max_history_length=2");
        let ablation = MethodConfig::Align3 { stages: vec![2, 1, 3] };
        assert_eq!(ablation.dir_name(), "align3-stages=2,1,3");
        assert_eq!(MethodConfig::with_defaults(MethodKind::Align3).dir_name(), "align3");
    }

    #[test]
    fn vanilla_wraps_the_prompt_with_rules_and_raw_does_not() {
        let protocol = Protocol::builtin();
        let rules = RuleLists::new(&Rules {
            safety: vec!["no harm".into()],
            behavioral: vec!["be brief".into()],
        });
        let item = crate::pack::Item::from_json(
            &serde_json::json!({"adversarial_prompt": "a", "prompt": "p", "label": "safe"}),
            std::path::Path::new("p.json"),
            0,
        )
        .map_err(|e| e.to_string());
        let Ok(item) = item else {
            panic!("fixture item: {item:?}");
        };
        let input = MethodInput {
            item: &item,
            prompt: "Tell me a story {response}",
            rules: &rules,
            protocol: &protocol,
        };
        let raw = generation_messages(&input, false);
        assert_eq!(raw[1].content, "Tell me a story {response}");
        let vanilla = generation_messages(&input, true);
        assert!(vanilla[1].content.starts_with("Tell me a story {response}\n"));
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
        assert_eq!(thought_and_response(&generation), ("because".into(), "answer".into()));
    }
}
