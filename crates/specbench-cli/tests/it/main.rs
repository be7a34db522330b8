//! Integration tests: the real `specbench` binary against loopback servers the tests start.

mod bad_input;
mod batch;
mod local;
mod methods;
mod providers;
mod reliability;
mod report;
mod run;
mod scenarios;
mod slurm;
mod stops;
mod study;
mod support;
mod viewer;
