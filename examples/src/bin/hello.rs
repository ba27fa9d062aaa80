//! Placeholder until the examples land.
fn main() {}
