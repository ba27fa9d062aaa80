//! Errors of the operator commands.

/// What can make a command fail. [`Error::exit_code`] maps it to the
/// process's exit code: 2 for a usage error, 1 for everything else.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong (or asks for `--help`/`--version`, which
    /// clap reports as an "error" too): `e.exit()` prints it and exits with
    /// its code. Only [`Program::run`](crate::Program::run) returns it;
    /// [`Program::main`](crate::Program::main) prints it and exits 2.
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// The library or the store failed.
    #[error(transparent)]
    Act(#[from] act::Error),
    /// A check found problems (the `act` binary's demo checks its log).
    #[error("the log check failed:\n  {}", .0.join("\n  "))]
    Check(Vec<String>),
    /// A program's own command failed; the message says why.
    #[error("{0}")]
    Failed(String),
    /// Writing the output (stdout) failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    /// The exit code a process ends with on this error: clap's for
    /// [`Error::Usage`] (2; 0 for `--help` and `--version`), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(e) => u8::try_from(e.exit_code()).unwrap_or(2),
            _ => 1,
        }
    }
}
