//! A write the fence refuses (a stale token, a lease that expired) holds no
//! queue row. Claims skip rows another transaction holds (`SKIP LOCKED`),
//! so a refused settle, renewal, release or acknowledgement that kept its
//! rows locked until its transaction ended made a concurrent claim pass
//! over a claimable queue, and a one-shot run could end with work left.
//!
//! Each test calls the store's function on a connection of its own inside
//! a transaction it keeps open, and claims through the store meanwhile.
//! The control test shows that such a claim does skip a row the function
//! locks when it accepts the write, so the others can fail.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use act::{Append, Batch, Claim, Correlation, EventStore, Message, QueueStore, Subscription, Work};
use act_pg::PgStore;
use common::{fresh_schema, open, options, raw, server, DropSchema};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

/// A store with two events pending in queue `q` for reaction `r`.
struct Setup {
    store: PgStore,
    schema: String,
    offset: Arc<AtomicI64>,
    acked: i64,
    _guard: DropSchema,
}

async fn setup(tag: &str) -> Setup {
    let schema = fresh_schema(tag);
    let offset = Arc::new(AtomicI64::new(0));
    let guard = DropSchema {
        schema: schema.clone(),
        offset: offset.clone(),
    };
    let store = open(options(&schema, &offset)).await;
    store
        .subscribe(&[Subscription {
            name: "r".into(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
        }])
        .await
        .unwrap();
    let messages = (0..2).map(|i| Message::new("Ping", json!({ "n": i })));
    let ids: Vec<i64> = store
        .append(Append::new("a", messages.collect()))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    store
        .enqueue(&Correlation {
            reactions: vec!["r".into()],
            replay: None,
            from: 0,
            to: ids[1],
            work: ids
                .iter()
                .map(|&event| Work {
                    stream: "q".into(),
                    event,
                    reaction: "r".into(),
                    priority: 0,
                })
                .collect(),
        })
        .await
        .unwrap();
    Setup {
        store,
        schema,
        offset,
        acked: ids[1],
        _guard: guard,
    }
}

impl Setup {
    /// Claims `q` for `owner` (panics when the claim finds nothing).
    async fn claim(&self, owner: &str) -> Batch {
        let mut got = self.claims(owner).await;
        assert_eq!(got.len(), 1, "a claim of q by {owner}");
        got.remove(0)
    }

    /// What a claim for `owner` finds, bounded so that a claim that waited
    /// on a lock would fail instead of hanging.
    async fn claims(&self, owner: &str) -> Vec<Batch> {
        let claim = Claim {
            owner: owner.into(),
            queues: 1,
            events: 10,
            lease: LEASE,
            reactions: vec!["r".into()],
        };
        tokio::time::timeout(Duration::from_secs(30), self.store.claim(&claim))
            .await
            .expect("a claim must not wait for another transaction's locks")
            .unwrap()
    }

    /// Moves the store's clock past every lease taken so far.
    fn expire(&self) {
        let past = i64::try_from((LEASE + Duration::from_secs(1)).as_micros()).unwrap();
        self.offset.fetch_add(past, Ordering::SeqCst);
    }

    fn now(&self) -> i64 {
        self.offset.load(Ordering::SeqCst)
    }

    /// Runs `call` (a query returning the fence code first) in a transaction
    /// on a connection of its own, then, with that transaction still open,
    /// what a claim for `owner` finds; rolls back and returns both.
    async fn held(
        &self,
        call: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        owner: &str,
    ) -> (i32, Vec<Batch>) {
        let mut c = raw(&server()).await;
        let tx = c.transaction().await.unwrap();
        let code: i32 = tx
            .query_one(&call.replace("{s}", &self.schema), params)
            .await
            .unwrap_or_else(|e| panic!("{call}: {e}"))
            .get(0);
        let found = self.claims(owner).await;
        tx.rollback().await.unwrap();
        (code, found)
    }
}

const SETTLE: &str = "SELECT code FROM {s}.act_settle(ARRAY['q'], ARRAY[$1::bigint], \
     ARRAY[$2::bigint], ARRAY[$3::bigint], ARRAY[$4::bigint], ARRAY[0::smallint], \
     ARRAY[0::bigint], ARRAY[NULL::text], $5::bigint)";

const RENEW: &str =
    "SELECT code FROM {s}.act_renew(ARRAY['q'], ARRAY[$1::bigint], 30000000, $2::bigint)";

const RELEASE: &str = "SELECT code FROM {s}.act_release(ARRAY['q'], ARRAY[$1::bigint])";

const ACK_WITHIN: &str = "SELECT code FROM {s}.act_ack_within('q', $1, $2, $3, $4, $5)";

/// The control: a release of an expired lease whose token is still current
/// is accepted and locks the queue row, and a claim meanwhile skips that
/// queue although its committed state is claimable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_skips_a_queue_an_accepted_write_holds() {
    let t = setup("accepted").await;
    let b = t.claim("old").await;
    t.expire();
    let (code, found) = t.held(RELEASE, &[&b.lease.token], "new").await;
    assert_eq!(code, 0, "the token is current: the release is accepted");
    assert!(
        found.is_empty(),
        "a claim skips the queue the uncommitted release holds: {found:?}"
    );
    assert_eq!(t.claims("new").await.len(), 1, "claimable once it ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_refused_for_an_expired_lease_holds_nothing() {
    let t = setup("settle").await;
    let b = t.claim("old").await;
    t.expire();
    let l = &b.lease;
    let (code, found) = t
        .held(
            SETTLE,
            &[&l.token, &l.position, &l.mark, &t.acked, &t.now()],
            "new",
        )
        .await;
    assert_eq!(code, 3, "the lease expired");
    assert_eq!(
        found.len(),
        1,
        "the queue stays claimable while the refused settle's transaction is open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_refused_for_a_stale_token_holds_nothing() {
    let t = setup("stale").await;
    let old = t.claim("old").await;
    t.expire();
    let _next = t.claim("next").await;
    t.expire();
    let l = &old.lease;
    let (code, found) = t
        .held(
            SETTLE,
            &[&l.token, &l.position, &l.mark, &t.acked, &t.now()],
            "new",
        )
        .await;
    assert_eq!(code, 2, "the token is stale");
    assert_eq!(found.len(), 1, "the queue stays claimable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_refused_for_an_expired_lease_holds_nothing() {
    let t = setup("renew").await;
    let b = t.claim("old").await;
    t.expire();
    let (code, found) = t.held(RENEW, &[&b.lease.token, &t.now()], "new").await;
    assert_eq!(code, 3, "the lease expired");
    assert_eq!(found.len(), 1, "the queue stays claimable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_refused_for_a_stale_token_holds_nothing() {
    let t = setup("release").await;
    let old = t.claim("old").await;
    t.expire();
    let _next = t.claim("next").await;
    t.expire();
    let (code, found) = t.held(RELEASE, &[&old.lease.token], "new").await;
    assert_eq!(code, 2, "the token is stale");
    assert_eq!(found.len(), 1, "the queue stays claimable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_refused_for_an_expired_lease_holds_nothing() {
    let t = setup("ackwithin").await;
    let b = t.claim("old").await;
    t.expire();
    let l = &b.lease;
    let (code, found) = t
        .held(
            ACK_WITHIN,
            &[&l.token, &l.position, &l.mark, &t.acked, &t.now()],
            "new",
        )
        .await;
    assert_eq!(code, 3, "the lease expired");
    assert_eq!(found.len(), 1, "the queue stays claimable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_change_nothing_and_the_next_holder_settles() {
    let t = setup("after").await;
    let old = t.claim("old").await;
    t.expire();
    let next = t.claim("next").await;
    // The stale holder's settle, committed: refused, changes nothing.
    let l = &old.lease;
    let c = raw(&server()).await;
    let code: i32 = c
        .query_one(
            &SETTLE.replace("{s}", &t.schema),
            &[&l.token, &l.position, &l.mark, &t.acked, &t.now()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(code, 2);
    let done = t
        .store
        .settle(&[act::Settlement::ack(&next.lease, t.acked)])
        .await
        .unwrap();
    assert!(done[0].is_ok(), "the current holder settles: {done:?}");
    assert!(t.claims("later").await.is_empty(), "nothing is left");
}
