//! Methods that sample several responses and keep the best by a score: Best-of-N and TPO
//! (test-time preference optimization). Upstream published no code for them; these follow the
//! paper's description, with TPO's prompts written in our own words (the protocol's own texts, `tpo_*`).

use async_trait::async_trait;
use futures::future::try_join_all;
use serde::Serialize;

use super::{Method, MethodError, MethodInput, Response, generation_messages};
use crate::backend::reward::RewardModel;
use crate::backend::{Message, Model, ModelError, Request, Usage};
use crate::judge::{Judge, Judgement};
use crate::protocol::{Template, thought_and_response};
use crate::score::{Alpha, Score};

/// What ranks candidate responses.
#[derive(Clone)]
pub enum Scorer {
    /// A reward model's score of (prompt, response): a `Model` over a [`RewardModel`] backend,
    /// so scores get retries, the concurrency cap and the response cache like every call.
    RewardModel(Model),
    /// The SpecBench judge's SAR. It sees the benchmark's own verdicts, so results made with it
    /// are an oracle-scored upper bound, and are labelled so.
    Judge { judge: Judge, alpha: Alpha },
}

/// Which scorer a method uses, as recorded in results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorerKind {
    RewardModel,
    /// Oracle-scored upper bound: the benchmark's judge picks the response.
    JudgeOracle,
}

impl ScorerKind {
    pub fn name(self) -> &'static str {
        match self {
            ScorerKind::RewardModel => "reward",
            ScorerKind::JudgeOracle => "judge_oracle",
        }
    }
}

impl Scorer {
    pub fn kind(&self) -> ScorerKind {
        match self {
            Scorer::RewardModel(_) => ScorerKind::RewardModel,
            Scorer::Judge { .. } => ScorerKind::JudgeOracle,
        }
    }

    /// Higher is better. A judge reply that never parses ranks last rather than failing.
    async fn score(&self, input: &MethodInput<'_>, response: &str) -> Result<f64, MethodError> {
        match self {
            Scorer::RewardModel(model) => RewardModel::score(model, input.prompt, response)
                .await
                .map_err(|error| MethodError::Scorer(error.to_string())),
            Scorer::Judge { judge, alpha } => match judge.judge(input.item, input.rules, response).await {
                Ok(Judgement::Judged(judged)) => Ok(Score::of(&judged.verdicts, *alpha).sar),
                Ok(Judgement::Failed(_)) => Ok(f64::NEG_INFINITY),
                Err(error) => Err(MethodError::Model(error)),
            },
        }
    }
}

/// A candidate response and its score.
struct Candidate {
    thought: String,
    text: String,
    score: f64,
}

/// Samples `count` responses to `messages` at once and scores each.
async fn sample(
    input: &MethodInput<'_>,
    model: &Model,
    scorer: &Scorer,
    messages: &[Message],
    count: u32,
    cost: &mut Usage,
) -> Result<Vec<Candidate>, MethodError> {
    let requests: Vec<Request> = (0..count)
        .map(|sample| Request {
            sample,
            ..Request::chat(messages.to_vec())
        })
        .collect();
    let generations = try_join_all(requests.iter().map(|request| model.generate(request))).await?;
    let mut candidates = Vec::with_capacity(generations.len());
    for generation in generations {
        *cost += &generation.usage;
        let (thought, text) = thought_and_response(&generation);
        let score = scorer.score(input, &text).await?;
        candidates.push(Candidate { thought, text, score });
    }
    Ok(candidates)
}

fn best(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().max_by(|a, b| a.score.total_cmp(&b.score))
}

fn worst(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().min_by(|a, b| a.score.total_cmp(&b.score))
}

fn chosen(candidates: Vec<Candidate>, cost: Usage, calls: u32) -> Result<Response, MethodError> {
    let winner = candidates
        .into_iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .ok_or(MethodError::NoCandidates)?;
    Ok(Response {
        thought: winner.thought,
        text: winner.text,
        usage: cost,
        cost,
        calls,
        finish_reason: None,
    })
}

/// Best-of-N: N vanilla samples, the best-scored one kept.
pub struct BestOfN {
    pub n: u32,
    pub scorer: Scorer,
}

#[async_trait]
impl Method for BestOfN {
    async fn respond(&self, input: &MethodInput<'_>, model: &Model) -> Result<Response, MethodError> {
        let mut cost = Usage::default();
        let candidates = sample(
            input,
            model,
            &self.scorer,
            &generation_messages(input, true),
            self.n,
            &mut cost,
        )
        .await?;
        chosen(candidates, cost, self.n)
    }
}

/// TPO: sample, then per iteration take the best and worst candidates, ask for a textual loss
/// (why the best is better, where it falls short), turn it into a textual gradient (concrete
/// changes), and sample revisions of the best that apply them; the best candidate of all wins.
pub struct Tpo {
    pub samples: u32,
    pub iterations: u32,
    pub scorer: Scorer,
}

async fn ask(input: &MethodInput<'_>, model: &Model, user: String, cost: &mut Usage) -> Result<String, ModelError> {
    let request = Request::chat(vec![
        Message::system(input.protocol.text(Template::TpoSystem)),
        Message::user(user),
    ]);
    let generation = model.generate(&request).await?;
    *cost += &generation.usage;
    Ok(thought_and_response(&generation).1)
}

#[async_trait]
impl Method for Tpo {
    async fn respond(&self, input: &MethodInput<'_>, model: &Model) -> Result<Response, MethodError> {
        let mut cost = Usage::default();
        let base = generation_messages(input, true);
        let mut pool = sample(input, model, &self.scorer, &base, self.samples, &mut cost).await?;
        let mut calls = self.samples;
        let rules = input.rules.generation.as_str();
        for _ in 0..self.iterations {
            let (Some(top), Some(bottom)) = (best(&pool), worst(&pool)) else {
                return Err(MethodError::NoCandidates);
            };
            let (top, bottom) = (top.text.clone(), bottom.text.clone());
            let loss = ask(
                input,
                model,
                input.protocol.render(
                    Template::TpoLoss,
                    &[
                        ("query", input.prompt),
                        ("specification_string", rules),
                        ("chosen", &top),
                        ("rejected", &bottom),
                    ],
                ),
                &mut cost,
            )
            .await?;
            let gradient = ask(
                input,
                model,
                input.protocol.render(
                    Template::TpoGradient,
                    &[
                        ("query", input.prompt),
                        ("specification_string", rules),
                        ("chosen", &top),
                        ("loss", &loss),
                    ],
                ),
                &mut cost,
            )
            .await?;
            let update = input.protocol.render(
                Template::TpoUpdate,
                &[
                    ("prompt", input.prompt),
                    ("specification_string", rules),
                    ("chosen", &top),
                    ("suggestions", &gradient),
                ],
            );
            let mut revise = base.clone();
            if let Some(user) = revise.last_mut() {
                user.content = update;
            }
            let revised = sample(input, model, &self.scorer, &revise, self.samples, &mut cost).await?;
            calls += 2 + self.samples;
            pool.extend(revised);
        }
        chosen(pool, cost, calls)
    }
}
