//! Opening a file in one of the three [`OpenMode`]s: the connections, the
//! checks made before anything is written, the migration, and the watcher
//! thread that notices commits by other processes. Also the `sqlite://` URL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use act::{Error, OpenMode, Wake};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

use crate::error::Failure;
use crate::schema;
use crate::SqliteOptions;

/// The connections of an opened store.
pub(crate) struct Opened {
    /// `None` when opened read-only.
    pub writer: Option<Connection>,
    pub readers: Vec<Connection>,
    pub watcher: Option<Connection>,
}

/// Opens the connections, retrying with backoff (up to 30 s) while other
/// processes hold locks that opening needs (switching a new file to WAL needs
/// it to itself for a moment, and SQLite does not wait for that). Other
/// failures (a full disk, a read-only file) are reported at once.
pub(crate) fn connect(
    path: &Path,
    name: &str,
    opts: &SqliteOptions,
    mode: OpenMode,
) -> act::Result<Opened> {
    if mode != OpenMode::Create {
        // Never let SQLite create the file: without CREATE it could not
        // anyway, but its error would not say "missing".
        if let Err(e) = std::fs::metadata(path) {
            if e.kind() == std::io::ErrorKind::NotFound {
                return Err(Error::Missing {
                    store: name.to_string(),
                });
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(2);
    loop {
        let attempt = match mode {
            OpenMode::ReadOnly => read_only(path, name, opts),
            OpenMode::Create | OpenMode::Existing => writable(path, name, opts, mode),
        };
        match attempt {
            Err(f) if f.is_busy() && std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other.map_err(|f| f.into_act(name)),
        }
    }
}

fn open(path: &Path, flags: OpenFlags, opts: &SqliteOptions) -> Result<Connection, Failure> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(opts.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Reads (in one snapshot) whether the file holds an act-rs store; an empty
/// database is [`Error::Missing`] in the modes that do not create one.
fn check_ours(conn: &mut Connection, name: &str) -> Result<bool, Failure> {
    let tx = conn.transaction()?;
    let ours = schema::is_ours(&tx, name)?;
    tx.finish()?;
    Ok(ours)
}

fn missing(name: &str) -> Failure {
    Failure::Act(Error::Missing {
        store: name.to_string(),
    })
}

fn writable(
    path: &Path,
    name: &str,
    opts: &SqliteOptions,
    mode: OpenMode,
) -> Result<Opened, Failure> {
    let flags = match mode {
        OpenMode::Create => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        _ => OpenFlags::SQLITE_OPEN_READ_WRITE,
    };
    let mut writer = open(path, flags, opts)?;
    // Read-only checks first: a foreign, corrupt or non-database file is
    // refused before anything (even the journal mode) is written to it.
    if !check_ours(&mut writer, name)? && mode == OpenMode::Existing {
        return Err(missing(name));
    }
    let journal: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(Failure::Act(Error::Schema {
            store: name.to_string(),
            message: format!("cannot switch the journal to WAL (it is `{journal}`); is the file on a network share?"),
        }));
    }
    writer.pragma_update(None, "synchronous", "FULL")?;
    schema::migrate(&mut writer, name)?;
    let mut readers = Vec::new();
    for _ in 0..opts.readers.max(1) {
        let r = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE, opts)?;
        r.pragma_update(None, "query_only", true)?;
        readers.push(r);
    }
    let watcher = match opts.watch_every {
        Some(_) => Some(open(path, OpenFlags::SQLITE_OPEN_READ_WRITE, opts)?),
        None => None,
    };
    Ok(Opened {
        writer: Some(writer),
        readers,
        watcher,
    })
}

/// Opens for reading only: `SQLITE_OPEN_READ_ONLY`, no journal switch, no
/// migration, no write of any kind. A WAL file whose `-wal` and `-shm`
/// companions are gone (its last writer closed cleanly) cannot be read that
/// way when its directory is read-only (SQLite cannot create them); such a
/// file is then opened `immutable`: nobody can write to it either while the
/// directory stays read-only, since a writer needs the `-wal` file.
fn read_only(path: &Path, name: &str, opts: &SqliteOptions) -> Result<Opened, Failure> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY;
    let (mut first, target, flags) = match open(path, flags, opts)
        .and_then(|mut c| check_ours(&mut c, name).map(|ours| (c, ours)))
    {
        Ok((c, ours)) => {
            if !ours {
                return Err(missing(name));
            }
            (c, path.to_path_buf(), flags)
        }
        Err(Failure::Db(e)) if cannot_create_companions(&e) && !wal_exists(path) => {
            let Some(uri) = immutable_uri(path) else {
                return Err(Failure::Db(e));
            };
            let flags = flags | OpenFlags::SQLITE_OPEN_URI;
            let mut c = open(Path::new(&uri), flags, opts)?;
            if !check_ours(&mut c, name)? {
                return Err(missing(name));
            }
            (c, PathBuf::from(uri), flags)
        }
        Err(f) => return Err(f),
    };
    {
        let tx = first.transaction()?;
        schema::check_current(&tx, name)?;
        tx.finish()?;
    }
    first.pragma_update(None, "query_only", true)?;
    let mut readers = vec![first];
    for _ in 1..opts.readers.max(1) {
        let r = open(&target, flags, opts)?;
        r.pragma_update(None, "query_only", true)?;
        readers.push(r);
    }
    let watcher = match opts.watch_every {
        Some(_) => Some(open(&target, flags, opts)?),
        None => None,
    };
    Ok(Opened {
        writer: None,
        readers,
        watcher,
    })
}

/// SQLite's answer when a reader of a WAL file cannot open or create its
/// `-wal` or `-shm` file.
fn cannot_create_companions(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
    )
}

