//! A private Redis server for one test (see the crate docs).
