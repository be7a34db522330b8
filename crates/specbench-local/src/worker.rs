//! The decoding thread: owns the model and its context (llama.cpp contexts are not shareable
//! across threads), admits requests as KV-cache slots free up, and decodes all of them together.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;

use crate::{LocalOptions, Sampling};

/// One request for the worker.
pub(crate) struct Job {
    pub prompt: String,
    pub grammar: Option<String>,
    pub stops: Vec<String>,
    pub sampling: Sampling,
    pub reply: tokio::sync::oneshot::Sender<Result<Done, String>>,
}

/// A finished request.
pub(crate) struct Done {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub finish_reason: &'static str,
}

/// What the GGUF says about its prompt format.
pub(crate) struct Facts {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

pub(crate) struct Worker {
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// llama.cpp may be initialised once per process; every model shares it.
fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Worker {
    pub fn start(path: &Path, options: LocalOptions) -> Result<(Worker, Facts), String> {
        let (jobs, incoming) = std::sync::mpsc::channel::<Job>();
        let (ready, is_ready) = std::sync::mpsc::channel::<Result<Facts, String>>();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("specbench-local".into())
            .spawn(move || serve(path, options, incoming, ready))
            .map_err(|e| format!("cannot start the decoding thread: {e}"))?;
        let facts = is_ready
            .recv()
            .map_err(|_| "the decoding thread stopped while loading".to_string())??;
        Ok((
            Worker {
                jobs: Mutex::new(Some(jobs)),
                thread: Mutex::new(Some(thread)),
            },
            facts,
        ))
    }

    pub fn submit(&self, job: Job) -> Result<(), String> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        match jobs.as_ref() {
            Some(sender) => sender
                .send(job)
                .map_err(|_| "the local model's worker stopped".to_string()),
            None => Err("the local model was shut down".into()),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the loop once the requests in flight are answered.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn token_text(model: &LlamaModel, token: LlamaToken) -> Option<String> {
    let bytes = model.vocab().token_to_piece(token, true, None);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (!text.is_empty()).then_some(text)
}

fn serve(path: PathBuf, options: LocalOptions, incoming: Receiver<Job>, ready: Sender<Result<Facts, String>>) {
    let loaded = (|| {
        let backend = backend()?;
        let model =
            LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default()).map_err(|e| e.to_string())?;
        let sequences = options.sequences.max(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(sequences * options.context_per_sequence))
            .with_n_batch(2048)
            .with_n_ubatch(512)
            .with_n_seq_max(sequences)
            .with_n_threads(options.threads)
            .with_n_threads_batch(options.threads);
        Ok::<_, String>((backend, model, params))
    })();
    let (backend, model, params) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let vocab = model.vocab();
    let facts = Facts {
        chat_template: model.meta_val_str("tokenizer.chat_template").ok(),
        bos_token: token_text(&model, vocab.bos()),
        eos_token: token_text(&model, vocab.eos()),
    };
    let mut context = match model.new_context(backend, params) {
        Ok(context) => context,
        Err(error) => {
            let _ = ready.send(Err(error.to_string()));
            return;
        }
    };
    if ready.send(Ok(facts)).is_err() {
        return;
    }
    Scheduler::new(&model, options).run(&mut context, &incoming);
}

/// A request being decoded: its KV-cache slot, the tokens still to read, its sampler.
struct Slot {
    seq: i32,
    position: i32,
    pending: VecDeque<LlamaToken>,
    last: Option<LlamaToken>,
    logits_at: Option<i32>,
    sampler: LlamaSampler,
    /// The reply format's grammar, kept apart from `sampler` (see [`Slot::sample`]).
    grammar: Option<LlamaSampler>,
    out: Vec<u8>,
    generated: u32,
    max_tokens: u32,
    prompt_tokens: u64,
    job: Job,
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    free: Vec<i32>,
    slots: Vec<Slot>,
    context_per_sequence: u32,
    batch: LlamaBatch<'static>,
}

const BATCH_TOKENS: i32 = 2048;

impl<'m> Scheduler<'m> {
    fn new(model: &'m LlamaModel, options: LocalOptions) -> Scheduler<'m> {
        Scheduler {
            model,
            free: (0..options.sequences.max(1) as i32).rev().collect(),
            slots: Vec::new(),
            context_per_sequence: options.context_per_sequence,
            batch: LlamaBatch::new(BATCH_TOKENS as usize, 1),
        }
    }

    fn run(&mut self, context: &mut LlamaContext<'_>, incoming: &Receiver<Job>) {
        loop {
            // Admit: wait when idle, take what is queued when busy.
            while !self.free.is_empty() {
                let job = if self.slots.is_empty() {
                    match incoming.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                } else {
                    match incoming.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) if self.slots.is_empty() => return,
                        Err(TryRecvError::Disconnected) => break,
                    }
                };
                self.admit(context, job);
            }
            if self.slots.is_empty() {
                continue;
            }
            self.step(context);
        }
    }

    fn admit(&mut self, context: &mut LlamaContext<'_>, job: Job) {
        let tokens = self.model.vocab().tokenize(job.prompt.as_bytes(), true, true);
        let room = self.context_per_sequence as usize;
        if tokens.len() + 1 >= room {
            let _ = job.reply.send(Err(format!(
                "the prompt has {} tokens; the local model's context per sequence is {room} (raise --local-context)",
                tokens.len()
            )));
            return;
        }
        let (sampler, grammar) = match sampler(self.model, &job) {
            Ok(samplers) => samplers,
            Err(error) => {
                let _ = job.reply.send(Err(error));
                return;
            }
        };
        let Some(seq) = self.free.pop() else {
            let _ = job.reply.send(Err("no free sequence".into()));
            return;
        };
        let _ = context.clear_kv_cache_seq(Some(seq as u32), None, None);
        let max_tokens = job.sampling.max_tokens.min((room - tokens.len()) as u32);
        self.slots.push(Slot {
            seq,
            position: 0,
            prompt_tokens: tokens.len() as u64,
            pending: tokens.into(),
            last: None,
            logits_at: None,
            sampler,
            grammar,
            out: Vec::new(),
            generated: 0,
            max_tokens,
            job,
        });
    }

    /// One decode: a token of every generating sequence, then prompt tokens while room lasts.
    fn step(&mut self, context: &mut LlamaContext<'_>) {
        self.batch.clear();
        for slot in self.slots.iter_mut().filter(|s| s.pending.is_empty()) {
            if let Some(token) = slot.last {
                slot.logits_at = Some(self.batch.n_tokens());
                if self.batch.add(token, slot.position, &[slot.seq], true).is_ok() {
                    slot.position += 1;
                }
            }
        }
        for slot in self.slots.iter_mut().filter(|s| !s.pending.is_empty()) {
            while self.batch.n_tokens() < BATCH_TOKENS {
                let Some(token) = slot.pending.pop_front() else {
                    break;
                };
                let last = slot.pending.is_empty();
                if last {
                    slot.logits_at = Some(self.batch.n_tokens());
                }
                if self.batch.add(token, slot.position, &[slot.seq], last).is_err() {
                    slot.pending.push_front(token);
                    break;
                }
                slot.position += 1;
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(error) = context.decode(&mut self.batch) {
            // The context cannot go on with these sequences: fail them, keep serving others.
            let message = format!("llama.cpp could not decode: {error}");
            for slot in std::mem::take(&mut self.slots) {
                self.release(context, slot, Err(message.clone()));
            }
            return;
        }
        let vocab = self.model.vocab();
        let mut finished: Vec<(usize, &'static str)> = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(at) = slot.logits_at.take() else {
                continue;
            };
            let token = slot.sample(context, at);
            if vocab.is_eog(token) && !slot.job.sampling.ignore_eos {
                finished.push((index, "stop"));
                continue;
            }
            let before = slot.out.len();
            vocab.token_to_piece_into(token, &mut slot.out, false, None);
            slot.generated += 1;
            slot.last = Some(token);
            if let Some(cut) = stop_at(&slot.out, before, &slot.job.stops) {
                slot.out.truncate(cut);
                finished.push((index, "stop"));
            } else if slot.generated >= slot.max_tokens {
                finished.push((index, "length"));
            }
        }
        for (index, reason) in finished.into_iter().rev() {
            let slot = self.slots.swap_remove(index);
            let done = Done {
                text: String::from_utf8_lossy(&slot.out).into_owned(),
                prompt_tokens: slot.prompt_tokens,
                completion_tokens: u64::from(slot.generated),
                finish_reason: reason,
            };
            self.release(context, slot, Ok(done));
        }
    }

    fn release(&mut self, context: &mut LlamaContext<'_>, slot: Slot, result: Result<Done, String>) {
        let _ = context.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
        self.free.push(slot.seq);
        let _ = slot.job.reply.send(result);
    }
}

impl Slot {
    /// The next token. Without a grammar, the chain samples and accepts it. With one, as
    /// llama.cpp's own sampler does: sample without the grammar, check that one token against
    /// it, and only when it is rejected run the grammar over the whole vocabulary and sample
    /// again. Checking 49,152 tokens against a grammar at every step was most of the time
    /// constrained judging took.
    fn sample(&mut self, context: &LlamaContext<'_>, at: i32) -> LlamaToken {
        let Some(grammar) = self.grammar.as_mut() else {
            return self.sampler.sample(context, at);
        };
        let mut candidates = context.token_data_array_ith(at);
        self.sampler.apply(&mut candidates);
        let token = match candidates.selected_token() {
            Some(token) if allows(grammar, token) => token,
            _ => resample(context, at, grammar, &mut self.sampler),
        };
        grammar.accept(token);
        self.sampler.accept(token);
        token
    }
}

/// How many of the highest-scoring tokens the grammar is tried on before the whole vocabulary.
const SHORTLIST: usize = 64;

/// A token the grammar allows. The grammar is tried on the shortlist of highest-scoring tokens
/// first: if it allows any of them, the best one it allows is among them (exactly so for greedy
/// decoding), at a thousandth of the cost of the whole vocabulary, which is the fallback.
fn resample(context: &LlamaContext<'_>, at: i32, grammar: &mut LlamaSampler, chain: &mut LlamaSampler) -> LlamaToken {
    let mut all = context.token_data_array_ith(at).data;
    let keep = SHORTLIST.min(all.len());
    if keep > 0 {
        all.select_nth_unstable_by(keep - 1, |a, b| b.logit().total_cmp(&a.logit()));
        let mut shortlist = LlamaTokenDataArray::new(all[..keep].to_vec(), false);
        grammar.apply(&mut shortlist);
        if shortlist.data.iter().any(|d| d.logit().is_finite()) {
            chain.apply(&mut shortlist);
            if let Some(token) = shortlist.selected_token() {
                return token;
            }
        }
    }
    let mut candidates = context.token_data_array_ith(at);
    grammar.apply(&mut candidates);
    chain.apply(&mut candidates);
    candidates.selected_token().unwrap_or_else(|| token_or_eos(&candidates))
}

/// Whether the grammar, in its current state, allows `token` next.
fn allows(grammar: &mut LlamaSampler, token: LlamaToken) -> bool {
    let mut single = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 1.0, 0.0)], false);
    grammar.apply(&mut single);
    single.data.first().is_some_and(|d| d.logit().is_finite())
}

