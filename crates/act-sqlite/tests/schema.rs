//! Opening files: new, ours, newer, foreign, not a database, corrupt — each a
//! clear error naming the file, never a panic, never a silent re-create.

use std::path::Path;

use act::{Append, Error, EventStore, Message, Query};
use act_sqlite::{SqliteStore, SCHEMA_VERSION};
use serde_json::json;

fn ping() -> Vec<Message> {
    vec![Message::new("Ping", json!({"n": 1}))]
}

fn schema_error(e: Error, path: &Path) -> String {
    match e {
        Error::Schema { store, message } => {
            assert!(
                store.contains(&path.display().to_string()),
                "the error names the file: {store}"
            );
            message
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_new_file_gets_the_current_schema_and_keeps_its_data_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    {
        let s = SqliteStore::open(&path).await.unwrap();
        s.append(Append::new("a", ping())).await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("SELECT max(version) FROM act_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.query(&Query::new()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_file_from_a_newer_act_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    drop(SqliteStore::open(&path).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO act_migrations (version, name, applied_at) VALUES (?1, 'future', 'later')",
        [SCHEMA_VERSION + 5],
    )
    .unwrap();
    drop(conn);
    let msg = schema_error(SqliteStore::open(&path).await.unwrap_err(), &path);
    assert!(
        msg.contains("newer act-rs") && msg.contains("upgrade"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_foreign_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('ann');")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let msg = schema_error(SqliteStore::open(&path).await.unwrap_err(), &path);
    assert!(
        msg.contains("not an act-rs database") && msg.contains("users"),
        "{msg}"
    );
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file was modified"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let text = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &text).unwrap();
    let msg = schema_error(SqliteStore::open(&path).await.unwrap_err(), &path);
    assert!(msg.contains("not a SQLite database"), "{msg}");
    assert!(
        std::fs::read_to_string(&path).unwrap() == text,
        "the file was modified"
    );
}

#[tokio::test]
async fn a_corrupt_database_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    {
        let s = SqliteStore::open(&path).await.unwrap();
        for _ in 0..200 {
            s.append(Append::new("a", ping())).await.unwrap();
        }
    }
    // Checkpoint the WAL into the file, then overwrite the pages after the
    // schema page with garbage.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 3 * page);
    for b in &mut bytes[page..] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = match SqliteStore::open(&path).await {
        Err(e) => e,
        Ok(s) => s.query(&Query::new()).await.unwrap_err(),
    };
    let msg = schema_error(err, &path);
    assert!(
        msg.contains("corrupt") || msg.contains("not a SQLite database"),
        "{msg}"
    );
}

#[tokio::test]
async fn stores_opening_a_new_file_at_once_migrate_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    let mut opens = Vec::new();
    for _ in 0..6 {
        let p = path.clone();
        opens.push(tokio::spawn(async move {
            SqliteStore::open(&p).await.map(|_| ())
        }));
    }
    for o in opens {
        o.await.unwrap().unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM act_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, SCHEMA_VERSION);
}

#[tokio::test]
async fn a_missing_directory_is_an_error_naming_the_file() {
    let err = SqliteStore::open("/nonexistent-dir/x/act.db")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent-dir/x/act.db") && text.contains("cannot open"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stored_payload_that_is_not_json_reads_back_as_an_undecodable_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.db");
    let s = SqliteStore::open(&path).await.unwrap();
    let e = s.append(Append::new("a", ping())).await.unwrap();
    s.append(Append::new("a", ping())).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE events SET data = '{not json' WHERE id = ?1",
        [e[0].id],
    )
    .unwrap();
    drop(conn);
    // One bad row never fails a read: it comes back marked, with its text.
    let all = s.query(&Query::new()).await.unwrap();
    assert_eq!(all.len(), 2);
    let why = all[0].undecodable_error().expect("marked undecodable");
    assert!(why.contains("not valid JSON"), "{why}");
    assert_eq!(all[0].data[act::UNDECODABLE]["raw"], "{not json");
    assert_eq!(
        (all[0].id, all[0].name.as_str(), all[0].stream.as_str()),
        (e[0].id, "Ping", "a")
    );
    assert_eq!(all[1].undecodable_error(), None);
    assert_eq!(all[1].data, json!({"n": 1}));
}
