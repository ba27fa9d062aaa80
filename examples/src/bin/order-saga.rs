//! An order process across two states: `Order` (`order-{n}`) and `Inventory`
//! (`inventory-{sku}`).
//!
//! `Placed` on an order → the `reserve` reaction reserves stock on the
//! inventory. Accepted: the order is confirmed. Refused by the inventory's
//! invariant (not enough stock): the compensating action cancels the order,
//! with the refusal as its reason.
//!
//! The reaction's queue is the inventory stream (`inventory-{sku}`), so the
//! reservations of one sku run one at a time, in order: no two handlers
//! race for the same stock. Its writes go through `ctx.act`, which gives
//! them the placed event's correlation and an idempotency key; and the
//! handler first looks at the order, so a redelivery or a replay of an order
//! already confirmed or cancelled does nothing.
//!
//! Run it: `cargo run -p act-examples --bin order-saga`

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;

use act::{
    Act, Action, Actor, BrokerOptions, Context, Event, HandlerError, Invariant, MemoryStore, State,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
enum Status {
    #[default]
    New,
    Pending,
    Confirmed,
    Cancelled(String),
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Order {
    status: Status,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
enum OrderEvent {
    Placed { sku: String, qty: u32 },
    Confirmed,
    Cancelled { reason: String },
}

enum OrderAction {
    Place { sku: String, qty: u32 },
    Confirm,
    Cancel { reason: String },
}

impl Action for OrderAction {
    fn name(&self) -> &str {
        match self {
            OrderAction::Place { .. } => "place",
            OrderAction::Confirm => "confirm",
            OrderAction::Cancel { .. } => "cancel",
        }
    }
}

impl State for Order {
    type Event = OrderEvent;
    type Action = OrderAction;

    fn apply(&mut self, event: &OrderEvent) {
        self.status = match event {
            OrderEvent::Placed { .. } => Status::Pending,
            OrderEvent::Confirmed => Status::Confirmed,
            OrderEvent::Cancelled { reason } => Status::Cancelled(reason.clone()),
        };
    }

    fn decide(&self, action: &OrderAction) -> Result<Vec<OrderEvent>, Invariant> {
        match (action, &self.status) {
            (OrderAction::Place { sku, qty }, Status::New) => Ok(vec![OrderEvent::Placed {
                sku: sku.clone(),
                qty: *qty,
            }]),
            (OrderAction::Confirm, Status::Pending) => Ok(vec![OrderEvent::Confirmed]),
            (OrderAction::Cancel { reason }, Status::Pending) => Ok(vec![OrderEvent::Cancelled {
                reason: reason.clone(),
            }]),
            (_, status) => Err(Invariant::new(format!("the order is {status:?}"))),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Inventory {
    available: u32,
    reserved: BTreeMap<String, u32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
enum InventoryEvent {
    Stocked { qty: u32 },
    Reserved { order: String, qty: u32 },
}

enum InventoryAction {
    Stock { qty: u32 },
    Reserve { order: String, qty: u32 },
}

impl Action for InventoryAction {
    fn name(&self) -> &str {
        match self {
            InventoryAction::Stock { .. } => "stock",
            InventoryAction::Reserve { .. } => "reserve",
        }
    }
}

impl State for Inventory {
    type Event = InventoryEvent;
    type Action = InventoryAction;

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::Stocked { qty } => self.available += qty,
            InventoryEvent::Reserved { order, qty } => {
                self.available -= qty;
                self.reserved.insert(order.clone(), *qty);
            }
        }
    }

    fn decide(&self, action: &InventoryAction) -> Result<Vec<InventoryEvent>, Invariant> {
        match action {
            InventoryAction::Stock { qty } => Ok(vec![InventoryEvent::Stocked { qty: *qty }]),
            InventoryAction::Reserve { order, .. } if self.reserved.contains_key(order) => {
                Ok(vec![])
            }
            InventoryAction::Reserve { qty, .. } if *qty > self.available => Err(Invariant::new(
                format!("not enough stock: {} left, {qty} asked", self.available),
            )),
            InventoryAction::Reserve { order, qty } => Ok(vec![InventoryEvent::Reserved {
                order: order.clone(),
                qty: *qty,
            }]),
        }
    }
}

/// One step of the process: reserve, then confirm or compensate.
async fn reserve(placed: OrderEvent, event: Arc<Event>, ctx: Context) -> Result<(), HandlerError> {
    let OrderEvent::Placed { qty, .. } = placed else {
        return Ok(());
    };
    let order = &event.stream;
    if ctx.app().load::<Order>(order).await?.state.status != Status::Pending {
        return Ok(()); // settled before: a redelivery or a replay
    }
    let reserve = InventoryAction::Reserve {
        order: order.clone(),
        qty,
    };
    match ctx.act::<Inventory>(ctx.stream(), &reserve).await {
        Ok(_) => ctx.act::<Order>(order, &OrderAction::Confirm).await?,
        Err(act::Error::Rejected { reason, .. }) => {
            ctx.act::<Order>(order, &OrderAction::Cancel { reason })
                .await?
        }
        Err(other) => return Err(other.into()), // the store failed: retried
    };
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let saga = act::on!(OrderEvent { Placed })
        .named("reserve")
        .to(|placed, _event| match placed {
            OrderEvent::Placed { sku, .. } => Some(format!("inventory-{sku}")),
            _ => None,
        })
        .from_beginning() // every placed order, history included: settled ones are skipped
        .handle(reserve);
    let app = Act::builder(Arc::new(MemoryStore::new()))
        .reaction(saga)
        .build()?;
    let me = Actor::system("order-saga-example");

    app.act::<Inventory>("inventory-widget", &InventoryAction::Stock { qty: 5 }, &me)
        .await?;
    for (order, qty) in [("order-1", 3), ("order-2", 4)] {
        let place = OrderAction::Place {
            sku: "widget".into(),
            qty,
        };
        app.act::<Order>(order, &place, &me).await?;
    }
    app.broker(BrokerOptions::default()).settle().await?;

    let one = app.load::<Order>("order-1").await?.state.status;
    let two = app.load::<Order>("order-2").await?.state.status;
    let stock = app.load::<Inventory>("inventory-widget").await?.state;
    let reason = match &two {
        Status::Cancelled(reason) if reason.contains("not enough stock") => reason.clone(),
        _ => String::new(),
    };
    if one != Status::Confirmed
        || reason.is_empty()
        || stock.available != 2
        || stock.reserved.len() != 1
    {
        return Err(format!("order-1 {one:?}, order-2 {two:?}, inventory {stock:?}").into());
    }
    println!("ok: order-1 confirmed (3 reserved), order-2 cancelled ({reason}), 2 widgets left");
    Ok(())
}