fn wal_exists(path: &Path) -> bool {
    let mut wal = path.as_os_str().to_os_string();
    wal.push("-wal");
    Path::new(&wal).exists()
}

/// `file:PATH?immutable=1`, with the characters URIs reserve escaped; `None`
/// for a path that is not UTF-8.
fn immutable_uri(path: &Path) -> Option<String> {
    let mut uri = String::from("file:");
    for c in path.to_str()?.chars() {
        match c {
            '?' | '#' | '%' => uri.push_str(&format!("%{:02X}", c as u32)),
            _ => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Some(uri)
}

/// The thread that polls `PRAGMA data_version` and how to stop it.
pub(crate) struct Watcher {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    /// Polls `PRAGMA data_version` (it changes when *another* connection
    /// commits) every `every` and signals the wake channel.
    pub(crate) fn start(
        conn: Connection,
        every: Duration,
        wake: Arc<watch::Sender<Wake>>,
    ) -> std::io::Result<Watcher> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("act-sqlite-watcher".into())
            .spawn(move || {
                let version = |c: &Connection| {
                    c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                        .ok()
                };
                let mut last = version(&conn);
                // Ends when the store drops its end of the channel.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    let now = version(&conn);
                    if now.is_some() && now != last {
                        last = now;
                        wake.send_modify(Wake::new_events);
                    }
                }
            })?;
        Ok(Watcher { stop, thread })
    }

    /// Stops polling; returns the thread, which closes its connection.
    pub(crate) fn close(self) -> std::thread::JoinHandle<()> {
        drop(self.stop);
        self.thread
    }
}

/// Every option a `sqlite://` URL may carry.
pub const KNOWN_OPTIONS: &[&str] = &["readers", "busy_timeout_ms", "watch_ms", "queue_sync"];

