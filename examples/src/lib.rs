//! The examples are the binaries in `src/bin` (`cargo run -p act-examples
//! --bin NAME`). This library holds no code: it makes the Rust snippets of
//! docs/application.md run as doctests, so the guide cannot drift from the API.

/// docs/application.md, whose snippets run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/application.md")]
pub struct ApplicationDoctests;
