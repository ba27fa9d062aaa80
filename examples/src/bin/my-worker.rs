//! my-worker: the smallest worker a user writes with `act_cli`. Its own
//! state (a visitor), its own reaction (`greetings`: every `Greeted` on a
//! `visitor-*` stream gets a `Welcomed`), and every operator command of
//! `act` for it, plus one command of its own to produce input:
//!
//! ```text
//! cargo run -p act-examples --bin my-worker -- greet ada --store sqlite:///tmp/visitors.db
//! cargo run -p act-examples --bin my-worker -- worker --store sqlite:///tmp/visitors.db  # Ctrl-C stops it
//! cargo run -p act-examples --bin my-worker -- status --store sqlite:///tmp/visitors.db
//! ```

use std::sync::Arc;

use act::{Act, Action, Actor, Invariant, State, Store};
use serde::{Deserialize, Serialize};

/// A visitor, stream `visitor-{name}`.
#[derive(Default, Clone, Serialize, Deserialize)]
struct Visitor {
    greeted: bool,
    welcomed: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
enum VisitorEvent {
    Greeted {},
    Welcomed {},
}

enum VisitorAction {
    Greet,
    Welcome,
}

impl Action for VisitorAction {
    fn name(&self) -> &str {
        match self {
            VisitorAction::Greet => "greet",
            VisitorAction::Welcome => "welcome",
        }
    }
}

impl State for Visitor {
    type Event = VisitorEvent;
    type Action = VisitorAction;
    fn apply(&mut self, e: &VisitorEvent) {
        match e {
            VisitorEvent::Greeted {} => self.greeted = true,
            VisitorEvent::Welcomed {} => self.welcomed = true,
        }
    }
    // Doing it twice changes nothing, so a redelivered event is harmless.
    fn decide(&self, a: &VisitorAction) -> Result<Vec<VisitorEvent>, Invariant> {
        Ok(match a {
            VisitorAction::Greet if !self.greeted => vec![VisitorEvent::Greeted {}],
            VisitorAction::Welcome if !self.welcomed => vec![VisitorEvent::Welcomed {}],
            _ => vec![],
        })
    }
}

/// The application: what `worker` and `settle` run.
fn app(store: Arc<dyn Store>) -> act::Result<Act> {
    let greetings = act::on!(VisitorEvent { Greeted })
        .named("greetings")
        .to_raw(|e| e.stream.starts_with("visitor-").then(|| e.stream.clone()))
        .from_beginning()
        .handle(|_, _, ctx| async move {
            ctx.act::<Visitor>(ctx.stream(), &VisitorAction::Welcome)
                .await?;
            Ok(())
        });
    Act::builder(store).reaction(greetings).build()
}

/// This program's own command, beside the operator commands.
#[derive(clap::Subcommand)]
enum Own {
    /// Greet a visitor: append `Greeted` to `visitor-NAME`.
    Greet { name: String },
}

fn main() -> std::process::ExitCode {
    act_cli::Program::new("my-worker", app)
        .commands(|globals, Own::Greet { name }| async move {
            let visitor = format!("visitor-{name}");
            let app = app(globals.open().await?)?;
            app.act::<Visitor>(&visitor, &VisitorAction::Greet, &Actor::system("my-worker"))
                .await?;
            Ok(())
        })
        .main()
}
