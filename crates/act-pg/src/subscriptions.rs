//! Subscriptions and correlation on PostgreSQL: `act_subscribe`,
//! `act_retire` and `act_enqueue` (one function call each), the listing of
//! subscriptions and replays, and the checkpoint a version 1 store left.
//! The [`act::QueueStore`] impl in `queues.rs` calls these.

use act::{Correlation, Error, Replay, Retired, Subscription, SubscriptionState};
use tokio_postgres::Row;

use crate::error;
use crate::{Failure, PgStore};

fn subscription(r: &Row) -> act::Result<SubscriptionState> {
    let bad = |e: tokio_postgres::Error| Error::decode("a subscription row", e);
    Ok(SubscriptionState {
        name: r.try_get("name").map_err(bad)?,
        events: r.try_get("events").map_err(bad)?,
        target: r.try_get("target").map_err(bad)?,
        start: r.try_get("start").map_err(bad)?,
        checkpoint: r.try_get("checkpoint").map_err(bad)?,
        created: r.try_get("created").map_err(bad)?,
        seen: r.try_get("seen").map_err(bad)?,
        retired: r.try_get("retired").map_err(bad)?,
    })
}

/// Each name once: the first registration's start, the last one's events
/// and target (what registering them one after another would leave).
fn once_each(subscriptions: &[Subscription]) -> Vec<Subscription> {
    let mut out: Vec<Subscription> = Vec::with_capacity(subscriptions.len());
    for s in subscriptions {
        match out.iter_mut().find(|o| o.name == s.name) {
            Some(o) => {
                o.events = s.events.clone();
                o.target = s.target.clone();
            }
            None => out.push(s.clone()),
        }
    }
    out
}

