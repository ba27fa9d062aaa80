//! The conformance kit: every promise of the design contract as a test any
//! backend runs unchanged.
//!
//! A backend implements [`Backend`] (open a fresh, isolated store and a handle
//! on its clock) and expands [`tck_suite!`](crate::tck_suite) in one test
//! file:
//!
//! ```ignore
//! struct Sqlite;
//! #[async_trait::async_trait]
//! impl act::tck::Backend for Sqlite {
//!     async fn open(&self) -> act::tck::Fixture {
//!         todo!("open a store in a fresh temporary file")
//!     }
//! }
//! act::tck_suite!(Sqlite);
//! ```
//!
//! Each kit test is a public async function taking the backend; the macro
//! turns each into a `#[tokio::test]` named after the promise it checks. The
//! property tests ([`model`]) drive random interleavings of appends, claims,
//! failures, lease expiries and crashed brokers against a reference model.

pub mod batch;
pub mod broker;
pub mod events;
pub mod lifecycle;
pub mod model;
pub mod projection;
pub mod queues;
mod support;
pub mod time;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::ManualClock;
use crate::store::Store;

pub use support::{Call, Probe};

/// Moves a store's clock forward in tests.
#[async_trait]
pub trait TestClock: Send + Sync {
    /// Moves the store's notion of now forward by `by`.
    async fn advance(&self, by: Duration);

    /// True when advancing is instant (the property tests then drive lease
    /// expiries and retry delays; on a sleeping clock they skip them).
    fn is_manual(&self) -> bool {
        true
    }
}

#[async_trait]
impl TestClock for ManualClock {
    async fn advance(&self, by: Duration) {
        ManualClock::advance(self, by);
    }
}

/// A clock that cannot be moved: advancing sleeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct SleepingClock;

#[async_trait]
impl TestClock for SleepingClock {
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    fn is_manual(&self) -> bool {
        false
    }
}

/// An open, empty, isolated store for one test.
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Its clock.
    pub clock: Arc<dyn TestClock>,
    /// Dropped at the end of the test: clean up (temp files, schemas).
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Fixture {
    /// A fixture without cleanup.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn TestClock>) -> Self {
        Fixture {
            store,
            clock,
            guard: None,
        }
    }
}

/// What a backend gives the kit.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A fresh, empty store no other test sees.
    async fn open(&self) -> Fixture;

    /// Another handle on the same store, as a second process would open it.
    /// The default shares the handle.
    async fn reopen(&self, fixture: &Fixture) -> Arc<dyn Store> {
        fixture.store.clone()
    }
}

/// The in-memory backend on a manual clock (what `act`'s own tests run).
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory;

#[async_trait]
impl Backend for Memory {
    async fn open(&self) -> Fixture {
        let clock = ManualClock::new();
        let store = Arc::new(crate::MemoryStore::with_clock(Arc::new(clock.clone())));
        Fixture::new(store, Arc::new(clock))
    }
}

