//! Renders the library's progress events: a live bar per stage on a terminal, plain lines
//! every few seconds otherwise (logs, CI).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use specbench::backend::Usage;
use specbench::run::{Event, Outcome, PLAIN_PROGRESS_EVERY, Stage};
use specbench::score::Summary;

struct StageState {
    name: String,
    total: usize,
    done: usize,
    reused: usize,
    failed: usize,
    judge_errors: usize,
    summary: Summary,
    cost: Usage,
    started: Instant,
    last_line: Instant,
    bar: Option<ProgressBar>,
}

impl StageState {
    fn message(&self) -> String {
        let problems = format!("failed {} judge errors {}", self.failed, self.judge_errors);
        if self.summary.full_dataset.sar.count > 0 {
            let full = &self.summary.full_dataset;
            format!(
                "S {:.3} B {:.3} SAR {:.3} | tok {}/{} | {problems}",
                full.safety.avg(),
                full.behavioral.avg(),
                full.sar.avg(),
                self.cost.prompt_tokens,
                self.cost.completion_tokens,
            )
        } else {
            format!(
                "tok {}/{} | {problems}",
                self.cost.prompt_tokens, self.cost.completion_tokens
            )
        }
    }

    fn plain_line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let fresh = self.done.saturating_sub(self.reused);
        let rate = if elapsed > 0.0 { fresh as f64 / elapsed } else { 0.0 };
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "-".to_string()
        };
        let percent = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        // Slow stages (a small local model) finish units per minute, not per second.
        let rate = if rate >= 1.0 {
            format!("{rate:.1}/s")
        } else {
            format!("{:.1}/min", rate * 60.0)
        };
        format!(
            "[{}] {}/{} ({percent:.0}%) {rate} eta {eta} | {}",
            self.name,
            self.done,
            self.total,
            self.message()
        )
    }
}

/// Receives events from any task; draws bars or writes lines.
pub struct Progress {
    bars: Option<MultiProgress>,
    /// Say how much earlier runs had finished (`resuming: N of M already done`).
    announce_resume: bool,
    stages: Mutex<(Vec<Stage>, HashMap<Stage, StageState>)>,
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn new(announce_resume: bool) -> Progress {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));
        Progress {
            bars,
            announce_resume,
            stages: Mutex::new((Vec::new(), HashMap::new())),
        }
    }

    pub fn handle(&self, event: Event) {
        let mut guard = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        let (order, stages) = &mut *guard;
        match event {
            Event::Planned { stage, total } => {
                let name = match &stage {
                    Stage::Generate => "generate".to_string(),
                    Stage::Judge(stem) => format!("judge {stem}"),
                };
                let bar = self.bars.as_ref().map(|bars| {
                    let bar = bars.add(ProgressBar::new(total as u64));
                    let style = ProgressStyle::with_template(
                        "{prefix:>20.bold} [{bar:28.cyan/blue}] {pos}/{len} {per_sec:>9} eta {eta:>4} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                    bar.set_style(style);
                    bar.set_prefix(name.clone());
                    bar.enable_steady_tick(Duration::from_millis(250));
                    bar
                });
                order.push(stage.clone());
                let now = Instant::now();
                stages.insert(
                    stage,
                    StageState {
                        name,
                        total,
                        done: 0,
                        reused: 0,
                        failed: 0,
                        judge_errors: 0,
                        summary: Summary::default(),
                        cost: Usage::default(),
                        started: now,
                        last_line: now,
                        bar,
                    },
                );
            }
            Event::Unit {
                stage,
                outcome,
                cost,
                score,
                ..
            } => {
                let Some(state) = stages.get_mut(&stage) else {
                    return;
                };
                state.done += 1;
                state.cost += &cost;
                match outcome {
                    Outcome::Done => {}
                    Outcome::Reused => state.reused += 1,
                    Outcome::Failed(_) => state.failed += 1,
                    Outcome::JudgeError => state.judge_errors += 1,
                }
                if let Some((label, score)) = score {
                    state.summary.add(label, &score);
                }
                match &state.bar {
                    Some(bar) => {
                        bar.set_message(state.message());
                        bar.set_position(state.done as u64);
                        if state.done >= state.total {
                            bar.finish();
                        }
                    }
                    None => {
                        let finished = state.done >= state.total;
                        if finished || state.last_line.elapsed() >= PLAIN_PROGRESS_EVERY {
                            state.last_line = Instant::now();
                            let _ = writeln!(std::io::stderr(), "{}", state.plain_line());
                        }
                    }
                }
            }
            Event::Written { scenario, dir } => {
                self.line(format!("{scenario}: results in {}", dir.display()));
            }
            Event::Resuming { done, total } => {
                if self.announce_resume {
                    self.line(format!("resuming: {done} of {total} already done"));
                }
            }
        }
    }

    /// A line above the bars, or on its own without them.
    fn line(&self, line: String) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }

    /// Stops the bars so that the summary prints below them.
    pub fn finish(&self) {
        let guard = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        for state in guard.1.values() {
            if let Some(bar) = &state.bar {
                bar.finish();
            }
        }
    }
}
