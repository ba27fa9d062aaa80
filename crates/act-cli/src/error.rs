//! Errors of the `act` command.

/// What can make a command fail (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The library or the store failed.
    #[error(transparent)]
    Act(#[from] act::Error),
    /// The demo's log check found problems.
    #[error("the log check failed:\n  {}", .0.join("\n  "))]
    Check(Vec<String>),
    /// Writing the output failed (a closed pipe is not an error).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}
