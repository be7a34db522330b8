//! The test-time deliberation methods with upstream code: ZeroThink, MoreThink, Self-Refine and
//! Align3. Each follows upstream's `ttd.py` call for call, so that its requests equal the
//! pack's golden ones; the facts are summarised in the pack's `README.md`.

use async_trait::async_trait;

use super::{Method, MethodError, MethodInput, Response, generation_messages};
use crate::backend::{Message, Model, Request, Usage};
use crate::protocol::{END_OF_THOUGHT, Template, thought_and_response};

/// Python's `str.rstrip()`: upstream trims each stage's output before appending the next cue.
fn rstrip(text: &str) -> &str {
    text.trim_end()
}

/// Token counts in upstream's convention for chained prefill calls: the first call's prompt
/// tokens (the rest re-send the same conversation), every call's completion tokens.
fn chained_usage(first_prompt_tokens: u64, cost: &Usage) -> Usage {
    Usage {
        prompt_tokens: first_prompt_tokens,
        completion_tokens: cost.completion_tokens,
        total_tokens: first_prompt_tokens + cost.completion_tokens,
    }
}

/// Prefills an empty thought, `<think>\n</think>`, so the model answers without deliberating.
pub struct ZeroThink;

const ZERO_THINK_PREFIX: &str = "<think>\n</think>";

#[async_trait]
impl Method for ZeroThink {
    async fn respond(&self, input: &MethodInput<'_>, model: &Model) -> Result<Response, MethodError> {
        let request = Request::prefilled(generation_messages(input, true), ZERO_THINK_PREFIX, Vec::new());
        let generation = model.generate(&request).await?;
        let (thought, text) = thought_and_response(&generation);
        Ok(Response {
            thought: format!("{ZERO_THINK_PREFIX}{thought}"),
            text,
            usage: generation.usage,
            cost: generation.usage,
            calls: 1,
            finish_reason: generation.finish_reason,
        })
    }
}

/// Reopens the thought `rethink_count - 1` times: each round stops at `</think>`, and the
/// rethink cue is appended to what was thought so far; then the answer is generated.
pub struct MoreThink {
    pub rethink_count: u32,
}

#[async_trait]
impl Method for MoreThink {
    async fn respond(&self, input: &MethodInput<'_>, model: &Model) -> Result<Response, MethodError> {
        let messages = generation_messages(input, true);
        let cue = input.protocol.text(Template::MoreThinkRethink);
        let mut thought_so_far = String::from("<think>");
        let mut cost = Usage::default();
        let mut first_prompt_tokens = None;
        let mut calls = 0;
        for _ in 1..self.rethink_count {
            let mut request = Request::prefilled(messages.clone(), thought_so_far.clone(), vec![END_OF_THOUGHT.into()]);
            request.stop_excluded = true;
            let generation = model.generate(&request).await?;
            calls += 1;
            cost += &generation.usage;
            first_prompt_tokens.get_or_insert(generation.usage.prompt_tokens);
            thought_so_far.push_str(rstrip(&generation.text));
            thought_so_far.push_str("\n\n");
            thought_so_far.push_str(cue);
        }
        let request = Request::prefilled(messages, thought_so_far.clone(), Vec::new());
        let generation = model.generate(&request).await?;
        calls += 1;
        cost += &generation.usage;
        let (thought, text) = thought_and_response(&generation);
        let first = first_prompt_tokens.unwrap_or(generation.usage.prompt_tokens);
        Ok(Response {
            thought: format!("{thought_so_far}{thought}"),
            text,
            usage: chained_usage(first, &cost),
            cost,
            calls,
            finish_reason: generation.finish_reason,
        })
    }
}

/// Draft, then `max_iters` rounds of feedback and refinement; the refine call sees the last
/// `max_history_length` (response, feedback) pairs, numbered from 1 within that window.
pub struct SelfRefine {
    pub max_iters: u32,
    /// 0 shows the whole history, as Python's `history[-0:]` does upstream.
    pub max_history_length: u32,
}

