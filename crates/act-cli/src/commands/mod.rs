//! One module per command family; `run` dispatches the built-in commands.

mod events;
mod queues;
mod reactions;
mod worker;

use clap::{Args, Subcommand};

use crate::cli::Command;
use crate::program::AppFn;
use crate::{Error, Globals};

/// Runs a built-in command; `app` builds the application on the store for
/// `worker` and `settle`. A program's own command is handed back as
/// `Err(command)` for its handler.
pub(crate) async fn run<A: Args, X: Subcommand>(
    cli: &Globals,
    command: Command<A, X>,
    app: &AppFn<A>,
) -> Result<Result<(), Error>, X> {
    let done = match command {
        Command::Own(own) => return Err(own),
        Command::Worker(args) => worker::worker(cli, &args, |s| app(s, &args.app)).await,
        Command::Settle(args) => worker::settle(cli, &args, |s| app(s, &args.app)).await,
        Command::Status(args) => queues::status(cli, &args).await,
        Command::Blocked => queues::blocked(cli).await,
        Command::Unblock(args) => queues::unblock(cli, &args).await,
        Command::Reset(args) => queues::reset(cli, &args).await,
        Command::Reactions => reactions::list(cli).await,
        Command::Retire(args) => reactions::retire(cli, &args).await,
        Command::Events(args) => events::run(cli, &args).await,
    };
    Ok(done)
}

/// Installs SIGINT and SIGTERM handlers now (so a signal that arrives while
/// the command is still starting is not lost) and returns a future that
/// resolves on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
