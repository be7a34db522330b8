//! SpecBench in Rust: how well language models follow per-scenario specifications.
//!
//! Data flows one way, one module per stage:
//!
//! ```text
//! pack ──► method ──► backend ──► judge ──► score ──► store
//! (rules,   (raw,      (Model:     (joint or  (safety,   (upstream JSON
//!  items)    vanilla)   retries,    sequential behavioral, layout, journal,
//!                       HTTP)       verdicts)  SAR)       manifest)
//! ```
//!
//! [`run::Runner`] wires the stages per item; [`protocol`] holds the texts every stage shares.
//! Methods and the judge only ever see a [`backend::Model`], never a transport, and the judge
//! sees response text, never which backend or method produced it. The library prints nothing:
//! progress leaves as [`run::Event`]s, and the CLI renders them.

pub mod backend;
pub mod cache;
pub mod config;
pub mod env;
pub mod judge;
pub mod method;
pub mod pack;
pub mod protocol;
pub mod redact;
pub mod report;
pub mod run;
pub mod score;
pub mod store;
