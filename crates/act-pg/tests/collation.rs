//! Promise 12 on a database whose default collation is linguistic (ICU
//! en-US, which sorts `b` before `B` and ignores punctuation at first): the
//! store still lists, pages and breaks claim ties in byte order, like every
//! other backend. The test makes its own database on the shared server and
//! drops it at the end.

mod common;

use std::time::Duration;

use act::{
    Append, Claim, Correlation, EventStore, Message, QueueFilter, QueueStore, Subscription, Work,
};
use act_pg::PgStore;
use common::{raw, server, with_params};
use serde_json::json;

/// A database of our own with an ICU default collation; dropped (with its
/// sessions) when this goes out of scope.
struct IcuDatabase {
    name: String,
}

impl IcuDatabase {
    async fn create() -> IcuDatabase {
        let name = format!("act_t_icu_{:016x}", fastrand::u64(..));
        let c = raw(&server()).await;
        c.batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.utf8'"
        ))
        .await
        .expect("an ICU database (PostgreSQL 15 with ICU)");
        IcuDatabase { name }
    }

    /// The shared server's URL with this database in it.
    fn url(&self) -> String {
        let config: tokio_postgres::Config = server().parse().expect("a PostgreSQL URL");
        let base = server();
        let db = config.get_dbname().unwrap_or("postgres").to_string();
        let (head, tail) = base
            .split_once('?')
            .map_or((base.as_str(), None), |(h, t)| (h, Some(t)));
        let head = head.strip_suffix(db.as_str()).unwrap_or(head);
        let mut url = format!("{head}{}", self.name);
        if let Some(t) = tail {
            url = with_params(&url, t);
        }
        url
    }
}

impl Drop for IcuDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&server(), tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    drop(client);
                    let _ = driver.await;
                }
            });
        })
        .join();
    }
}

fn bytes(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_pages_and_claim_ties_are_byte_order_under_an_icu_default_collation() {
    let db = IcuDatabase::create().await;
    let url = with_params(&db.url(), "schema=act&listen=false");
    {
        // The database really does sort linguistically.
        let c = raw(&db.url()).await;
        let row = c
            .query_one(
                "SELECT string_agg(x, ' ' ORDER BY x) FROM unnest(ARRAY['b', 'B', 'a', '_x']) AS x",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, String>(0),
            "_x a b B",
            "not a linguistic default collation"
        );
    }
    let store = PgStore::open(&url).await.expect("open in the ICU database");
    let names = ["b", "B", "a", "_x", "a-10", "a-2", "é", "Z9", "a b", "z"];
    let mut ids = Vec::new();
    for _ in &names {
        let e = store
            .append(Append::new("src", vec![Message::new("Ping", json!({}))]))
            .await
            .unwrap();
        ids.push(e[0].id);
    }
    let subs: Vec<Subscription> = ["rb", "rB", "r_", "ré"]
        .iter()
        .map(|n| Subscription {
            name: n.to_string(),
            events: vec!["Ping".into()],
            target: None,
            start: 0,
        })
        .collect();
    let registered = store.subscribe(&subs).await.unwrap();
    assert_eq!(
        registered
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        bytes(vec!["rb", "rB", "r_", "ré"]),
        "subscriptions by name, byte order"
    );
    let work: Vec<Work> = names
        .iter()
        .zip(&ids)
        .map(|(n, e)| Work {
            stream: n.to_string(),
            event: *e,
            reaction: "rb".into(),
            priority: 0,
        })
        .collect();
    let top = *ids.last().unwrap();
    store
        .enqueue(&Correlation {
            reactions: vec!["rb".into()],
            replay: None,
            from: 0,
            to: top,
            work,
        })
        .await
        .unwrap();
    let want = bytes(names.to_vec());
    let all = store.queues(&QueueFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|q| q.stream.as_str()).collect::<Vec<_>>(),
        want
    );
    let first = store
        .queues(&QueueFilter {
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|q| q.stream.as_str()).collect::<Vec<_>>(),
        want[..3].to_vec(),
        "the limit is a prefix"
    );
    let mut paged: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .queues(&QueueFilter {
                after: after.clone(),
                limit: Some(3),
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|q| q.stream.clone());
        paged.extend(page.into_iter().map(|q| q.stream));
    }
    assert_eq!(
        paged,
        want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "the cursor pages in byte order"
    );

    // Claim tie-breaks: same priority, same first pending event.
    let tie = store
        .append(Append::new("t", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap()[0]
        .id;
    let ties = ["tb", "tB", "t_", "ta", "tA"];
    store
        .enqueue(&Correlation {
            reactions: vec!["rB".into()],
            replay: None,
            from: 0,
            to: tie,
            work: ties
                .iter()
                .map(|q| Work {
                    stream: q.to_string(),
                    event: tie,
                    reaction: "rB".into(),
                    priority: 7,
                })
                .collect(),
        })
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..ties.len() {
        let got = store
            .claim(&Claim {
                owner: "o".into(),
                queues: 1,
                events: 10,
                lease: Duration::from_secs(30),
                reactions: vec!["rB".into()],
            })
            .await
            .unwrap();
        order.push(got[0].lease.stream.clone());
    }
    assert_eq!(
        order,
        bytes(ties.to_vec()),
        "claim ties break in byte order"
    );

    // Replays are listed by (stream, reaction) in byte order.
    store.reset("b", 0).await.unwrap();
    store.reset("B", 0).await.unwrap();
    let replays: Vec<(String, String)> = store
        .replays()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.stream, r.reaction))
        .collect();
    let mut sorted = replays.clone();
    sorted.sort_by(|a, b| (a.0.as_bytes(), a.1.as_bytes()).cmp(&(b.0.as_bytes(), b.1.as_bytes())));
    assert_eq!(replays, sorted);
    assert!(replays.len() >= 2 && replays[0].0 == "B", "{replays:?}");
    drop(store);
}
