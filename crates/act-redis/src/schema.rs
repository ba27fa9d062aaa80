//! What `open` checks before the store is used: that Redis will not evict
//! keys (`maxmemory-policy noeviction`), and the schema marker under the
//! prefix (`{prefix}:meta`, field `schema`), written on first open. A prefix
//! written by a newer act-rs, or holding act-like keys without a marker, is
//! refused. A prefix of schema 1 is upgraded to 2 by one script
//! (`upgrade.lua`) unless the store is opened read-only.

use act::{Error, OpenMode};
use redis::Value;

use crate::conn::Conn;
use crate::error::ConfigError;
use crate::reply::{int, items, text};
use crate::scripts;

/// The layout version this build writes under a prefix.
///
/// - 1: queues hold event ids; one correlation checkpoint.
/// - 2: subscriptions with their own checkpoints, items that name their
///   reaction, replays, lease lapses.
/// - 3: the `pending` hash (pending items per reaction, for
///   [`act::QueueStore::pending_by_reaction`]), kept by every script that
///   adds or removes items. A schema-2 build refuses a schema-3 prefix, so
///   every process must run this build before the first one opens it.
pub const SCHEMA_VERSION: i64 = 3;

/// Refuses a server that may evict keys. A server that does not let us read
/// the policy is refused too, unless `assume` (the URL's
/// `assume_noeviction=true`) says the operator checked it.
pub(crate) async fn check_eviction(conn: &Conn, assume: bool) -> act::Result<()> {
    let reply = conn
        .command(redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
        .await;
    let policy = match reply {
        Ok(v) => policy(&v).ok_or_else(|| "the server did not report it".to_string()),
        // Unreachable: report that, not a configuration problem.
        Err(e @ Error::Unavailable { .. }) => return Err(e),
        Err(e) => Err(match &e {
            Error::Store { source, .. } => source.to_string(),
            other => other.to_string(),
        }),
    };
    decide(policy, assume).map_err(|c| Error::Store {
        store: conn.store().to_string(),
        source: Box::new(c),
    })
}

/// The value of a `CONFIG GET` reply (an array of name, value; a map in RESP3).
fn policy(v: &Value) -> Option<String> {
    match v {
        Value::Map(pairs) => pairs.first().and_then(|(_, v)| text(v).ok()),
        v => items(v).ok()?.get(1).and_then(|v| text(v).ok()),
    }
}

fn decide(policy: Result<String, String>, assume: bool) -> Result<(), ConfigError> {
    match policy {
        Ok(p) if p.eq_ignore_ascii_case("noeviction") => Ok(()),
        Ok(p) => Err(ConfigError::Eviction { policy: p }),
        Err(_) if assume => {
            tracing::info!("maxmemory-policy cannot be read; trusting assume_noeviction=true");
            Ok(())
        }
        Err(reason) => Err(ConfigError::PolicyUnreadable { reason }),
    }
}

/// Reads the schema marker and acts on it as `mode` allows: writes it under
/// an empty prefix (`Create`), upgrades a prefix of schema 1 or 2
/// (`Create`, `Existing`), and writes nothing for `ReadOnly`. One or two
/// round trips (the upgrade is one script over the whole older work).
pub(crate) async fn open(conn: &Conn, prefix: &str, mode: OpenMode) -> act::Result<()> {
    let mut inv = conn.script(&scripts::OPEN);
    inv.arg(SCHEMA_VERSION)
        .arg(if mode == OpenMode::Create { "1" } else { "0" });
    let found = int(&conn.run(&inv).await?).map_err(|b| conn.bad(b))?;
    let refuse = |message: String| {
        Err(Error::Schema {
            store: conn.store().to_string(),
            message,
        })
    };
    match found {
        0 => Err(Error::Missing {
            store: conn.store().to_string(),
        }),
        -1 => refuse(format!(
            "prefix `{prefix}` holds act keys but no schema marker ({{{prefix}}}:meta); refusing to touch them"
        )),
        v if v < 1 => refuse(format!(
            "the schema marker {{{prefix}}}:meta is corrupt; refusing to touch prefix `{prefix}`"
        )),
        v if v > SCHEMA_VERSION => refuse(format!(
            "prefix `{prefix}` was written by a newer act-rs: schema version {v}, this build knows versions up to {SCHEMA_VERSION}; upgrade act-rs to open it"
        )),
        v if v < SCHEMA_VERSION && mode == OpenMode::ReadOnly => refuse(format!(
            "prefix `{prefix}` has schema version {v} and this build reads version {SCHEMA_VERSION}; \
             open it once for writing (e.g. `act worker`, or any command that writes) to upgrade it, then read it"
        )),
        v if v < SCHEMA_VERSION => upgrade(conn, prefix).await,
        _ => Ok(()),
    }
}

/// Upgrades a schema-1 or schema-2 prefix to the current version (one script).
async fn upgrade(conn: &Conn, prefix: &str) -> act::Result<()> {
    let mut inv = conn.script(&scripts::UPGRADE);
    inv.arg(SCHEMA_VERSION);
    let after = int(&conn.run(&inv).await?).map_err(|b| conn.bad(b))?;
    if after != SCHEMA_VERSION {
        return Err(Error::Schema {
            store: conn.store().to_string(),
            message: format!(
                "upgrading prefix `{prefix}` to schema version {SCHEMA_VERSION} found version {after}"
            ),
        });
    }
    tracing::info!(store = %conn.store(), prefix, "upgraded the Redis layout to schema version {SCHEMA_VERSION}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_noeviction_is_accepted_and_assume_covers_only_an_unreadable_policy() {
        assert_eq!(decide(Ok("noeviction".into()), false), Ok(()));
        assert_eq!(
            decide(Ok("allkeys-lru".into()), true),
            Err(ConfigError::Eviction {
                policy: "allkeys-lru".into()
            })
        );
        assert!(matches!(
            decide(Err("NOPERM".into()), false),
            Err(ConfigError::PolicyUnreadable { .. })
        ));
        assert_eq!(decide(Err("NOPERM".into()), true), Ok(()));
    }

    #[test]
    fn config_get_replies_in_both_protocols() {
        let name = || Value::BulkString(b"maxmemory-policy".to_vec());
        let value = || Value::BulkString(b"noeviction".to_vec());
        assert_eq!(
            policy(&Value::Array(vec![name(), value()])).as_deref(),
            Some("noeviction")
        );
        assert_eq!(
            policy(&Value::Map(vec![(name(), value())])).as_deref(),
            Some("noeviction")
        );
        assert_eq!(policy(&Value::Array(vec![])), None);
    }
}
