//! The `specbench` command. A thin edge over the library: parse flags, run, print errors,
//! choose the exit code.

// Only this crate talks to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod commands;
mod data;
mod interrupt;
mod merge;
mod progress;
mod report;
mod study;
mod view;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use commands::{ExitStatus, UsageError};
use interrupt::Interrupt;
use specbench::store::StoreError;

/// glibc gives each thread that allocates an arena of its own (up to 8 per core) and keeps
/// what was freed in it: a study's result files, written on tokio's blocking threads, left
/// about 25 MiB of resident memory in idle arenas (16 cells: 82 against 57 MiB with one arena
/// per core). One per core serves the runtime's one worker per core. `MALLOC_ARENA_MAX` set by
/// the user wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets an allocator parameter, from the one thread there is yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("specbench: error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let mut interrupt = None;
    let result = runtime.block_on(async {
        // Only the commands that send requests stop gracefully; the others end at Ctrl-C.
        let mut stop = || interrupt.insert(Interrupt::install()).stop();
        match cli.command {
            Command::Run(args) => commands::run(args, stop()).await,
            Command::Generate(args) => commands::generate(args, stop()).await,
            Command::Evaluate(args) => commands::evaluate(args, stop()).await,
            Command::Score(args) => commands::score(args),
            Command::Cache(args) => commands::cache(args),
            Command::Batch(command) => commands::batch(command).await,
            Command::Merge(args) => merge::merge(args).await,
            Command::Report(args) => report::report(args),
            Command::View(args) => view::view(args).await,
            Command::Data(args) => data::data(args),
            Command::Scenario(args) => data::scenario(args),
            Command::Study(args) => study::study(args, stop()).await,
        }
    });
    match result {
        Ok(ExitStatus::Success) => ExitCode::SUCCESS,
        Ok(ExitStatus::Incomplete) => ExitCode::from(1),
        Ok(ExitStatus::Interrupted) => ExitCode::from(interrupt.as_ref().map_or(130, |i| i.exit_code())),
        Ok(ExitStatus::OverBudget) => ExitCode::from(4),
        Err(err) => {
            // One line: the error and its causes, each naming what to fix.
            eprintln!("specbench: error: {err:#}");
            let write_failed = matches!(
                err.downcast_ref::<StoreError>(),
                Some(StoreError::Write { .. } | StoreError::Append { .. })
            );
            if write_failed {
                eprintln!("specbench: stopped; finished work is kept; run the same command again to resume");
                ExitCode::from(3)
            } else {
                if err.downcast_ref::<UsageError>().is_none() {
                    eprintln!("specbench: finished work is kept; run the same command again to resume");
                }
                ExitCode::from(2)
            }
        }
    }
}

/// Warnings, and each provider batch's submission and changes of state: a batch runs for
/// hours, and these lines are its progress.
const DEFAULT_LOG: &str = "warn,specbench::backend::batch=info";

/// Log lines go to stderr; `SPECBENCH_LOG` sets the filter (default: [`DEFAULT_LOG`]).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(specbench::env::Env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
