//! The whole conformance kit on the in-memory backend (manual clock).

act::tck_suite!(act::tck::Memory);