/// The best candidate left after the grammar, if the chain selected none.
fn token_or_eos(candidates: &LlamaTokenDataArray) -> LlamaToken {
    candidates
        .data
        .iter()
        .filter(|d| d.logit().is_finite())
        .max_by(|a, b| a.logit().total_cmp(&b.logit()))
        .map(LlamaTokenData::id)
        .unwrap_or(LlamaToken::new(0))
}

/// The sampler chain of one sequence (its decoding settings; temperature 0 is greedy) and the
/// grammar of its reply format, if any.
fn sampler(model: &LlamaModel, job: &Job) -> Result<(LlamaSampler, Option<LlamaSampler>), String> {
    let grammar = match &job.grammar {
        Some(grammar) => {
            Some(LlamaSampler::grammar(model, grammar, "root").map_err(|e| format!("invalid reply grammar: {e}"))?)
        }
        None => None,
    };
    let mut chain = Vec::new();
    let s = job.sampling;
    if s.temperature > 0.0 {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k));
        }
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        chain.push(LlamaSampler::dist(s.seed));
    } else {
        chain.push(LlamaSampler::greedy());
    }
    Ok((LlamaSampler::chain_simple(chain), grammar))
}

/// Where the output must be cut if the bytes added since `before` completed a stop string.
fn stop_at(out: &[u8], before: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|stop| !stop.is_empty())
        .filter_map(|stop| {
            let from = before.saturating_sub(stop.len());
            out[from..]
                .windows(stop.len())
                .position(|w| w == stop.as_bytes())
                .map(|at| from + at)
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::stop_at;

    #[test]
    fn stops_are_found_across_pieces() {
        let stops = vec!["</think>".to_string()];
        let out = b"thinking</thi".to_vec();
        assert_eq!(stop_at(&out, 8, &stops), None);
        let out = b"thinking</think> more".to_vec();
        assert_eq!(stop_at(&out, 13, &stops), Some(8));
    }
}