impl SelfRefine {
    fn history_string(&self, history: &[(String, String)]) -> String {
        let keep = match self.max_history_length as usize {
            0 => history.len(),
            n => n.min(history.len()),
        };
        let mut out = String::new();
        for (i, (response, feedback)) in history[history.len() - keep..].iter().enumerate() {
            let n = i + 1;
            out.push_str(&format!(
                "<RESPONSE_{n}>{response}</RESPONSE_{n}><FEEDBACK_{n}>{feedback}</FEEDBACK_{n}>"
            ));
        }
        out
    }
}

#[async_trait]
impl Method for SelfRefine {
    async fn respond(&self, input: &MethodInput<'_>, model: &Model) -> Result<Response, MethodError> {
        let protocol = input.protocol;
        let mut cost = Usage::default();
        let mut calls = 0;
        let mut ask = async |messages: Vec<Message>| -> Result<String, MethodError> {
            let generation = model.generate(&Request::chat(messages)).await?;
            calls += 1;
            cost += &generation.usage;
            Ok(thought_and_response(&generation).1)
        };
        let mut current = ask(generation_messages(input, true)).await?;
        let mut history: Vec<(String, String)> = Vec::new();
        for _ in 0..self.max_iters {
            let feedback = ask(vec![
                Message::system(protocol.render(
                    Template::SelfRefineFeedbackSystem,
                    &[
                        ("query", input.prompt),
                        ("specification_string", &input.rules.generation),
                    ],
                )),
                Message::user(protocol.render(Template::SelfRefineFeedbackUser, &[("response", &current)])),
            ])
            .await?;
            history.push((current, feedback));
            let history_string = self.history_string(&history);
            current = ask(vec![
                Message::system(protocol.render(Template::SelfRefineRefineSystem, &[("query", input.prompt)])),
                Message::user(protocol.render(Template::SelfRefineRefineUser, &[("history_string", &history_string)])),
            ])
            .await?;
        }
        Ok(Response {
            thought: String::new(),
            text: current,
            usage: cost,
            cost,
            calls,
            finish_reason: None,
        })
    }
}

/// Align3: reflection stages injected into the thought. Each stage's text is appended to the
/// thought so far (after the previous stage's output, trimmed, and a blank line); every stage
/// but the last stops at `</think>`, and the last runs to the answer.
pub struct Align3 {
    /// Stage numbers in running order; `[1, 2, 3]` is the paper's method.
    pub stages: Vec<u8>,
}

fn stage_template(stage: u8) -> Template {
    match stage {
        1 => Template::Align3Stage1,
        2 => Template::Align3Stage2,
        _ => Template::Align3Stage3,
    }
}

#[async_trait]
impl Method for Align3 {
    async fn respond(&self, input: &MethodInput<'_>, model: &Model) -> Result<Response, MethodError> {
        let messages = generation_messages(input, true);
        let lists = [
            ("behavioral_specifications", input.rules.behavioral_bullets.as_str()),
            ("safety_specifications", input.rules.safety_bullets.as_str()),
        ];
        let mut cost = Usage::default();
        let mut first_prompt_tokens = None;
        let mut thought_so_far = String::new();
        let last = self.stages.len().saturating_sub(1);
        for (position, stage) in self.stages.iter().enumerate() {
            let text = input.protocol.render(stage_template(*stage), &lists);
            if position == 0 {
                // Stage 1 opens the thought; an ablation starting elsewhere must open it too.
                if !text.starts_with("<think>") {
                    thought_so_far.push_str("<think>");
                }
            } else {
                thought_so_far.push_str("\n\n");
            }
            thought_so_far.push_str(&text);
            let stop = if position == last {
                Vec::new()
            } else {
                vec![END_OF_THOUGHT.to_string()]
            };
            let request = Request::prefilled(messages.clone(), thought_so_far.clone(), stop);
            let generation = model.generate(&request).await?;
            cost += &generation.usage;
            first_prompt_tokens.get_or_insert(generation.usage.prompt_tokens);
            if position == last {
                let (thought, answer) = thought_and_response(&generation);
                let first = first_prompt_tokens.unwrap_or(generation.usage.prompt_tokens);
                return Ok(Response {
                    thought: format!("{thought_so_far}{thought}"),
                    text: answer,
                    usage: chained_usage(first, &cost),
                    cost,
                    calls: self.stages.len() as u32,
                    finish_reason: generation.finish_reason,
                });
            }
            thought_so_far.push_str(rstrip(&generation.text));
        }
        Err(MethodError::NoStages)
    }
}
