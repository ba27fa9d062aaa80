//! The whole conformance kit on PostgreSQL, each test in its own schema.

mod common;

act::tck_suite!(common::Postgres);
