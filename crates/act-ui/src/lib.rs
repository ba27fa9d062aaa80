//! Nothing here: see `tests/compile_fail.rs`.
