//! One module per command; `run` dispatches.

mod demo;

use crate::cli::{Cli, Command};
use crate::error::CliError;

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Demo(args) => demo::run(&cli, args).await,
    }
}