/// Splits `sqlite://PATH?options` into a path and options.
/// `sqlite://act.db` and `sqlite://data/act.db` are relative to the
/// working directory, `sqlite:///var/lib/act.db` is absolute. The path and
/// option values are percent-decoded (`%25` for `%`, `%3F` for `?`, `%23`
/// for `#`; `+` stays a plus) and the path is used as it is otherwise
/// (`sqlite://../data/act.db` is the parent directory's). Options (each at most
/// once): `readers=N` (2; 1–64), `busy_timeout_ms=N` (5000),
/// `watch_ms=N` (2; 0 disables cross-process wake-ups),
/// `queue_sync=normal|full` (`normal`). An unknown option is an error
/// listing the known ones.
pub fn parse_url(url: &str) -> act::Result<(PathBuf, SqliteOptions)> {
    if !url.starts_with("sqlite://") {
        return Err(Error::UnknownStore {
            url: act::redact_url(url),
            supported: "sqlite://PATH".into(),
        });
    }
    let bad = |what: String| Error::InvalidInput(format!("`{url}`: {what}"));
    // A SQLite path is a file path, not a URL's host and path: `..`, `.`,
    // upper case, spaces and `C:` mean what they mean to the file system, so
    // the path is only percent-decoded, never normalized; the options are a
    // query string.
    let rest = &url["sqlite://".len()..];
    let (raw_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if raw_path.contains('#') || query.contains('#') {
        return Err(bad("a `#` in the path is written `%23`".into()));
    }
    let decode = |what: &str, s: &str| -> act::Result<String> {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|d| d.into_owned())
            .map_err(|_| bad(format!("the {what} is not UTF-8 once percent-decoded")))
    };
    let path = decode("path", raw_path)?;
    if path.is_empty() {
        return Err(Error::InvalidInput(format!(
            "`{url}` names no file: use sqlite://PATH, e.g. sqlite://act.db"
        )));
    }
    let mut options = SqliteOptions::default();
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode("option name", raw_key)?;
        let value = decode("option value", raw_value)?;
        if !KNOWN_OPTIONS.contains(&key.as_str()) {
            return Err(Error::InvalidInput(format!(
                "unknown option `{key}` in `{url}`: known options are {}",
                KNOWN_OPTIONS.join(", ")
            )));
        }
        if seen.contains(&key) {
            return Err(bad(format!("option `{key}` is given twice")));
        }
        seen.push(key.clone());
        let number = || {
            value.parse::<u64>().map_err(|_| {
                Error::InvalidInput(format!(
                    "`{key}` in `{url}` must be a whole number, got `{value}`"
                ))
            })
        };
        match key.as_str() {
            "readers" => {
                let n = number()?;
                if !(1..=64).contains(&n) {
                    return Err(Error::InvalidInput(format!(
                        "`readers` in `{url}` must be 1 to 64 reader connections, got `{value}`"
                    )));
                }
                options.readers = n as usize
            }
            "busy_timeout_ms" => options.busy_timeout = Duration::from_millis(number()?),
            "queue_sync" => {
                options.fsync_queue_writes = match value.as_str() {
                    "full" => true,
                    "normal" => false,
                    _ => {
                        return Err(Error::InvalidInput(format!(
                            "`queue_sync` in `{url}` must be `full` or `normal`, got `{value}`"
                        )))
                    }
                }
            }
            "watch_ms" => {
                options.watch_every = match number()? {
                    0 => None,
                    ms => Some(Duration::from_millis(ms)),
                }
            }
            _ => unreachable!("every known option is handled"),
        }
    }
    Ok((PathBuf::from(path), options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file_and_options() {
        let (p, o) = parse_url("sqlite://act.db").unwrap();
        assert_eq!(p, PathBuf::from("act.db"));
        assert_eq!(o.readers, 2);
        let (p, o) =
            parse_url("sqlite:///var/lib/x.db?readers=4&watch_ms=0&busy_timeout_ms=100").unwrap();
        assert_eq!(p, PathBuf::from("/var/lib/x.db"));
        assert_eq!(
            (o.readers, o.watch_every, o.busy_timeout),
            (4, None, Duration::from_millis(100))
        );
        assert!(!o.fsync_queue_writes);
        assert!(
            parse_url("sqlite://x.db?queue_sync=full")
                .unwrap()
                .1
                .fsync_queue_writes
        );
        assert!(parse_url("sqlite://x.db?queue_sync=sometimes")
            .unwrap_err()
            .to_string()
            .contains("`full` or `normal`"));
        assert!(parse_url("sqlite://")
            .unwrap_err()
            .to_string()
            .contains("names no file"));
        for n in ["0", "65"] {
            let e = parse_url(&format!("sqlite://x.db?readers={n}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("must be 1 to 64 reader connections"), "{n}: {e}");
        }
        assert!(parse_url("sqlite://x.db?readers=lots")
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        assert!(parse_url("sqlite://x.db?nope=1")
            .unwrap_err()
            .to_string()
            .contains("unknown option `nope`"));
    }

    #[test]
    fn paths_are_percent_decoded_and_keep_relative_or_absolute() {
        for (url, path) in [
            ("sqlite://act.db", "act.db"),
            ("sqlite://Data/Act.db", "Data/Act.db"),
            ("sqlite://./data/act.db", "./data/act.db"),
            ("sqlite://../act.db", "../act.db"),
            (
                "sqlite:///var/lib/my%20app/act.db",
                "/var/lib/my app/act.db",
            ),
            ("sqlite:///tmp/50%25%3F%23.db", "/tmp/50%?#.db"),
            ("sqlite://c++.db", "c++.db"),
            // File paths, not URL paths: never normalized.
            ("sqlite://x/../y.db", "x/../y.db"),
            ("sqlite://../../data/act.db", "../../data/act.db"),
            ("sqlite://my file.db", "my file.db"),
            ("sqlite://C:/data/act.db", "C:/data/act.db"),
        ] {
            assert_eq!(parse_url(url).unwrap().0, PathBuf::from(path), "{url}");
        }
        let e = parse_url("sqlite://x.db?readers=1&readers=2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("option `readers` is given twice"), "{e}");
        let e = parse_url("sqlite://x.db?nope=1").unwrap_err().to_string();
        assert!(
            e.contains("known options are readers, busy_timeout_ms, watch_ms, queue_sync"),
            "{e}"
        );
        let e = parse_url("sqlite://x.db?busy_timeout_ms=1s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`busy_timeout_ms`"), "{e}");
        let e = parse_url("sqlite://x.db?watch_ms=")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`watch_ms`"), "{e}");
    }

    #[test]
    fn immutable_uris_escape_what_uris_reserve() {
        assert_eq!(
            immutable_uri(Path::new("/ro/a?b#c%d é.db")).unwrap(),
            "file:/ro/a%3Fb%23c%25d é.db?immutable=1"
        );
    }
}
