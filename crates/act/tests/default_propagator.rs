//! The process-wide default trace propagator: every application built after
//! it is set uses it, unless its builder names its own. Its own binary: the
//! default is set once per process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use act::trace::{self, Derived, TraceContext, TracePropagator};
use act::{Act, MemoryStore, Store};

/// Counts its calls; has no tracer.
#[derive(Default)]
struct Counting(AtomicUsize);

impl TracePropagator for Counting {
    fn inject(&self) -> Option<TraceContext> {
        self.0.fetch_add(1, Ordering::Relaxed);
        None
    }
    fn extract(&self, _: &TraceContext, _: &tracing::Span) {}
}

fn store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

#[test]
fn the_default_propagator_is_used_unless_the_builder_names_one() {
    let before = Act::builder(store()).build().unwrap();
    let default: Arc<dyn TracePropagator> = Arc::new(Counting::default());
    assert!(trace::set_default_propagator(default.clone()));
    assert!(
        !trace::set_default_propagator(Arc::new(Derived)),
        "a second default is refused"
    );

    let after = Act::builder(store()).build().unwrap();
    assert!(Arc::ptr_eq(after.trace_propagator(), &default));
    assert!(Arc::ptr_eq(&trace::default_propagator(), &default));
    assert!(
        !Arc::ptr_eq(before.trace_propagator(), &default),
        "an application built before keeps its propagator"
    );

    let own: Arc<dyn TracePropagator> = Arc::new(Derived);
    let explicit = Act::builder(store())
        .trace_propagator(own.clone())
        .build()
        .unwrap();
    assert!(Arc::ptr_eq(explicit.trace_propagator(), &own));
}
