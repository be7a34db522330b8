//! The decoding thread: owns the model and its context (llama.cpp contexts are not shareable
//! across threads), admits requests as KV-cache slots free up, and decodes all of them together.
//!
//! Two things keep it from reading tokens one by one or twice:
//! - **Shared prefixes are read once.** A sequence's KV cache is kept when its request ends. A
//!   new request whose prompt starts with tokens a sequence holds reads only the rest: from that
//!   sequence itself when it is free, or from a copy (llama.cpp's sequence copy) when it is still
//!   running; when the running one is still reading that prefix, the new one waits for it. The
//!   joint judge prompts of a scenario share their instructions and rule list, and each Align3
//!   stage or MoreThink round extends the previous call's text, so most of their prompts are
//!   read once. Reused entries hold the same tokens at the same positions, so the reply at
//!   temperature 0 is the one a fresh read gives (a test checks it).
//! - **Forced text is read, not decoded.** In a constrained judge reply, the bytes the grammar
//!   forces (line numbers, the rest of a tag, section tags) go into the next batch at once, as a
//!   prompt would, instead of taking one decode step per token.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};

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
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};

use crate::{LocalOptions, Sampling};

/// One request for the worker.
pub(crate) struct Job {
    pub prompt: String,
    /// The reply format's grammar (llguidance's Lark dialect).
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

/// Running totals of the worker's tokens, read by benchmarks and summaries.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens actually read; the rest came from kept or copied KV caches.
    pub evaluated_prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Completion tokens the reply grammar forced and that were read in batches.
    pub forced_tokens: AtomicU64,
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
    pub fn start(path: &Path, options: LocalOptions, counters: Arc<Counters>) -> Result<(Worker, Facts), String> {
        let (jobs, incoming) = std::sync::mpsc::channel::<Job>();
        let (ready, is_ready) = std::sync::mpsc::channel::<Result<Facts, String>>();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("specbench-local".into())
            .spawn(move || serve(path, options, incoming, ready, counters))
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

fn serve(
    path: PathBuf,
    options: LocalOptions,
    incoming: Receiver<Job>,
    ready: Sender<Result<Facts, String>>,
    counters: Arc<Counters>,
) {
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
    Scheduler::new(&model, options, counters).run(&mut context, &incoming);
}

/// How many prompt tokens a copy from another sequence must save over a free sequence's own kept
/// cache before it is worth a copy (which moves the whole of that sequence's KV buffer).
const MIN_COPY_GAIN: usize = 16;

/// A request being decoded: its KV-cache slot, the tokens still to read, its sampler.
struct Slot {
    seq: i32,
    /// The tokens in this sequence's KV cache, in position order.
    history: Vec<LlamaToken>,
    /// Tokens to read next (prompt, or a sampled token and the ones the grammar forces after
    /// it); the logits after the last one are sampled.
    pending: VecDeque<LlamaToken>,
    /// Still reading its prompt: prompt reading yields to sequences that are generating.
    reading: bool,
    /// Waiting for another sequence to read the prompt prefix they share, to copy it.
    wait: Option<Wait>,
    /// Filled by a copy this step: llama.cpp moves the data at the next decode, so it is no
    /// source for another copy until then.
    fresh: bool,
    logits_at: Option<i32>,
    sampler: LlamaSampler,
    /// The reply format's grammar.
    matcher: Option<Matcher>,
    out: Vec<u8>,
    generated: u32,
    max_tokens: u32,
    prompt_tokens: u64,
    job: Job,
}

/// A prefix another sequence holds or is reading: sequence `source`, its first `upto` tokens.
#[derive(Debug, Clone, Copy)]
struct Wait {
    source: i32,
    upto: usize,
}

/// What a free sequence's KV cache still holds, for a later request to start from.
#[derive(Debug, Default)]
struct Kept {
    tokens: Vec<LlamaToken>,
    /// When it was released (a step counter), so the least recently used is reused first.
    released: u64,
}

/// The llguidance engine over this model's vocabulary, built on the first constrained request,
/// and each reply grammar compiled once.
struct Guidance {
    factory: ParserFactory,
    compiled: HashMap<String, Matcher>,
}

impl Guidance {
    fn new(model: &LlamaModel) -> Result<Guidance, String> {
        let env = LlamaSampler::llguidance_tok_env(model);
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| format!("cannot build the grammar engine: {e}"))?;
        // The library never prints: grammar problems come back as errors.
        factory.quiet();
        Ok(Guidance {
            factory,
            compiled: HashMap::new(),
        })
    }

    fn matcher(&mut self, grammar: &str) -> Result<Matcher, String> {
        if let Some(matcher) = self.compiled.get(grammar) {
            return Ok(matcher.deep_clone());
        }
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_lark(grammar.to_string()));
        let matcher = Matcher::new(parser);
        if let Some(error) = matcher.get_error() {
            return Err(format!("invalid reply grammar: {error}"));
        }
        self.compiled.insert(grammar.to_string(), matcher.deep_clone());
        Ok(matcher)
    }
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    free: Vec<i32>,
    /// Indexed by sequence; meaningful for free sequences.
    kept: Vec<Kept>,
    slots: Vec<Slot>,
    context_per_sequence: u32,
    batch: LlamaBatch<'static>,
    prefix_reuse: bool,
    guidance: Option<Guidance>,
    counters: Arc<Counters>,
    clock: u64,
}

