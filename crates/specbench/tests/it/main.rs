//! Integration tests of the library against loopback servers the tests start themselves.

mod golden;
mod support;
