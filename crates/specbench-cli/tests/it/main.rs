//! Integration tests: the real `specbench` binary against loopback servers the tests start.

mod bad_input;
mod run;
mod support;
