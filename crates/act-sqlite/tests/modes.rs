//! Open modes: `Create` makes the file, `Existing` never does, `ReadOnly`
//! never creates, migrates or writes anything and refuses writes.

use std::path::Path;
use std::time::Duration;

use act::{
    Append, Claim, Correlation, Error, EventStore, Message, OpenMode, Query, QueueFilter,
    QueueStore, Subscription, Work,
};
use act_sqlite::{SqliteOptions, SqliteStore, SCHEMA_VERSION};
use serde_json::json;

fn options() -> SqliteOptions {
    SqliteOptions {
        watch_every: None,
        ..Default::default()
    }
}

async fn open(path: &Path, mode: OpenMode) -> act::Result<SqliteStore> {
    SqliteStore::open_with_mode(path, options(), mode).await
}

fn missing(r: act::Result<SqliteStore>, path: &Path) {
    match r {
        Err(Error::Missing { store }) => {
            assert!(store.contains(&path.display().to_string()), "{store}")
        }
        other => panic!("expected Error::Missing, got {other:?}"),
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A v2 store with 3 events, a subscription and one queue with work.
async fn populated(path: &Path) {
    let s = open(path, OpenMode::Create).await.unwrap();
    let messages = (0..3)
        .map(|i| Message::new("Ping", json!({ "i": i })))
        .collect();
    let ids: Vec<i64> = s
        .append(Append::new("a", messages))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    s.subscribe(&[Subscription {
        name: "r".into(),
        events: vec!["Ping".into()],
        target: None,
        start: 0,
    }])
    .await
    .unwrap();
    s.enqueue(&Correlation {
        reactions: vec!["r".into()],
        replay: None,
        from: 0,
        to: ids[2],
        work: ids
            .iter()
            .map(|&event| Work {
                stream: "q".into(),
                event,
                reaction: "r".into(),
                priority: 0,
            })
            .collect(),
    })
    .await
    .unwrap();
    s.close().await;
}

#[tokio::test]
async fn existing_and_read_only_never_create_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("act.db");
    missing(open(&path, OpenMode::Existing).await, &path);
    missing(open(&path, OpenMode::ReadOnly).await, &path);
    let url = format!("sqlite://{}", path.display());
    missing(
        SqliteStore::open_url_mode(&url, OpenMode::ReadOnly).await,
        &path,
    );
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    let text = Error::Missing { store: url.clone() }.to_string();
    assert!(text.contains("act worker"), "{text}");
}

#[tokio::test]
async fn an_empty_database_is_no_store_for_existing_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::write(&path, b"").unwrap();
    missing(open(&path, OpenMode::Existing).await, &path);
    missing(open(&path, OpenMode::ReadOnly).await, &path);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "nothing was written"
    );
}

#[tokio::test]
async fn existing_opens_a_store_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("act.db");
    populated(&path).await;
    let s = open(&path, OpenMode::Existing).await.unwrap();
    assert!(!s.is_read_only());
    s.append(Append::new("a", vec![Message::new("Ping", json!({}))]))
        .await
        .unwrap();
    assert_eq!(s.head().await.unwrap(), 4);
    assert_eq!(s.reset("q", 0).await.unwrap().replay, Some(0));
}

#[tokio::test]
async fn a_read_only_store_reads_a_v2_store_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("act.db");
    populated(&path).await;
    let before = std::fs::read(&path).unwrap();
    let s = open(&path, OpenMode::ReadOnly).await.unwrap();
    assert!(s.is_read_only());
    assert_eq!(s.query(&Query::new()).await.unwrap().len(), 3);
    assert_eq!(s.head().await.unwrap(), 3);
    let q = &s.queues(&QueueFilter::default()).await.unwrap()[0];
    assert_eq!((q.stream.as_str(), q.lag, q.next), ("q", 3, Some(1)));
    let subs = s.subscriptions().await.unwrap();
    assert_eq!((subs[0].name.as_str(), subs[0].checkpoint), ("r", 3));
    assert!(s.replays().await.unwrap().is_empty());
    assert_eq!(s.legacy_checkpoint().await.unwrap(), 0);
    assert_eq!(
        s.next_due(&["r".to_string()]).await.unwrap(),
        Some(Duration::ZERO)
    );

    let read_only = |r: act::Result<()>| match r {
        Err(Error::InvalidInput(m)) => assert!(m.contains("opened read-only"), "{m}"),
        other => panic!("a write on a read-only store must be refused, got {other:?}"),
    };
    read_only(
        s.append(Append::new("a", vec![Message::new("Ping", json!({}))]))
            .await
            .map(|_| ()),
    );
    read_only(
        s.claim(&Claim {
            owner: "o".into(),
            queues: 1,
            events: 1,
            lease: Duration::from_secs(30),
            reactions: vec!["r".into()],
        })
        .await
        .map(|_| ()),
    );
    read_only(s.subscribe(&[]).await.map(|_| ()));
    read_only(s.unblock(&["q".into()]).await.map(|_| ()));
    read_only(s.reset("q", 0).await.map(|_| ()));
    read_only(s.retire(&["r".into()]).await.map(|_| ()));
    read_only(s.release(&[]).await.map(|_| ()));
    read_only(s.settle(&[]).await.map(|_| ()));
    read_only(
        s.enqueue(&Correlation {
            reactions: vec![],
            replay: None,
            from: 0,
            to: 0,
            work: vec![],
        })
        .await
        .map(|_| ()),
    );
    s.close().await;
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file was modified"
    );
    // SQLite's readers of a WAL file share its `-shm` index and open its
    // `-wal`, creating both when the directory allows; a reader cannot
    // checkpoint, so they stay, empty of commits.
    for f in files(dir.path()) {
        assert!(
            ["act.db", "act.db-shm", "act.db-wal"].contains(&f.as_str()),
            "{f}"
        );
    }
    let wal = dir.path().join("act.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
}

#[tokio::test]
async fn a_read_only_store_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("act.db");
    populated(&path).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO act_migrations (version, name, applied_at) VALUES (?1, 'future', 'later')",
        [SCHEMA_VERSION + 1],
    )
    .unwrap();
    drop(conn);
    match open(&path, OpenMode::ReadOnly).await {
        Err(Error::Schema { message, .. }) => {
            assert!(message.contains("newer act-rs"), "{message}")
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
}

/// A read-only directory: SQLite can create neither `-wal` nor `-shm`.
/// (Root ignores directory permissions: then this checks the ordinary path
/// only; the CI runs it as a normal user.)
#[cfg(unix)]
#[tokio::test]
async fn a_read_only_store_works_in_a_read_only_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("ro");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("act.db");
    populated(&path).await;
    assert_eq!(files(&sub), vec!["act.db"]);
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o555)).unwrap();
    let enforced = std::fs::write(sub.join("probe"), b"").is_err();
    if !enforced {
        let _ = std::fs::remove_file(sub.join("probe"));
        eprintln!("directory permissions are not enforced for this user (root?): checking the ordinary read-only path only");
    }
    let result = async {
        let s = open(&path, OpenMode::ReadOnly).await?;
        let n = s.query(&Query::new()).await?.len();
        let lag = s.queues(&QueueFilter::default()).await?[0].lag;
        s.close().await;
        Ok::<_, Error>((n, lag))
    }
    .await;
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(result.unwrap(), (3, 3));
    if enforced {
        assert_eq!(files(&sub), vec!["act.db"]);
    }
}