/// How long one kit test may run before it counts as hung (failed).
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Expands to one test per kit test for `$backend` (an expression building a
/// [`Backend`]). The caller needs `tokio` (with `macros` and `rt-multi-thread`)
/// among its dev-dependencies.
#[macro_export]
macro_rules! tck_suite {
    ($backend:expr) => {
        $crate::tck_tests! { $backend;
            events::append_assigns_increasing_ids_and_consecutive_versions,
            events::append_with_a_stale_version_is_a_conflict_naming_both_versions,
            events::a_conflicting_multi_event_append_appends_nothing,
            events::concurrent_writers_never_interleave_or_lose_versions,
            events::a_used_idempotency_key_returns_the_first_result_and_appends_nothing,
            events::an_empty_append_looks_a_key_up_without_using_it,
            events::query_filters_by_stream_names_ids_correlation_and_limit,
            events::query_filters_by_creation_time,
            events::query_reads_backward,
            events::query_matches_stream_patterns,
            events::a_reader_never_skips_an_event_while_writers_commit,
            events::a_commit_changes_the_wake_signal,
            events::data_and_meta_round_trip_unchanged,
            events::appends_without_a_version_check_never_conflict,
            events::an_expected_version_that_is_not_a_version_is_refused,
            events::payloads_within_the_limits_round_trip_on_every_backend,
            events::input_past_the_limits_is_refused_on_every_backend,
            events::extreme_bounds_are_plain_ranges,
            queues::enqueue_is_guarded_by_the_checkpoint,
            queues::a_correlation_step_moves_only_reactions_at_its_start,
            queues::the_second_of_two_identical_steps_is_told_it_moved_nothing,
            queues::subscriptions_keep_their_start_and_progress,
            queues::enqueueing_the_same_work_twice_is_a_no_op,
            queues::claim_is_exclusive_between_two_brokers,
            queues::concurrent_claims_never_share_a_queue,
            queues::an_expired_lease_is_handed_to_another_broker,
            queues::an_expired_lease_counts_as_a_failed_attempt,
            queues::a_lapsed_batch_is_walked_one_event_at_a_time,
            queues::a_stale_lease_cannot_ack,
            queues::a_stale_lease_cannot_retry,
            queues::a_stale_lease_cannot_block,
            queues::an_expired_lease_cannot_ack,
            queues::an_ack_checks_the_position_it_read,
            queues::a_renewed_lease_is_not_taken_over,
            queues::an_expired_lease_cannot_be_renewed,
            queues::ack_advances_the_position,
            queues::idle_queues_are_never_reported_behind,
            queues::lag_is_exact,
            queues::state_is_exact_after_out_of_order_enqueues,
            queues::higher_priority_queues_are_claimed_first,
            queues::the_highest_priority_ever_enqueued_is_kept,
            queues::claim_serves_the_oldest_pending_event_first,
            queues::claim_order_holds_when_thousands_come_due_together,
            queues::a_claim_is_bounded_to_its_batch_size,
            queues::a_hot_queue_holds_one_lease_and_one_batch,
            queues::a_claim_leaves_work_for_reactions_the_broker_lacks,
            queues::a_late_item_below_the_position_is_delivered_next,
            queues::a_settlement_keeps_items_enqueued_after_its_claim,
            queues::retry_is_scheduled_on_the_store_clock_for_every_broker,
            queues::partial_progress_is_kept_on_retry,
            queues::block_stops_the_queue_and_keeps_the_error,
            queues::unblock_resumes_at_the_failed_event,
            queues::reset_records_replays_and_holds_delivery_until_they_catch_up,
            queues::items_below_a_reset_floor_are_dropped,
            queues::reset_of_an_unknown_queue_is_an_error,
            queues::reset_past_the_head_is_refused,
            queues::retire_drops_pending_work_and_reports_it,
            queues::release_gives_the_queue_back,
            queues::settle_and_claim_claims_after_it_settled,
            queues::settle_and_claim_keeps_claim_order,
            queues::settle_and_claim_reports_each_half,
            queues::pending_items_are_counted_per_reaction,
            queues::sample_reports_pending_and_waiting_per_reaction,
            queues::next_due_reports_when_work_becomes_claimable,
            queues::queues_are_listed_in_byte_order_and_paged,
            broker::static_resolver_delivers_to_one_queue,
            broker::dynamic_resolver_delivers_per_event_and_skips_none,
            broker::events_reach_handlers_in_order_per_queue,
            broker::correlation_checkpoint_survives_a_new_broker,
            broker::a_failed_handler_is_retried_after_its_backoff_by_any_broker,
            broker::a_queue_blocks_after_max_retries,
            broker::a_permanent_error_blocks_at_once,
            broker::a_store_outage_in_a_handler_never_blocks_the_queue,
            broker::a_panicking_handler_is_retried_like_an_error,
            broker::a_blocked_queue_does_not_delay_others,
            broker::unblock_lets_a_blocked_queue_finish,
            broker::reset_replays_events_through_the_handler,
            broker::partial_progress_is_acked_before_the_retry,
            broker::a_hot_queue_does_not_starve_a_thousand_others,
            broker::higher_priority_reactions_are_delivered_first,
            broker::a_handler_whose_lease_was_lost_is_told_so,
            broker::shutdown_lets_in_flight_handlers_finish_and_releases_leases,
            broker::shutdown_aborts_handlers_past_the_grace_period_and_releases_leases,
            broker::a_commit_wakes_an_idle_broker,
            broker::a_commit_through_another_handle_wakes_an_idle_broker,
            broker::two_brokers_deliver_every_event_once_in_order,
            broker::derived_events_carry_correlation_and_causation,
            broker::a_redelivered_reaction_does_not_duplicate_what_it_wrote,
            broker::a_rejected_action_appends_nothing_and_names_the_invariant,
            broker::states_rebuild_from_snapshots,
            broker::cached_states_see_appends_by_other_writers,
            broker::a_refusal_is_decided_on_the_current_state,
            lifecycle::a_new_reaction_receives_every_historical_event_once_and_in_order,
            lifecycle::a_new_reaction_sharing_a_queue_receives_its_history,
            lifecycle::a_new_reaction_must_declare_its_start_and_from_now_skips_history,
            lifecycle::a_broker_without_a_reaction_never_acks_its_work,
            lifecycle::a_broker_without_an_old_reaction_leaves_its_work_to_old_brokers,
            lifecycle::a_changed_resolver_never_skips_enqueued_work,
            lifecycle::a_retired_reaction_s_work_is_dropped_and_reported,
            lifecycle::reset_replays_events_never_enqueued_before,
            lifecycle::reset_of_a_queue_that_never_had_work_replays_the_log,
            lifecycle::an_expired_lease_counts_as_an_attempt_and_the_queue_blocks_after_max_retries,
            lifecycle::a_queue_whose_lease_lapsed_runs_alone,
            lifecycle::a_crash_loop_blocks_at_the_event_that_crashes,
            lifecycle::a_handler_past_its_timeout_is_cancelled_and_retried,
            lifecycle::a_resolver_s_bad_answer_blocks_only_that_reaction_s_event,
            lifecycle::a_typed_event_that_does_not_decode_blocks_its_queue_with_the_decode_error,
            lifecycle::a_typed_resolver_routes_an_event_it_cannot_decode_to_a_blocked_queue,
            batch::a_batch_handler_takes_the_claimed_window_in_one_call,
            batch::a_failing_event_inside_a_batch_blocks_and_the_prefix_is_acked,
            batch::a_batch_window_stops_at_an_event_another_reaction_shares,
            time::a_deferred_queue_is_not_claimed_before_its_time,
            time::a_deferral_does_not_use_up_retries,
            time::a_deferred_queue_does_not_delay_others,
            time::a_stale_lease_cannot_defer,
            time::a_deferring_handler_is_called_again_after_its_time,
            time::a_deferral_keeps_the_batch_prefix_and_the_order,
            time::a_timer_fires_once_at_its_time_on_any_broker,
            time::a_cancelled_timer_never_fires,
            time::a_rescheduled_timer_fires_once_at_its_new_time,
            time::a_timer_fires_once_after_a_broker_crash_and_a_replay,
            time::timers_refuse_what_they_cannot_keep,
        }
        $crate::tck_props! { $backend;
            model::queue_store_matches_the_model,
        }
    };
}

/// Expands async kit tests (used by [`tck_suite!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! tck_tests {
    ($backend:expr; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                // A broken backend must fail the kit, not hang it.
                let limit = $crate::tck::TEST_LIMIT;
                if ::tokio::time::timeout(limit, $crate::tck::$module::$name(&$backend)).await.is_err() {
                    panic!("{} did not finish within {limit:?}", stringify!($name));
                }
            }
        )*
    };
}

/// Expands property kit tests (used by [`tck_suite!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! tck_props {
    ($backend:expr; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::tck::$module::$name(&$backend);
            }
        )*
    };
}
