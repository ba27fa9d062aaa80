//! A private PostgreSQL server for one test (see the crate docs).
