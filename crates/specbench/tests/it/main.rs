//! Integration tests of the library against loopback servers the tests start themselves.

mod batch;
mod chat_template;
mod fuzz;
mod golden;
