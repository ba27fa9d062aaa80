//! Checks a bank's log after delivery, from the log alone:
//!
//! - every `Deposited`/`Withdrawn` on `account-{n}` has exactly one
//!   `Recorded` in `audit-{n}` and one `Totaled` in `totals` (and, once the
//!   version-2 `ledger` reaction ran, one `Posted` in `ledger`), in source
//!   order — except that an account's audit stops before the poisoned
//!   deposit its queue is blocked at (a poison cured and unblocked earlier
//!   has its receipt like any other deposit);
//! - each `Totaled` carries the running sum up to its source;
//! - exactly the audit queues with a poisoned deposit not yet recorded are
//!   blocked (with the poison error, or the lease-expiry error of a handler
//!   that crashed its process on it), and every other queue is caught up.
//!
//! Reads the log in pages, keeping only ids and amounts.

use std::collections::{BTreeMap, BTreeSet};

use act::{Query, QueueFilter, Store};
use serde::Serialize;

use crate::model::account_number;
use crate::reactions::signed_amount;

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    /// Deposits and withdrawals in the log.
    pub sources: u64,
    /// `Recorded` receipts.
    pub recorded: u64,
    /// `Totaled` receipts.
    pub totaled: u64,
    /// `Posted` receipts (version 2's ledger; 0 when it never ran).
    pub posted: u64,
    /// Audit queues that must be blocked (accounts with a poisoned deposit).
    pub poisoned: Vec<String>,
    /// Queues that are blocked.
    pub blocked: Vec<String>,
    /// Poisoned audit queues that were unblocked after a fix and are complete.
    pub cured: Vec<String>,
    /// Everything that is wrong (empty when the log is right).
    pub problems: Vec<String>,
}