impl PgStore {
    /// The one checkpoint of schema version 1 (0 on a store created by
    /// version 2). One round trip.
    pub(crate) async fn legacy(&self) -> act::Result<i64> {
        let sql = format!(
            "SELECT position FROM {}.checkpoint WHERE id = 1",
            self.schema
        );
        let rows = self.rows(&sql, &[]).await?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// See [`act::QueueStore::subscribe`]. One function call.
    pub(crate) async fn register(
        &self,
        subscriptions: &[Subscription],
    ) -> act::Result<Vec<SubscriptionState>> {
        for s in subscriptions {
            act::limits::check_name("the reaction name", &s.name)?;
        }
        self.writable()?;
        let subs = once_each(subscriptions);
        let names: Vec<&str> = subs.iter().map(|s| s.name.as_str()).collect();
        let events = serde_json::Value::Array(
            subs.iter()
                .map(|s| serde_json::Value::from(s.events.clone()))
                .collect(),
        );
        let targets: Vec<Option<&str>> = subs.iter().map(|s| s.target.as_deref()).collect();
        let starts: Vec<i64> = subs.iter().map(|s| s.start).collect();
        let offset = self.offset_us();
        let sql = format!(
            "SELECT * FROM {}.act_subscribe($1, $2, $3, $4, $5)",
            self.schema
        );
        let rows = self
            .rows(&sql, &[&names, &events, &targets, &starts, &offset])
            .await?;
        rows.iter().map(subscription).collect()
    }

    /// Every subscription by name. One round trip.
    pub(crate) async fn list_subscriptions(&self) -> act::Result<Vec<SubscriptionState>> {
        let sql = format!("SELECT * FROM {}.subscriptions ORDER BY name", self.schema);
        let rows = self.rows(&sql, &[]).await?;
        rows.iter().map(subscription).collect()
    }

    /// See [`act::QueueStore::retire`]. One function call; all or nothing.
    pub(crate) async fn retire_all(&self, names: &[String]) -> act::Result<Vec<Retired>> {
        self.writable()?;
        let sql = format!("SELECT * FROM {}.act_retire($1, $2)", self.schema);
        let offset = self.offset_us();
        let rows = match self.try_rows(&sql, &[&names, &offset]).await {
            Ok(rows) => rows,
            Err(Failure::Driver(e)) if error::is_code(&e, "AC404") => {
                let name = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default();
                return Err(Error::UnknownReaction(name));
            }
            Err(f) => return Err(self.fail(f)),
        };
        let out: Vec<Retired> = rows
            .iter()
            .map(|r| Retired {
                name: r.get(0),
                dropped: r.get::<_, i64>(1).max(0) as u64,
                queues: r.get::<_, i64>(2).max(0) as u64,
                newly: r.get(3),
            })
            .collect();
        // Queues that waited for a retired reaction may be claimable now.
        self.notify_events();
        Ok(out)
    }

    /// See [`act::QueueStore::enqueue`]. One function call, set-based: the
    /// items travel as four parallel arrays.
    pub(crate) async fn correlate(&self, step: &Correlation) -> act::Result<act::Enqueued> {
        if step.to < step.from {
            return Err(Error::InvalidInput(format!(
                "a correlation step cannot move backwards (from {} to {})",
                step.from, step.to
            )));
        }
        for w in &step.work {
            act::limits::check_name("the queue name", &w.stream)?;
        }
        if let Some(w) = step.work.iter().find(|w| w.event < 1) {
            return Err(not_in_log(&w.stream, w.event, "no event id is below 1"));
        }
        self.writable()?;
        let streams: Vec<&str> = step.work.iter().map(|w| w.stream.as_str()).collect();
        let events: Vec<i64> = step.work.iter().map(|w| w.event).collect();
        let items: Vec<&str> = step.work.iter().map(|w| w.reaction.as_str()).collect();
        let priorities: Vec<i32> = step.work.iter().map(|w| w.priority).collect();
        let sql = format!(
            "SELECT positions, added, moved FROM {}.act_enqueue($1, $2, $3, $4, $5, $6, $7, $8)",
            self.schema
        );
        let rows = self
            .try_rows(
                &sql,
                &[
                    &step.reactions,
                    &step.replay,
                    &step.from,
                    &step.to,
                    &streams,
                    &events,
                    &items,
                    &priorities,
                ],
            )
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(Failure::Driver(e)) if error::is_code(&e, "AC400") => {
                let db = e.as_db_error();
                let event: i64 = db
                    .and_then(|d| d.message().parse().ok())
                    .unwrap_or_default();
                let head: i64 = db
                    .and_then(|d| d.detail())
                    .and_then(|h| h.parse().ok())
                    .unwrap_or_default();
                let stream = step
                    .work
                    .iter()
                    .find(|w| w.event == event)
                    .map_or("", |w| w.stream.as_str());
                return Err(not_in_log(stream, event, &format!("head {head}")));
            }
            Err(f) => return Err(self.fail(f)),
        };
        let first = rows.first();
        let positions: Option<Vec<Option<i64>>> = first.and_then(|r| r.get(0));
        let added: i64 = first.map_or(0, |r| r.get(1));
        let moved: Option<Vec<bool>> = first.and_then(|r| r.get(2));
        if added > 0 || step.replay.is_some() {
            self.notify_work();
        }
        let (positions, moved) = (positions.unwrap_or_default(), moved.unwrap_or_default());
        if positions.len() != step.reactions.len() || moved.len() != step.reactions.len() {
            return Err(Error::Store {
                store: self.name.clone(),
                source: format!(
                    "act_enqueue returned {} positions and {} moves for {} reactions",
                    positions.len(),
                    moved.len(),
                    step.reactions.len()
                )
                .into(),
            });
        }
        Ok(act::Enqueued { positions, moved })
    }

    /// Replays under way, by stream then reaction (byte order). One round trip.
    pub(crate) async fn list_replays(&self) -> act::Result<Vec<Replay>> {
        let sql = format!(
            "SELECT stream, reaction, position, until FROM {}.replays ORDER BY stream, reaction",
            self.schema
        );
        let rows = self.rows(&sql, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| Replay {
                stream: r.get(0),
                reaction: r.get(1),
                position: r.get(2),
                until: r.get(3),
            })
            .collect())
    }
}

fn not_in_log(stream: &str, event: i64, why: &str) -> Error {
    Error::InvalidInput(format!(
        "work for `{stream}` names event {event}, which is not in the log ({why})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(name: &str, start: i64, target: Option<&str>) -> Subscription {
        Subscription {
            name: name.into(),
            events: vec![format!("E{start}")],
            target: target.map(str::to_string),
            start,
        }
    }

    #[test]
    fn a_name_given_twice_keeps_its_first_start_and_its_last_events() {
        let got = once_each(&[sub("a", 1, None), sub("b", 2, None), sub("a", 3, Some("q"))]);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (
                got[0].start,
                got[0].events.clone(),
                got[0].target.as_deref()
            ),
            (1, vec!["E3".to_string()], Some("q"))
        );
        assert_eq!(got[1].name, "b");
    }
}
