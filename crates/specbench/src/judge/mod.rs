//! The LLM-as-judge stage: joint (one call scores every rule) or sequential (one call per rule).
//!
//! Owns: the judge requests (upstream prompts, rule lists, `prompt_comment`, the 8,000-character
//! cut), verdict parsing, and re-asking on an unparseable reply up to 5 attempts. It receives an
//! item, its rules and the response text, never which backend or method produced that text.
//! An item whose reply never parses is a `JudgeFailure` with the raw replies: recorded, never
//! scored.

pub mod format;
mod parse;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures::future::try_join_all;
use serde::Serialize;

pub use parse::{JointReply, ParseError, joint_reasons, parse_joint, parse_sequential};

use crate::backend::{Message, Model, ModelError, ReplyFormat, Request, Usage};
use crate::pack::Item;
use crate::protocol::{self, Protocol, RuleLists, Template, thought_and_response};
use crate::score::{Verdict, Verdicts};

/// Upstream's limit on attempts at one judge call whose reply does not parse.
pub const MAX_PARSE_ATTEMPTS: u32 = 5;

/// The stem of the result files of judge `key` in `mode` (see [`Judge::file_stem`]).
pub fn file_stem(key: &str, mode: JudgeMode) -> String {
    let short = key.rsplit('/').next().unwrap_or(key);
    match mode {
        JudgeMode::Joint => short.to_string(),
        JudgeMode::Sequential => format!("{short}-sequential"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeMode {
    Joint,
    Sequential,
}

impl JudgeMode {
    /// The judge calls one item costs (more when a reply does not parse): one in
    /// joint mode, one per rule in sequential mode.
    pub fn calls_per_item(self, rules: usize) -> u32 {
        match self {
            JudgeMode::Joint => 1,
            JudgeMode::Sequential => u32::try_from(rules).unwrap_or(u32::MAX),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            JudgeMode::Joint => "joint",
            JudgeMode::Sequential => "sequential",
        }
    }
}

impl fmt::Display for JudgeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for JudgeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "joint" => Ok(JudgeMode::Joint),
            "sequential" => Ok(JudgeMode::Sequential),
            other => Err(format!("unknown judge mode `{other}` (known: joint, sequential)")),
        }
    }
}

/// A parsed judgement of one response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judged {
    pub verdicts: Verdicts,
    /// Joint mode: the user prompt sent (upstream stores it as `eval_prompt`).
    pub prompt: Option<String>,
    /// Joint mode: the reply as parsed (after upstream's spelling fixes), `eval_response`.
    pub reply: Option<String>,
    /// Upstream's convention: the successful calls' usage.
    pub usage: Usage,
    /// Every call, unparseable replies included.
    pub cost: Usage,
    pub calls: u32,
}

/// A response whose judge reply never parsed within the attempt limit.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct JudgeFailure {
    pub attempts: u32,
    /// The rule (1-based over safety then behavioral) in sequential mode.
    pub rule: Option<usize>,
    pub reason: String,
    pub raw_replies: Vec<String>,
    pub cost: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Judgement {
    Judged(Judged),
    Failed(JudgeFailure),
}

/// A judge model in one mode, with the protocol texts.
#[derive(Debug, Clone)]
pub struct Judge {
    pub model: Model,
    pub mode: JudgeMode,
    protocol: Arc<Protocol>,
}

/// The outcome of one judge call that parsed, or of all its attempts.
enum CallOutcome<T> {
    Parsed { value: T, usage: Usage },
    Unparsed { reason: String, replies: Vec<String> },
}

impl Judge {
    pub fn new(model: Model, mode: JudgeMode, protocol: Arc<Protocol>) -> Judge {
        Judge { model, mode, protocol }
    }

    /// The stem of this judge's result files: the model key without its organisation, plus
    /// `-sequential` so that the two modes of one judge do not overwrite each other.
    pub fn file_stem(&self) -> String {
        file_stem(self.model.key(), self.mode)
    }

    /// The joint judge's user prompt for `item`'s `response` (already cut).
    pub fn joint_prompt(&self, item: &Item, lists: &RuleLists, response: &str) -> String {
        let safety_count = lists.rules.safety.len().to_string();
        let behavioral_count = lists.rules.behavioral.len().to_string();
        let comment = protocol::joint_prompt_comment(item);
        self.protocol.render(
            Template::JudgeJointUser,
            &[
                ("specification_string", &lists.joint_judge),
                ("query", &item.prompt),
                ("response", response),
                ("safety_specifications_count", &safety_count),
                ("behavioral_specifications_count", &behavioral_count),
                ("prompt_comment", &comment),
            ],
        )
    }

    /// The sequential judge's user prompt for one rule; only the last rule carries the reference.
    pub fn sequential_prompt(&self, item: &Item, rule: &str, is_last: bool, response: &str) -> String {
        let comment = if is_last {
            protocol::sequential_reference(item)
        } else {
            String::new()
        };
        self.protocol.render(
            Template::JudgeSequentialUser,
            &[
                ("specification_string", rule),
                ("query", &item.prompt),
                ("response", response),
                ("prompt_comment", &comment),
            ],
        )
    }

