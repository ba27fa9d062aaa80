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

use foldhash::fast::RandomState;
use std::sync::Mutex;

use crate::state::State;

struct Entry {
    type_id: TypeId,
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
    /// By stream, then by type (almost always one): a lookup by `&str`
    /// allocates nothing, and an update writes over the cached state.
    /// Hashed with foldhash, randomly seeded as std's SipHash is: SipHash
    /// was more than half the instructions of a lookup.
    map: HashMap<String, Vec<Entry>, RandomState>,
    /// Entries in `map`.
    len: usize,
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
            .get_mut(stream)?
            .iter_mut()
            .find(|e| e.type_id == TypeId::of::<S>())?;
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
        let cached = inner
            .map
            .get_mut(stream)
            .and_then(|entries| entries.iter_mut().find(|e| e.type_id == TypeId::of::<S>()));
        if let Some(e) = cached {
            if let Some(cached) = e.state.downcast_mut::<S>() {
                cached.clone_from(state);
                e.version = version;
                e.since_snapshot = since_snapshot;
                e.used = used;
                return;
            }
        }
        let entry = Entry {
            type_id: TypeId::of::<S>(),
            state: Box::new(state.clone()),
            version,
            since_snapshot,
            used,
        };
        match inner.map.get_mut(stream) {
            Some(entries) => entries.push(entry),
            None => {
                inner.map.insert(stream.to_string(), vec![entry]);
            }
        }
        inner.len += 1;
        if inner.len > self.capacity {
            // Evict the least recently used tenth in one pass.
            let mut ticks: Vec<u64> = inner.map.values().flatten().map(|e| e.used).collect();
            let cut = ticks.len() / 10;
            let (_, nth, _) = ticks.select_nth_unstable(cut);
            let nth = *nth;
            inner.map.retain(|_, entries| {
                entries.retain(|e| e.used > nth);
                !entries.is_empty()
            });
            inner.len = inner.map.values().map(Vec::len).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    struct A(u32);
    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    struct B(String);

    macro_rules! state {
        ($t:ty) => {
            impl State for $t {
                type Event = ();
                type Action = Nothing;
                fn apply(&mut self, _: &()) {}
                fn decide(&self, _: &Nothing) -> Result<Vec<()>, crate::state::Invariant> {
                    Ok(Vec::new())
                }
            }
        };
    }
    struct Nothing;
    impl crate::state::Action for Nothing {
        fn name(&self) -> &str {
            "nothing"
        }
    }
    state!(A);
    state!(B);

    #[test]
    fn states_are_kept_by_type_and_stream_and_updated_in_place() {
        let cache = StateCache::new(10);
        cache.put("s", &A(1), 0, 1);
        cache.put("s", &B("b".into()), 4, 0);
        assert_eq!(cache.get::<A>("s"), Some((A(1), 0, 1)));
        cache.put("s", &A(2), 1, 2);
        assert_eq!(cache.get::<A>("s"), Some((A(2), 1, 2)));
        assert_eq!(cache.get::<B>("s"), Some((B("b".into()), 4, 0)));
        assert_eq!(cache.get::<A>("t"), None);
        assert_eq!(cache.lock().len, 2);
    }

    #[test]
    fn the_least_recently_used_are_evicted_past_capacity() {
        let cache = StateCache::new(20);
        for i in 0..20 {
            cache.put(&format!("s{i}"), &A(i), 0, 0);
        }
        assert!(cache.get::<A>("s0").is_some(), "s0 is now the most recent");
        cache.put("s20", &A(20), 0, 0);
        let len = cache.lock().len;
        assert!(len <= 20, "{len} entries");
        assert!(cache.get::<A>("s0").is_some());
        assert!(cache.get::<A>("s20").is_some());
        assert!(cache.get::<A>("s1").is_none(), "the oldest was evicted");
    }

    #[test]
    fn a_cache_of_zero_keeps_nothing() {
        let cache = StateCache::new(0);
        cache.put("s", &A(1), 0, 0);
        assert_eq!(cache.get::<A>("s"), None);
    }
}
