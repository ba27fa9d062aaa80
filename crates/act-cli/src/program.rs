//! [`Program`]: a program's name, its application and its own flags and
//! commands, turned into a command line with every operator command.

use std::ffi::OsString;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use act::{Act, Store};
use clap::{Args, CommandFactory, FromArgMatches, Subcommand};

use crate::cli::{Cli, LONG_HELP, TRACES_HELP};
use crate::{commands, stores, Error};

/// The global flags every command takes, as a program's own commands
/// receive them.
#[derive(Debug, Clone)]
pub struct Globals {
    /// `--store` (or `$ACT_STORE`, or `sqlite://act.db`): a store URL.
    pub store: String,
    /// `--json`: print one JSON object per line instead of text.
    pub json: bool,
}

impl Globals {
    /// Opens the store named by `--store`, creating it when missing (see
    /// [`stores::open`]).
    pub async fn open(&self) -> act::Result<Arc<dyn Store>> {
        stores::open(&self.store).await
    }
}

/// No flags of a program's own: what [`Program::new`] flattens into
/// `worker` and `settle`.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct NoArgs {}

/// No commands of a program's own (until [`Program::commands`]).
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum NoCommands {}

/// Builds the application on the store, given the program's own flags.
pub(crate) type AppFn<A> = dyn Fn(Arc<dyn Store>, &A) -> act::Result<Act> + Send + Sync;
type OwnFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;
type Own<X> = Box<dyn Fn(Globals, X) -> OwnFuture + Send + Sync>;

/// A program built on act: its application, run by `worker` and `settle`,
/// and every operator command (`status`, `blocked`, `unblock`, `reset`,
/// `events`, `reactions`, `retire`) on the store named by `--store`.
///
/// `A` is the program's own flags, flattened into `worker` and `settle` and
/// handed to the application's constructor; `X` its own commands.
///
/// ```no_run
/// use std::sync::Arc;
///
/// #[derive(clap::Args)]
/// struct MyArgs {
///     /// Greet in French.
///     #[arg(long)]
///     french: bool,
/// }
///
/// fn my_app(store: Arc<dyn act::Store>, args: &MyArgs) -> act::Result<act::Act> {
///     let _ = args.french; // choose reactions by the flags
///     act::Act::builder(store).build()
/// }
///
/// fn main() -> std::process::ExitCode {
///     act_cli::Program::with_args("my-worker", |store, args: &MyArgs| my_app(store, args)).main()
/// }
/// ```
pub struct Program<A = NoArgs, X = NoCommands> {
    name: &'static str,
    about: Option<String>,
    version: Option<&'static str>,
    app: Box<AppFn<A>>,
    own: Own<X>,
}

impl Program {
    /// A program called `name` (in help and usage) whose application `app`
    /// builds on the store. `app` runs once per `worker` or `settle`, after
    /// the store opened; an error from it ends the command with exit code 1.
    pub fn new(
        name: &'static str,
        app: impl Fn(Arc<dyn Store>) -> act::Result<Act> + Send + Sync + 'static,
    ) -> Program {
        Program::with_args(name, move |store, _: &NoArgs| app(store))
    }

    /// A program with flags of its own: `A`'s flags are added to `worker`
    /// and `settle`, and `app` gets them with the store.
    pub fn with_args<A: Args>(
        name: &'static str,
        app: impl Fn(Arc<dyn Store>, &A) -> act::Result<Act> + Send + Sync + 'static,
    ) -> Program<A> {
        Program {
            name,
            about: None,
            version: None,
            app: Box::new(app),
            own: Box::new(|_, none: NoCommands| match none {}),
        }
    }
}

impl<A, X> Program<A, X> {
    /// The first line of `--help` (default: "NAME: an act application's
    /// worker and operator commands.").
    pub fn about(mut self, about: impl Into<String>) -> Self {
        self.about = Some(about.into());
        self
    }

    /// Adds `--version`, printing `version` (e.g. `env!("CARGO_PKG_VERSION")`).
    pub fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    /// Commands of the program's own beside the built-in ones (listed
    /// first in `--help`): `run` gets the global flags and the parsed
    /// command; its error ends the process like a built-in command's. A
    /// name that collides with a built-in command panics at parse time.
    pub fn commands<Y, F, Fut>(self, run: F) -> Program<A, Y>
    where
        Y: Subcommand,
        F: Fn(Globals, Y) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        Program {
            name: self.name,
            about: self.about,
            version: self.version,
            app: self.app,
            own: Box::new(move |globals, command| Box::pin(run(globals, command))),
        }
    }
}

impl<A, X> Program<A, X>
where
    A: Args + Send + Sync,
    X: Subcommand + Send,
{
    /// Runs the program on the process's arguments and returns its exit
    /// code: parses them (a usage error prints clap's message and exits
    /// with 2; `--help` exits 0), starts logging to stderr (`$ACT_LOG`, an
    /// env filter, default `warn`) and, with `--otlp-endpoint` (feature
    /// `opentelemetry`), traces to a collector, with act's default trace
    /// propagator set before the application is built; starts a
    /// multi-threaded tokio runtime, runs the command, sends the last spans,
    /// and maps the outcome: 0 success, 1 an operational error (printed as
    /// one `error: …` line on stderr, like a bad `--otlp-endpoint`).
    pub fn main(self) -> ExitCode {
        let cli = match self.parse(std::env::args_os()) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        };
        #[cfg(feature = "opentelemetry")]
        let logging = crate::logging::start(cli.log_format, &cli.otel, self.name);
        #[cfg(not(feature = "opentelemetry"))]
        let logging = crate::logging::start(cli.log_format);
        let logging = match logging {
            Ok(logging) => logging,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::from(1);
            }
        };
        let code = match runtime.block_on(self.execute(cli)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(Error::Usage(e)) => {
                let _ = e.print();
                ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        };
        // Off the runtime: the last spans are sent (a bounded wait).
        logging.finish();
        code
    }

    /// Runs one command line (`args` starts with the program's name, as
    /// `std::env::args_os()` does) inside an async context the caller owns;
    /// sets up neither logging, traces (`--otlp-endpoint` is ignored) nor a
    /// runtime. A bad command line is
    /// [`Error::Usage`] (so are `--help` and `--version`: `e.exit()` prints
    /// them); `worker` runs until SIGINT/SIGTERM.
    pub async fn run<I, T>(&self, args: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = self.parse(args)?;
        self.execute(cli).await
    }

    async fn execute(&self, cli: Cli<A, X>) -> Result<(), Error> {
        let globals = Globals {
            store: cli.store,
            json: cli.json,
        };
        match commands::run(&globals, cli.command, &*self.app).await {
            Ok(done) => done,
            Err(own) => (self.own)(globals, own).await,
        }
    }

    fn parse<I, T>(&self, args: I) -> Result<Cli<A, X>, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let about = self.about.clone().unwrap_or_else(|| {
            format!(
                "{}: an act application's worker and operator commands.",
                self.name
            )
        });
        let mut command = Cli::<A, X>::command()
            .name(self.name)
            .bin_name(self.name)
            .long_about(format!("{about}\n\n{LONG_HELP}{TRACES_HELP}"))
            .about(about);
        if let Some(version) = self.version {
            command = command.version(version);
        }
        let matches = command.try_get_matches_from_mut(args)?;
        #[allow(unused_mut)]
        let mut cli =
            Cli::<A, X>::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        #[cfg(feature = "opentelemetry")]
        {
            cli.otel.endpoint_from_env = matches.value_source("otlp_endpoint")
                == Some(clap::parser::ValueSource::EnvVariable);
        }
        Ok(cli)
    }
}