impl Verdict {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Source {
    id: i64,
    poison: bool,
}

const PAGE: usize = 10_000;
const MAX_PROBLEMS: usize = 20;

/// Checks the log and the queues of a bank on `store`.
pub async fn verify(store: &dyn Store) -> act::Result<Verdict> {
    let mut sources: BTreeMap<String, Vec<Source>> = BTreeMap::new();
    let mut all: Vec<(i64, i64)> = Vec::new();
    let mut recorded: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut totaled: Vec<(i64, i64)> = Vec::new();
    let mut posted: Vec<i64> = Vec::new();
    let mut v = Verdict::default();
    let mut after = 0;
    loop {
        let page = store.query(&Query::new().after(after).limit(PAGE)).await?;
        for e in &page {
            match e.name.as_str() {
                "Deposited" | "Withdrawn" => {
                    let Some(n) = account_number(&e.stream) else {
                        continue;
                    };
                    let Some(amount) = signed_amount(e) else {
                        v.problems
                            .push(format!("event {} has no integer amount", e.id));
                        continue;
                    };
                    let poison = e.data.get("poison").and_then(|p| p.as_bool()) == Some(true);
                    sources
                        .entry(n.to_string())
                        .or_default()
                        .push(Source { id: e.id, poison });
                    all.push((e.id, amount));
                }
                "Recorded" => {
                    if let (Some(n), Some(src)) =
                        (e.stream.strip_prefix("audit-"), e.data["source"].as_i64())
                    {
                        recorded.entry(n.to_string()).or_default().push(src);
                    }
                }
                "Posted" if e.stream == "ledger" => {
                    if let Some(src) = e.data["source"].as_i64() {
                        posted.push(src);
                    }
                }
                "Totaled" if e.stream == "totals" => {
                    if let (Some(src), Some(total)) =
                        (e.data["source"].as_i64(), e.data["total"].as_i64())
                    {
                        totaled.push((src, total));
                    }
                }
                _ => {}
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = last.id,
            _ => break,
        }
    }
    v.sources = all.len() as u64;
    v.recorded = recorded.values().map(|r| r.len() as u64).sum();
    v.totaled = totaled.len() as u64;
    v.posted = posted.len() as u64;

    let queues = list_queues(store).await?;
    let blocked_at: BTreeMap<&str, Option<i64>> = queues
        .iter()
        .filter(|q| q.blocked)
        .map(|q| (q.stream.as_str(), q.next))
        .collect();
    // Poisoned deposits without a receipt: their queue must be blocked at
    // the first of them.
    let mut poisoned_at: BTreeMap<String, i64> = BTreeMap::new();
    for (n, list) in &sources {
        let queue = format!("audit-{n}");
        let got = recorded.remove(n).unwrap_or_default();
        let seen: BTreeSet<i64> = got.iter().copied().collect();
        if let Some(p) = list.iter().find(|s| s.poison && !seen.contains(&s.id)) {
            poisoned_at.insert(queue.clone(), p.id);
        }
        if list.iter().any(|s| s.poison && seen.contains(&s.id)) {
            v.cured.push(queue.clone());
        }
        // A blocked queue stops before the event it is blocked at.
        let cut = match blocked_at.get(queue.as_str()) {
            Some(Some(at)) => list.iter().position(|s| s.id >= *at),
            _ => None,
        };
        let expected: Vec<i64> = list[..cut.unwrap_or(list.len())]
            .iter()
            .map(|s| s.id)
            .collect();
        if got != expected {
            v.problems.push(describe(&queue, &expected, &got));
        }
    }
    for (n, got) in recorded {
        v.problems.push(format!(
            "audit-{n} holds {} receipts for an account with no deposits",
            got.len()
        ));
    }
    let expected: Vec<i64> = all.iter().map(|(id, _)| *id).collect();
    let ledger_ran = !posted.is_empty() || queues.iter().any(|q| q.stream == "ledger");
    if ledger_ran && posted != expected {
        v.problems.push(describe("ledger", &expected, &posted));
    }
    let got: Vec<i64> = totaled.iter().map(|(src, _)| *src).collect();
    if got != expected {
        v.problems.push(describe("totals", &expected, &got));
    } else {
        let mut sum = 0;
        for ((_, amount), (src, total)) in all.iter().zip(&totaled) {
            sum += amount;
            if *total != sum {
                v.problems.push(format!(
                    "totals: Totaled for source {src} says {total}, the running sum is {sum}"
                ));
                break;
            }
        }
    }

    v.poisoned = poisoned_at.keys().cloned().collect();
    let mut blocked = BTreeSet::new();
    for q in &queues {
        if q.blocked {
            blocked.insert(q.stream.clone());
            match poisoned_at.get(&q.stream) {
                None => v.problems.push(format!(
                    "queue {} is blocked but has no poisoned event: {}",
                    q.stream,
                    q.error.as_deref().unwrap_or("no error")
                )),
                Some(&p) => {
                    if q.next != Some(p) {
                        v.problems.push(format!(
                            "queue {} is blocked at {:?}, the poison is event {p}",
                            q.stream, q.next
                        ));
                    }
                    let error = q.error.as_deref().unwrap_or_default();
                    if !error.contains("poisoned") && !error.contains("without a settlement") {
                        v.problems.push(format!(
                            "queue {} is blocked with an unexpected error: {:?}",
                            q.stream, q.error
                        ));
                    }
                }
            }
        } else if q.lag > 0 {
            v.problems.push(format!(
                "queue {} is not caught up: {} events pending",
                q.stream, q.lag
            ));
        }
    }
    v.blocked = blocked.into_iter().collect();
    if v.problems.len() > MAX_PROBLEMS {
        let more = v.problems.len() - MAX_PROBLEMS;
        v.problems.truncate(MAX_PROBLEMS);
        v.problems.push(format!("… and {more} more problems"));
    }
    Ok(v)
}

/// Every queue, a page at a time.
async fn list_queues(store: &dyn Store) -> act::Result<Vec<act::QueueState>> {
    let mut out: Vec<act::QueueState> = Vec::new();
    loop {
        let page = store
            .queues(&QueueFilter {
                after: out.last().map(|q| q.stream.clone()),
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        let full = page.len() == 1000;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Says how two receipt lists differ: counts, duplicates, first difference.
fn describe(queue: &str, expected: &[i64], got: &[i64]) -> String {
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    let duplicates = got.len() - unique.len();
    let first = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    format!(
        "{queue}: expected {} receipts, found {} ({duplicates} duplicated); first difference at receipt {first}: expected {:?}, found {:?}",
        expected.len(),
        got.len(),
        expected.get(first),
        got.get(first)
    )
}
