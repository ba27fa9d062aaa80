//! A reaction that calls an HTTP endpoint (a webhook per shipped order),
//! with a timeout and retries, against a test server this example starts on
//! 127.0.0.1.
//!
//! The server hangs on the first call for `order-1` (the reaction's timeout
//! cancels it), answers 503 to the next two, then 200: the broker retries
//! each failure with the reaction's backoff, stored in the queue, so the
//! fourth attempt succeeds. `order-2`'s endpoint answers 404: retrying cannot
//! fix that, so the handler returns `HandlerError::permanent` and its queue
//! blocks at once (an operator fixes the cause, then `act unblock`).
//!
//! The call is an effect outside the store: a lease lost mid-call or a crash
//! after the 200 but before the ack calls again. The handler sends an
//! `Idempotency-Key` (reaction + event id) so the service can drop repeats.
//!
//! Run it: `cargo run -p act-examples --bin http-retry`

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use act::{
    Act, Action, Actor, Backoff, BrokerOptions, HandlerError, Invariant, MemoryStore, QueueFilter,
    State,
};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Order {
    shipped: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
enum OrderEvent {
    Shipped { carrier: String },
}

struct Ship {
    carrier: String,
}

impl Action for Ship {
    fn name(&self) -> &str {
        "ship"
    }
}

impl State for Order {
    type Event = OrderEvent;
    type Action = Ship;

    fn apply(&mut self, _: &OrderEvent) {
        self.shipped = true;
    }

    fn decide(&self, ship: &Ship) -> Result<Vec<OrderEvent>, Invariant> {
        if self.shipped {
            return Err(Invariant::new("an order ships once"));
        }
        Ok(vec![OrderEvent::Shipped {
            carrier: ship.carrier.clone(),
        }])
    }
}

/// Posts the webhook. 2xx is done; 408, 429 and 5xx are worth retrying
/// (transient, with backoff); any other 4xx will fail the same way every
/// time, so it is permanent and blocks the queue at once.
async fn notify(
    http: &reqwest::Client,
    url: String,
    key: String,
    body: String,
) -> Result<(), HandlerError> {
    let response = http
        .post(url)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?; // connection refused, reset…: transient
    let status = response.status();
    match status.as_u16() {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(HandlerError::transient(format!(
            "webhook answered {status}"
        ))),
        _ => Err(HandlerError::permanent(format!(
            "webhook answered {status}"
        ))),
    }
}

/// The test server: (path, idempotency key) of every call, in order.
type Calls = Arc<Mutex<Vec<(String, String)>>>;

async fn answer(req: Request<Incoming>, calls: Calls) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|k| k.to_str().ok())
        .unwrap_or("")
        .to_string();
    let n = {
        let mut calls = calls.lock().expect("calls");
        calls.push((path.clone(), key));
        calls.iter().filter(|(p, _)| *p == path).count()
    };
    let status = match (path.as_str(), n) {
        ("/webhooks/order-1", 1) => {
            tokio::time::sleep(Duration::from_secs(30)).await; // hangs: the timeout cancels the call
            StatusCode::OK
        }
        ("/webhooks/order-1", 2 | 3) => StatusCode::SERVICE_UNAVAILABLE,
        ("/webhooks/order-1", _) => StatusCode::OK,
        _ => StatusCode::NOT_FOUND,
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}

/// Serves on 127.0.0.1 on a free port until the returned task is aborted
/// (which drops every connection task with it).
async fn start_server(calls: Calls) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let calls = calls.clone();
            let service = hyper::service::service_fn(move |req| answer(req, calls.clone()));
            let io = hyper_util::rt::TokioIo::new(tcp);
            connections
                .spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    Ok((addr, task))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let calls = Calls::default();
    let (addr, server) = start_server(calls.clone()).await?;
    let http = reqwest::Client::new();

    let webhook = act::on!(OrderEvent { Shipped }) // typed: a misspelled event does not compile
        .named("webhook")
        .to_raw(|e| Some(format!("webhook-{}", e.stream)))
        .from_now() // a side effect: never call about events from before it existed
        .timeout(Duration::from_secs(1)) // generous: a loaded CI machine must not time out the 200
        .max_retries(5)
        .backoff(Backoff {
            base: Duration::from_millis(20),
            factor: 2.0,
            cap: Duration::from_millis(200),
            jitter: 0.2,
        })
        .handle(move |shipped, event, ctx| {
            let http = http.clone();
            async move {
                let OrderEvent::Shipped { carrier } = shipped; // decoded for us
                let url = format!("http://{addr}/webhooks/{}", event.stream);
                let key = format!("{}:{}", ctx.reaction(), event.id);
                let body =
                    serde_json::json!({ "order": event.stream, "carrier": carrier }).to_string();
                println!("attempt {} for {}", ctx.attempt(), event.stream);
                notify(&http, url, key, body).await
            }
        });
    let app = Act::builder(Arc::new(MemoryStore::new()))
        .reaction(webhook)
        .build()?;
    app.register().await?; // record "from now" before the first event
    let me = Actor::system("http-retry-example");
    for order in ["order-1", "order-2"] {
        app.act::<Order>(
            order,
            &Ship {
                carrier: "post".into(),
            },
            &me,
        )
        .await?;
    }

    let stats = app.broker(BrokerOptions::default()).settle().await?;
    server.abort();

    let queue = |name: &str| QueueFilter {
        stream: Some(name.into()),
        ..Default::default()
    };
    let ok = app
        .store()
        .queues(&queue("webhook-order-1"))
        .await?
        .pop()
        .ok_or("no queue webhook-order-1")?;
    let failed = app
        .store()
        .queues(&queue("webhook-order-2"))
        .await?
        .pop()
        .ok_or("no queue webhook-order-2")?;
    let calls = calls.lock().expect("calls").clone();
    let mut per_path: HashMap<&str, usize> = HashMap::new();
    for (path, _) in &calls {
        *per_path.entry(path.as_str()).or_default() += 1;
    }
    let count = |path: &str| per_path.get(path).copied().unwrap_or(0);
    let (one, two) = (count("/webhooks/order-1"), count("/webhooks/order-2"));
    let mut keys: Vec<&str> = calls
        .iter()
        .filter(|(p, _)| p.ends_with("order-1"))
        .map(|(_, k)| k.as_str())
        .collect();
    keys.dedup();
    let keys_stable = keys.len() == 1; // every retry of one event sends the same key
    if one != 4 || two != 1 || !keys_stable {
        return Err(format!(
            "server saw {calls:?}: expected 4 calls for order-1 with one key, 1 for order-2"
        )
        .into());
    }
    if ok.blocked || ok.lag != 0 || stats.timeouts != 1 || stats.retries != 3 {
        return Err(format!(
            "order-1: {ok:?}, {stats:?}: expected caught up after 1 timeout and 3 retries"
        )
        .into());
    }
    let error = failed.error.clone().unwrap_or_default();
    if !failed.blocked || !error.contains("404") {
        return Err(format!("order-2: {failed:?}: expected blocked by the 404").into());
    }
    println!(
        "ok: order-1 delivered on call {one} after {} timeout and {} retries; order-2 blocked after {two} call ({error})",
        stats.timeouts, stats.retries
    );
    Ok(())
}