    /// Judges `response` to `item` under the scenario's rules. `Err` only when the judge model could not be
    /// reached within its retry policy; an unparseable reply is `Ok(Judgement::Failed)`.
    pub async fn judge(&self, item: &Item, lists: &RuleLists, response: &str) -> Result<Judgement, ModelError> {
        let response = protocol::cut_response(response);
        match self.mode {
            JudgeMode::Joint => self.judge_joint(item, lists, response).await,
            JudgeMode::Sequential => self.judge_sequential(item, lists, response).await,
        }
    }

    async fn judge_joint(&self, item: &Item, lists: &RuleLists, response: &str) -> Result<Judgement, ModelError> {
        let prompt = self.joint_prompt(item, lists, response);
        let system = self.protocol.text(Template::JudgeJointSystem);
        let mut cost = Usage::default();
        let mut calls = 0;
        let outcome = self
            .ask(system, &prompt, joint_format(lists), &mut cost, &mut calls, |reply| {
                parse_joint(reply, lists.rules.safety.len(), lists.rules.behavioral.len())
            })
            .await?;
        Ok(match outcome {
            CallOutcome::Parsed { value, usage } => Judgement::Judged(Judged {
                verdicts: value.verdicts,
                prompt: Some(prompt),
                reply: Some(value.normalized_reply),
                usage,
                cost,
                calls,
            }),
            CallOutcome::Unparsed { reason, replies } => Judgement::Failed(JudgeFailure {
                attempts: calls,
                rule: None,
                reason,
                raw_replies: replies,
                cost,
            }),
        })
    }

    async fn judge_sequential(&self, item: &Item, lists: &RuleLists, response: &str) -> Result<Judgement, ModelError> {
        let all_rules: Vec<&String> = lists.rules.safety.iter().chain(&lists.rules.behavioral).collect();
        let last = all_rules.len().saturating_sub(1);
        let system = self.protocol.text(Template::JudgeSequentialSystem);
        // Rules are independent calls; sending them together shortens an item's latency while
        // the per-endpoint cap still bounds the load.
        let per_rule = all_rules.iter().enumerate().map(|(i, rule)| {
            let prompt = self.sequential_prompt(item, rule, i == last, response);
            async move {
                let mut cost = Usage::default();
                let mut calls = 0;
                let outcome = self
                    .ask(
                        system,
                        &prompt,
                        ReplyFormat::Sequential,
                        &mut cost,
                        &mut calls,
                        parse_sequential,
                    )
                    .await?;
                Ok::<_, ModelError>((outcome, cost, calls))
            }
        });
        let outcomes = try_join_all(per_rule).await?;
        let mut verdicts = Vec::with_capacity(outcomes.len());
        let mut usage = Usage::default();
        let mut cost = Usage::default();
        let mut calls = 0;
        let mut failure = None;
        for (i, (outcome, rule_cost, rule_calls)) in outcomes.into_iter().enumerate() {
            cost += &rule_cost;
            calls += rule_calls;
            match outcome {
                CallOutcome::Parsed {
                    value,
                    usage: rule_usage,
                } => {
                    verdicts.push(value);
                    usage += &rule_usage;
                }
                CallOutcome::Unparsed { reason, replies } => {
                    if failure.is_none() {
                        failure = Some((i + 1, reason, replies, rule_calls));
                    }
                }
            }
        }
        if let Some((rule, reason, raw_replies, attempts)) = failure {
            return Ok(Judgement::Failed(JudgeFailure {
                attempts,
                rule: Some(rule),
                reason,
                raw_replies,
                cost,
            }));
        }
        let behavioral = verdicts.split_off(lists.rules.safety.len());
        Ok(Judgement::Judged(Judged {
            verdicts: Verdicts {
                safety: verdicts,
                behavioral,
            },
            prompt: None,
            reply: None,
            usage,
            cost,
            calls,
        }))
    }

    /// One judge call, re-asked until `parse` accepts the reply or the attempts run out.
    async fn ask<T>(
        &self,
        system: &str,
        prompt: &str,
        format: ReplyFormat,
        cost: &mut Usage,
        calls: &mut u32,
        parse: impl Fn(&str) -> Result<T, ParseError>,
    ) -> Result<CallOutcome<T>, ModelError> {
        let mut request = Request::chat(vec![Message::system(system), Message::user(prompt)]);
        request.format = Some(format);
        let mut replies = Vec::new();
        let mut reason = String::new();
        for _ in 0..MAX_PARSE_ATTEMPTS {
            let generation = self.model.generate(&request).await?;
            *calls += 1;
            *cost += &generation.usage;
            // A thinking judge's reply is read after its thought, as upstream does.
            let (_, reply) = thought_and_response(&generation);
            match parse(&reply) {
                Ok(value) => {
                    return Ok(CallOutcome::Parsed {
                        value,
                        usage: generation.usage,
                    });
                }
                Err(error) => {
                    tracing::debug!(judge = %self.model.key(), %error, "unparseable judge reply; asking again");
                    // Never cached: the next attempt, and a later --retry-errors, must ask again.
                    self.model.uncache(&request);
                    reason = error.to_string();
                    replies.push(reply);
                }
            }
        }
        Ok(CallOutcome::Unparsed { reason, replies })
    }
}

fn joint_format(lists: &RuleLists) -> ReplyFormat {
    ReplyFormat::Joint {
        safety: lists.rules.safety.len(),
        behavioral: lists.rules.behavioral.len(),
    }
}

/// Verdict as upstream's sequential files spell it: `<YES>`.
pub fn bracketed(verdict: Verdict) -> String {
    format!("<{}>", verdict.as_str())
}