const BATCH_TOKENS: i32 = 2048;

/// The length of the common prefix of two token runs.
fn common_prefix<'a>(
    a: impl IntoIterator<Item = &'a LlamaToken>,
    b: impl IntoIterator<Item = &'a LlamaToken>,
) -> usize {
    a.into_iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<'m> Scheduler<'m> {
    fn new(model: &'m LlamaModel, options: LocalOptions, counters: Arc<Counters>) -> Scheduler<'m> {
        let sequences = options.sequences.max(1);
        Scheduler {
            model,
            free: (0..sequences as i32).rev().collect(),
            kept: (0..sequences).map(|_| Kept::default()).collect(),
            slots: Vec::new(),
            context_per_sequence: options.context_per_sequence,
            batch: LlamaBatch::new(BATCH_TOKENS as usize, 1),
            prefix_reuse: options.prefix_reuse,
            guidance: None,
            counters,
            clock: 0,
        }
    }

    fn run(&mut self, context: &mut LlamaContext<'_>, incoming: &Receiver<Job>) {
        loop {
            self.resolve_waits(context);
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

    /// What free sequence `seq` keeps: its tokens and when it was released.
    fn kept(&self, seq: i32) -> (&[LlamaToken], u64) {
        usize::try_from(seq)
            .ok()
            .and_then(|s| self.kept.get(s))
            .map_or((&[], 0), |kept| (kept.tokens.as_slice(), kept.released))
    }

    fn set_kept(&mut self, seq: i32, tokens: Vec<LlamaToken>) {
        self.clock += 1;
        let released = self.clock;
        if let Some(kept) = usize::try_from(seq).ok().and_then(|s| self.kept.get_mut(s)) {
            *kept = Kept { tokens, released };
        }
    }

    fn admit(&mut self, context: &mut LlamaContext<'_>, job: Job) {
        let tokens = self.model.vocab().tokenize(job.prompt.as_bytes(), true, true);
        let room = self.context_per_sequence as usize;
        if tokens.is_empty() || tokens.len() + 1 >= room {
            let _ = job.reply.send(Err(format!(
                "the prompt has {} tokens; the local model's context per sequence is {room} (raise --local-context)",
                tokens.len()
            )));
            return;
        }
        let matcher = match &job.grammar {
            Some(grammar) => {
                if self.guidance.is_none() {
                    match Guidance::new(self.model) {
                        Ok(guidance) => self.guidance = Some(guidance),
                        Err(error) => {
                            let _ = job.reply.send(Err(error));
                            return;
                        }
                    }
                }
                match self.guidance.as_mut().map(|g| g.matcher(grammar)) {
                    Some(Ok(matcher)) => Some(matcher),
                    Some(Err(error)) => {
                        let _ = job.reply.send(Err(error));
                        return;
                    }
                    None => None,
                }
            }
            None => None,
        };
        // At least the last prompt token is read, for the logits of the first reply token.
        let reusable = if self.prefix_reuse { tokens.len() - 1 } else { 0 };

        // Each free sequence: (its index in `free`, how much of the prompt its kept cache
        // starts, when it was released).
        let candidates: Vec<(usize, usize, u64)> = self
            .free
            .iter()
            .enumerate()
            .map(|(index, &seq)| {
                let (kept, released) = self.kept(seq);
                (index, common_prefix(kept, &tokens).min(reusable), released)
            })
            .collect();
        // The one that starts the prompt best; the least recently used among equals.
        let Some((free_index, own)) = candidates
            .iter()
            .max_by_key(|&&(_, common, released)| (common, std::cmp::Reverse(released)))
            .map(|&(index, common, _)| (index, common))
        else {
            let _ = job.reply.send(Err("no free sequence".into()));
            return;
        };
        // A running sequence that holds (or is reading) a longer prefix.
        let source = self
            .slots
            .iter()
            .filter(|slot| slot.wait.is_none() && !slot.fresh)
            .map(|slot| {
                let common = common_prefix(slot.history.iter().chain(slot.pending.iter()), &tokens).min(reusable);
                (slot.seq, common, slot.history.len())
            })
            .max_by_key(|&(_, common, _)| common)
            .filter(|&(_, common, _)| common >= own + MIN_COPY_GAIN);

        let mut slot_wait = None;
        let mut fresh = false;
        let (seq, start) = match source {
            Some((source, upto, ready)) => {
                // Copy into the least useful free sequence.
                let Some(index) = candidates
                    .iter()
                    .min_by_key(|&&(_, common, released)| (common, released))
                    .map(|&(index, _, _)| index)
                else {
                    let _ = job.reply.send(Err("no free sequence".into()));
                    return;
                };
                let seq = self.free.swap_remove(index);
                self.set_kept(seq, Vec::new());
                if upto <= ready {
                    copy_prefix(context, source, seq, upto);
                    fresh = true;
                    (seq, upto)
                } else {
                    let _ = context.clear_kv_cache_seq(u32::try_from(seq).ok(), None, None);
                    slot_wait = Some(Wait { source, upto });
                    (seq, 0)
                }
            }
            None => {
                let seq = self.free.swap_remove(free_index);
                let seq_id = u32::try_from(seq).ok();
                if own == 0 {
                    let _ = context.clear_kv_cache_seq(seq_id, None, None);
                } else {
                    let _ = context.clear_kv_cache_seq(seq_id, u32::try_from(own).ok(), None);
                }
                self.set_kept(seq, Vec::new());
                (seq, own)
            }
        };
        let sampler = sampler(&job);
        let max_tokens = job.sampling.max_tokens.min((room - tokens.len()) as u32);
        let prompt_tokens = tokens.len() as u64;
        self.counters.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
        // A waiting request is counted as if its copy succeeds; `resolve_waits` adds the prefix
        // back when it does not.
        let read_from = slot_wait.map_or(start, |wait| wait.upto);
        self.counters
            .evaluated_prompt_tokens
            .fetch_add(prompt_tokens - read_from as u64, Ordering::Relaxed);
        let mut pending: VecDeque<LlamaToken> = tokens.into();
        let history: Vec<LlamaToken> = pending.drain(..start).collect();
        self.slots.push(Slot {
            seq,
            history,
            pending,
            reading: true,
            wait: slot_wait,
            fresh,
            logits_at: None,
            sampler,
            matcher,
            out: Vec::new(),
            generated: 0,
            max_tokens,
            prompt_tokens,
            job,
        });
    }

    /// Sequences waiting for a prefix: copy it once the source has read it; start from scratch
    /// when the source is gone.
    fn resolve_waits(&mut self, context: &mut LlamaContext<'_>) {
        for index in 0..self.slots.len() {
            let Some(wait) = self.slots[index].wait else {
                continue;
            };
            let running = self.slots.iter().find(|s| s.seq == wait.source && s.wait.is_none());
            let ready = match running {
                Some(source) if source.fresh => continue,
                Some(source) if source.history.len() >= wait.upto => true,
                Some(_) => continue,
                // Released: its kept cache holds the prefix unless it ended early.
                None => {
                    self.free.contains(&wait.source)
                        && common_prefix(self.kept(wait.source).0, &self.slots[index].pending) >= wait.upto
                }
            };
            let slot = &mut self.slots[index];
            slot.wait = None;
            if ready {
                copy_prefix(context, wait.source, slot.seq, wait.upto);
                slot.fresh = true;
                slot.history = slot.pending.drain(..wait.upto).collect();
            } else {
                // Nothing to copy after all: it reads the whole prompt.
                self.counters
                    .evaluated_prompt_tokens
                    .fetch_add(wait.upto as u64, Ordering::Relaxed);
            }
        }
    }

    /// One decode: the sampled (and forced) tokens of every generating sequence, then prompt
    /// tokens while room lasts.
    fn step(&mut self, context: &mut LlamaContext<'_>) {
        let wants: Vec<Want> = self
            .slots
            .iter()
            .map(|slot| Want {
                seq: slot.seq,
                reading: slot.reading,
                ready: slot.wait.is_none(),
                pending: slot.pending.len(),
            })
            .collect();
        let plan = batch_plan(&wants, BATCH_TOKENS as usize);
        self.batch.clear();
        for (index, take) in plan {
            let slot = &mut self.slots[index];
            for _ in 0..take {
                let Some(token) = slot.pending.pop_front() else {
                    break;
                };
                let last = slot.pending.is_empty();
                let at = self.batch.n_tokens();
                let position = slot.history.len() as i32;
                if self.batch.add(token, position, &[slot.seq], last).is_err() {
                    slot.pending.push_front(token);
                    break;
                }
                if last {
                    slot.logits_at = Some(at);
                }
                slot.history.push(token);
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(error) = context.decode(&mut self.batch) {
            // The context cannot go on with these sequences: fail them, keep serving others.
            let message = format!("llama.cpp could not decode: {error}");
            for slot in std::mem::take(&mut self.slots) {
                self.release(context, slot, Err(message.clone()), false);
            }
            return;
        }
        for slot in &mut self.slots {
            slot.fresh = false;
        }
        let vocab = self.model.vocab();
        let mut finished: Vec<(usize, Result<&'static str, String>)> = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(at) = slot.logits_at.take() else {
                continue;
            };
            slot.reading = false;
            let token = match slot.sample(self.model, context, at) {
                Ok(token) => token,
                Err(error) => {
                    finished.push((index, Err(error)));
                    continue;
                }
            };
            if vocab.is_eog(token) && !slot.job.sampling.ignore_eos {
                finished.push((index, Ok("stop")));
                continue;
            }
            let before = slot.out.len();
            vocab.token_to_piece_into(token, &mut slot.out, false, None);
            slot.generated += 1;
            slot.pending.push_back(token);
            let forced = slot.forced(self.model);
            for &token in &forced {
                vocab.token_to_piece_into(token, &mut slot.out, false, None);
            }
            slot.generated += forced.len() as u32;
            self.counters
                .forced_tokens
                .fetch_add(forced.len() as u64, Ordering::Relaxed);
            slot.pending.extend(forced);
            if let Some(cut) = stop_at(&slot.out, before, &slot.job.stops) {
                slot.out.truncate(cut);
                finished.push((index, Ok("stop")));
            } else if slot.matcher.as_ref().is_some_and(Matcher::is_stopped) {
                // The reply format is complete: nothing else may follow.
                finished.push((index, Ok("stop")));
            } else if slot.generated >= slot.max_tokens {
                finished.push((index, Ok("length")));
            }
        }
        for (index, outcome) in finished.into_iter().rev() {
            let slot = self.slots.swap_remove(index);
            let result = outcome.map(|reason| Done {
                text: String::from_utf8_lossy(&slot.out).into_owned(),
                prompt_tokens: slot.prompt_tokens,
                completion_tokens: u64::from(slot.generated),
                finish_reason: reason,
            });
            self.counters
                .completion_tokens
                .fetch_add(u64::from(slot.generated), Ordering::Relaxed);
            self.release(context, slot, result, true);
        }
    }

    /// Frees the slot's sequence; its KV cache is kept for a later prompt with the same start
    /// when `keep` (the tokens read so far are exactly what the cache holds).
    fn release(&mut self, context: &mut LlamaContext<'_>, slot: Slot, result: Result<Done, String>, keep: bool) {
        if keep && self.prefix_reuse && slot.wait.is_none() {
            self.set_kept(slot.seq, slot.history);
        } else {
            let _ = context.clear_kv_cache_seq(u32::try_from(slot.seq).ok(), None, None);
            self.set_kept(slot.seq, Vec::new());
        }
        self.free.push(slot.seq);
        let _ = slot.job.reply.send(result);
    }
}

/// What a slot could read this step.
#[derive(Debug, Clone, Copy)]
struct Want {
    seq: i32,
    /// Still reading its prompt (it yields to generating sequences).
    reading: bool,
    /// Not waiting for another sequence's prefix.
    ready: bool,
    pending: usize,
}

/// Which slots read how many tokens this step, in the order they go into the batch. Generating
/// sequences get room first, then prompts, up to `room` tokens in all. The batch is in sequence
/// order: llama.cpp splits a batch over separate KV streams into one graph per run of
/// consecutive sequence ids, so sequences added in any other order are decoded one graph each
/// instead of together (at 8 sequences that halved decoding throughput).
fn batch_plan(wants: &[Want], room: usize) -> Vec<(usize, usize)> {
    let mut take = vec![0usize; wants.len()];
    let mut room = room;
    for reading in [false, true] {
        for (index, want) in wants.iter().enumerate() {
            if want.reading == reading && want.ready {
                take[index] = want.pending.min(room);
                room -= take[index];
            }
        }
    }
    let mut plan: Vec<(usize, usize)> = take.into_iter().enumerate().filter(|&(_, take)| take > 0).collect();
    plan.sort_by_key(|&(index, _)| wants[index].seq);
    plan
}

/// Makes sequence `to` hold the first `upto` tokens of sequence `from`. Sequences live in
/// separate KV streams, and llama.cpp copies between streams only whole (at the next decode),
/// so the copy is cut back to the prefix afterwards.
fn copy_prefix(context: &mut LlamaContext<'_>, from: i32, to: i32, upto: usize) {
    let to_id = u32::try_from(to).ok();
    let _ = context.clear_kv_cache_seq(to_id, None, None);
    let _ = context.copy_kv_cache_seq(from, to, None, None);
    let _ = context.clear_kv_cache_seq(to_id, u32::try_from(upto).ok(), None);
}

impl Slot {
    /// The next token. Without a grammar, the chain samples and accepts it. With one, as
    /// llama.cpp's own sampler does: sample without the grammar and check that one token
    /// against it; only when it is rejected mask the whole vocabulary and sample again.
    fn sample(&mut self, model: &LlamaModel, context: &LlamaContext<'_>, at: i32) -> Result<LlamaToken, String> {
        let Some(matcher) = self.matcher.as_mut() else {
            return Ok(self.sampler.sample(context, at));
        };
        let mut candidates = context.token_data_array_ith(at);
        self.sampler.apply(&mut candidates);
        let allowed = |matcher: &mut Matcher, token: LlamaToken| {
            u32::try_from(token.0)
                .ok()
                .is_some_and(|id| matcher.validate_tokens(&[id]).is_ok_and(|n| n == 1))
        };
        let token = match candidates.selected_token() {
            Some(token) if allowed(matcher, token) => token,
            _ => {
                let mask = matcher
                    .compute_mask_or_eos()
                    .map_err(|e| format!("the reply grammar failed: {e}"))?;
                let mut candidates = context.token_data_array_ith(at);
                for data in &mut candidates.data {
                    if !u32::try_from(data.id().0).is_ok_and(|id| mask.is_allowed(id)) {
                        data.set_logit(f32::NEG_INFINITY);
                    }
                }
                self.sampler.apply(&mut candidates);
                candidates
                    .selected_token()
                    .filter(|&token| mask.is_allowed(u32::try_from(token.0).unwrap_or(u32::MAX)))
                    .or_else(|| best_allowed(&candidates))
                    .ok_or_else(|| "the reply grammar allows no token".to_string())?
            }
        };
        if !self.job.sampling.ignore_eos && model.vocab().is_eog(token) {
            self.sampler.accept(token);
            return Ok(token);
        }
        u32::try_from(token.0)
            .ok()
            .and_then(|id| matcher.consume_token(id).ok())
            .ok_or_else(|| "the reply grammar rejected the sampled token".to_string())?;
        self.sampler.accept(token);
        Ok(token)
    }

    /// The tokens the grammar forces next (line numbers, the rest of a tag), consumed by the
    /// grammar: they are read in one batch like a prompt instead of one decode step each. The
    /// last forced token is left to the model unless the reply ends with it, since the text
    /// after it may start in the same token (`". "` then `"The"` is also `". The"`).
    fn forced(&mut self, model: &LlamaModel) -> Vec<LlamaToken> {
        let Some(matcher) = self.matcher.as_mut() else {
            return Vec::new();
        };
        if matcher.is_stopped() {
            return Vec::new();
        }
        let bytes = matcher.compute_ff_bytes();
        if bytes.is_empty() {
            return Vec::new();
        }
        let mut tokens = model.vocab().tokenize(&bytes, false, false);
        let ids: Vec<u32> = tokens.iter().filter_map(|t| u32::try_from(t.0).ok()).collect();
        let consumed = matcher.try_consume_tokens(&ids).unwrap_or(0);
        tokens.truncate(consumed);
        if !matcher.is_stopped() && !tokens.is_empty() && matcher.rollback(1).is_ok() {
            tokens.pop();
        }
        let room = self.max_tokens.saturating_sub(self.generated) as usize;
        if tokens.len() > room {
            let extra = tokens.len() - room;
            if matcher.rollback(extra).is_ok() {
                tokens.truncate(room);
            }
        }
        tokens
    }
}

/// The best candidate the grammar left, if the chain selected none.
fn best_allowed(candidates: &LlamaTokenDataArray) -> Option<LlamaToken> {
    candidates
        .data
        .iter()
        .filter(|d| d.logit().is_finite())
        .max_by(|a, b| a.logit().total_cmp(&b.logit()))
        .map(LlamaTokenData::id)
}

/// The sampler chain of one sequence (its decoding settings; temperature 0 is greedy).
fn sampler(job: &Job) -> LlamaSampler {
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
    LlamaSampler::chain_simple(chain)
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
    use super::{Want, batch_plan, stop_at};

    fn want(seq: i32, reading: bool, pending: usize) -> Want {
        Want {
            seq,
            reading,
            ready: true,
            pending,
        }
    }

    #[test]
    fn batch_is_in_sequence_order_with_generating_sequences_first_for_room() {
        // Slots in admission order; seq 1 reads a long prompt, seq 5 waits for a prefix.
        let mut wants = vec![
            want(3, false, 1),
            want(1, true, 100),
            want(0, false, 2),
            want(2, false, 1),
        ];
        wants.push(Want {
            seq: 5,
            ready: false,
            ..want(5, true, 40)
        });
        // Room for 10: the three generating sequences first (4 tokens), the prompt gets 6.
        assert_eq!(batch_plan(&wants, 10), vec![(2, 2), (1, 6), (3, 1), (0, 1)]);
        let seqs: Vec<i32> = batch_plan(&wants, 2048).iter().map(|&(i, _)| wants[i].seq).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3]);
        // No room left for prompts: they wait, the generating sequences still go in order.
        assert_eq!(batch_plan(&wants, 4), vec![(2, 2), (3, 1), (0, 1)]);
    }

    #[test]
    fn stops_are_found_across_pieces() {
        let stops = vec!["</think>".to_string()];
        let out = b"thinking</thi".to_vec();
        assert_eq!(stop_at(&out, 8, &stops), None);
        let out = b"thinking</think> more".to_vec();
        assert_eq!(stop_at(&out, 13, &stops), Some(8));
    }
}
