//! A bounded cache of loaded states, by state type and stream.
//!
//! Loading a state replays its stream from the last snapshot: up to
//! `SNAPSHOT_EVERY` events decoded per action. With the cache, a load reads
//! only the stream's last event (one indexed row). When its version is the
//! cached one, the cached state is current; otherwise the state is loaded as
//! before. Optimistic concurrency is untouched: appends still name the
//! version read.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Mutex;

use crate::state::State;

struct Entry {
    state: Box<dyn Any + Send + Sync>,
    version: i64,
    since_snapshot: u64,
    used: u64,
}

/// States by (type, stream), least recently used evicted past `capacity`.
pub(crate) struct StateCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(TypeId, String), Entry>,
    tick: u64,
}

impl StateCache {
    pub(crate) fn new(capacity: usize) -> Self {
        StateCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the cached state of `stream`: (state, version, events since
    /// the last snapshot).
    pub(crate) fn get<S: State>(&self, stream: &str) -> Option<(S, i64, u64)> {
        if self.capacity == 0 {
            return None;
        }
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner
            .map
            .get_mut(&(TypeId::of::<S>(), stream.to_string()))?;
        e.used = tick;
        let state = e.state.downcast_ref::<S>()?.clone();
        Some((state, e.version, e.since_snapshot))
    }

    /// Remembers `state` of `stream` at `version`.
    pub(crate) fn put<S: State>(&self, stream: &str, state: &S, version: i64, since_snapshot: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.tick += 1;
        let used = inner.tick;
        inner.map.insert(
            (TypeId::of::<S>(), stream.to_string()),
            Entry {
                state: Box::new(state.clone()),
                version,
                since_snapshot,
                used,
            },
        );
        if inner.map.len() > self.capacity {
            // Evict the least recently used tenth in one pass.
            let mut ticks: Vec<u64> = inner.map.values().map(|e| e.used).collect();
            let cut = ticks.len() / 10;
            let (_, nth, _) = ticks.select_nth_unstable(cut);
            let nth = *nth;
            inner.map.retain(|_, e| e.used > nth);
        }
    }
}
