//! `act`, the command line of act: the operator commands of [`act_cli`]
//! applied to the bank demo, plus the bank's own `demo` and `bench`.
//!
//! A thin shell: it parses arguments, calls the libraries, and formats the
//! results. Exit codes: 0 success, 1 operational error (message on stderr),
//! 2 usage error.

mod bank;
mod bench;
mod demo;
mod entries;

use std::process::ExitCode;

use act_cli::Program;
use bank::{BankArgs, BankCommand};

/// mimalloc: allocation-heavy paths (JSON, events) ran 20–30% faster than
/// with the system allocator in `act bench`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    Program::with_args("act", |store, bank: &BankArgs| {
        let mut reactions = act_bank::reactions::reactions(bank.options());
        if bank.entries {
            reactions.push(entries::reaction(store.clone(), bank.max_retries)?);
        }
        act::Act::builder(store).reactions(reactions).build()
    })
    .about("act: event sourcing with an event-driven queue store and broker.")
    .version(env!("CARGO_PKG_VERSION"))
    .commands(|globals, command: BankCommand| async move {
        match command {
            BankCommand::Demo(args) => demo::run(&globals, &args).await,
            BankCommand::Bench(args) => bench::run(&globals, &args).await,
            BankCommand::BenchWorker(args) => bench::worker(&globals, &args).await,
        }
    })
    .main()
}
