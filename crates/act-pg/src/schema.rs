//! The schema: numbered migrations applied in order inside the configured
//! PostgreSQL schema, recorded in `act_migrations`, under a transaction-level
//! advisory lock so processes starting together do not race. A schema that
//! holds other tables and no act-rs record is refused; a schema written by a
//! newer act-rs is refused with a request to upgrade.
//!
//! Opening never creates or migrates anything unless asked to
//! ([`act::OpenMode`]): `Existing` refuses a missing store, `ReadOnly` only
//! reads the recorded version (it runs against a read-only database).
//!
//! `{s}` in the SQL below is replaced by the (validated) schema name.

use act::OpenMode;
use deadpool_postgres::Object;

use crate::error::map;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 12;

/// The migrations, in order. Never edit a released one; add a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "events, queues, work index, functions", V1),
    (
        2,
        "subscriptions, items per reaction, replays, byte order",
        V2,
    ),
    (3, "an ack while walking a lapsed batch is progress", V3),
    (
        4,
        "deferred attempts, acknowledgements inside a projection's transaction",
        V4,
    ),
    (
        5,
        "correlation writes marks and news, not the queue rows claims and settles hold",
        V5,
    ),
    (
        6,
        "an enqueue says which cursors it moved; a refused renewal locks nothing",
        V6,
    ),
    (
        7,
        "a refused settle, release or acknowledgement locks nothing",
        V7,
    ),
    (8, "act_fold in PL/pgSQL: its plan is kept", V8),
    (
        9,
        "an enqueue reads each target queue once, not once per item",
        V9,
    ),
    (
        10,
        "a claim reads its window, not the backlog, whatever the statistics say",
        V10,
    ),
    (
        11,
        "a settle and a fold look for the next event from where it can be",
        V11,
    ),
    (
        12,
        "an acknowledgement within a transaction looks for the next event from where it can be",
        V12,
    ),
];

/// Version 2: see the file's own comments.
const V2: &str = include_str!("sql/v2.sql");

/// Version 3: see the file's own comments.
const V3: &str = include_str!("sql/v3.sql");

/// Version 4: see the file's own comments.
const V4: &str = include_str!("sql/v4.sql");

/// Version 5: see the file's own comments.
const V5: &str = include_str!("sql/v5.sql");

/// Version 6: see the file's own comments.
const V6: &str = include_str!("sql/v6.sql");

/// Version 7: see the file's own comments.
const V7: &str = include_str!("sql/v7.sql");

/// Version 8: see the file's own comments.
const V8: &str = include_str!("sql/v8.sql");

/// Version 9: see the file's own comments.
const V9: &str = include_str!("sql/v9.sql");

/// Version 10: see the file's own comments.
const V10: &str = include_str!("sql/v10.sql");

/// Version 11: see the file's own comments.
const V11: &str = include_str!("sql/v11.sql");

/// Version 12: see the file's own comments.
const V12: &str = include_str!("sql/v12.sql");

/// The table that records applied migrations.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {s}.act_migrations (
            version    int         PRIMARY KEY,
            name       text        NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )";

const V1: &str = r#"
-- The log. `id` is the commit-safe global position: (transaction id << 16) + n.
CREATE TABLE {s}.events (
    id          bigint      PRIMARY KEY,
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    name        text        NOT NULL,
    data        jsonb       NOT NULL,
    created     timestamptz NOT NULL,
    correlation text        NOT NULL,
    causation   jsonb,
    actor       jsonb,
    CONSTRAINT events_stream_version UNIQUE (stream, version)
);
-- Test-only (negative control): ids from a sequence, as a naive store would.
CREATE SEQUENCE {s}.naive_ids;
-- First append of each idempotency key.
CREATE TABLE {s}.appends (
    key   text   PRIMARY KEY,
    first bigint NOT NULL,
    last  bigint NOT NULL
);
CREATE TABLE {s}.checkpoint (
    id       int    PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL
);
INSERT INTO {s}.checkpoint (id, position) VALUES (1, 0);
CREATE TABLE {s}.queues (
    stream        text        PRIMARY KEY,
    position      bigint      NOT NULL DEFAULT 0,
    head          bigint      NOT NULL DEFAULT 0,
    next          bigint,
    priority      int         NOT NULL DEFAULT 0,
    retries       int         NOT NULL DEFAULT 0,
    retry_at      timestamptz,
    blocked       boolean     NOT NULL DEFAULT false,
    error         text,
    token         bigint      NOT NULL DEFAULT 0,
    lease_owner   text,
    lease_expires timestamptz
);
-- Claim walks this index only: queues with pending work, in claim order.
CREATE INDEX queues_due ON {s}.queues (priority DESC, next, stream)
    WHERE next IS NOT NULL AND NOT blocked;
CREATE TABLE {s}.work (
    stream text   NOT NULL,
    event  bigint NOT NULL,
    PRIMARY KEY (stream, event)
);

-- Append: idempotency key, expected version, insert. One statement.
-- p_expected: NULL any, -1 no stream, n exact. Raises AC409 on a conflict
-- (message: the actual version, or 'none'). Fresh appends return only what
-- the writer does not know (id, version, created; replay false); a used key
-- returns the first append's whole events (replay true).
CREATE FUNCTION {s}.act_append(
    p_stream text, p_expected bigint, p_names text[], p_data jsonb[],
    p_correlation text, p_causation jsonb, p_actor jsonb, p_key text,
    p_offset_us bigint, p_naive boolean, p_delay_ms int
) RETURNS TABLE (
    id bigint, stream text, version bigint, name text, data jsonb, created timestamptz,
    correlation text, causation jsonb, actor jsonb, replay boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_first bigint; v_last bigint; v_actual bigint; v_base bigint;
    v_n int := coalesce(array_length(p_names, 1), 0);
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
BEGIN
    IF p_key IS NOT NULL THEN
        SELECT a.first, a.last INTO v_first, v_last FROM {s}.appends a WHERE a.key = p_key;
        IF FOUND THEN
            RETURN QUERY SELECT e.*, true FROM {s}.events e WHERE e.id BETWEEN v_first AND v_last ORDER BY e.id;
            RETURN;
        END IF;
    END IF;
    SELECT max(e.version) INTO v_actual FROM {s}.events e WHERE e.stream = p_stream;
    IF (p_expected = -1 AND v_actual IS NOT NULL) OR (p_expected >= 0 AND v_actual IS DISTINCT FROM p_expected) THEN
        RAISE EXCEPTION USING ERRCODE = 'AC409', MESSAGE = coalesce(v_actual::text, 'none');
    END IF;
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF p_naive THEN
        v_base := nextval('{s}.naive_ids') * 65536;
    ELSE
        v_base := pg_current_xact_id()::text::bigint << 16;
    END IF;
    INSERT INTO {s}.events AS e (id, stream, version, name, data, created, correlation, causation, actor)
        SELECT v_base + i, p_stream, coalesce(v_actual, -1) + i, p_names[i], p_data[i], v_now,
               p_correlation, p_causation, p_actor
        FROM generate_subscripts(p_names, 1) AS i;
    IF p_key IS NOT NULL THEN
        INSERT INTO {s}.appends (key, first, last) VALUES (p_key, v_base + 1, v_base + v_n);
    END IF;
    IF p_delay_ms > 0 THEN
        PERFORM pg_sleep(random() * p_delay_ms / 1000.0);
    END IF;
    RETURN QUERY SELECT v_base + i, NULL::text, coalesce(v_actual, -1) + i, NULL::text, NULL::jsonb, v_now,
                        NULL::text, NULL::jsonb, NULL::jsonb, false
                 FROM generate_series(1, v_n) AS i;
END $$;

-- Correlation: record work and move the checkpoint if it is still p_from.
-- Locks the checkpoint row (enqueues are serialized), then queue rows in
-- stream order (as settle does), so the two cannot deadlock. While another
-- broker holds the checkpoint (it is correlating), returns the committed
-- checkpoint at once instead of waiting for it: the caller's read is stale
-- either way, and waiting made every extra broker slower.
CREATE FUNCTION {s}.act_enqueue(
    p_from bigint, p_to bigint, p_streams text[], p_events bigint[], p_priorities int[]
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v_cp bigint;
BEGIN
    SELECT c.position INTO v_cp FROM {s}.checkpoint c WHERE c.id = 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        SELECT c.position INTO v_cp FROM {s}.checkpoint c WHERE c.id = 1;
        RETURN v_cp;
    END IF;
    IF v_cp <> p_from THEN
        RETURN v_cp;
    END IF;
    IF coalesce(array_length(p_streams, 1), 0) > 0 THEN
        PERFORM 1 FROM {s}.queues q WHERE q.stream = ANY (p_streams) ORDER BY q.stream FOR UPDATE;
        INSERT INTO {s}.work (stream, event)
            SELECT s, e FROM unnest(p_streams, p_events) AS t(s, e) ORDER BY s, e
            ON CONFLICT DO NOTHING;
        INSERT INTO {s}.queues (stream, head, priority)
            SELECT s, max(e), max(p) FROM unnest(p_streams, p_events, p_priorities) AS t(s, e, p)
            GROUP BY s ORDER BY s
            ON CONFLICT (stream) DO UPDATE SET
                head = greatest({s}.queues.head, excluded.head),
                priority = greatest({s}.queues.priority, excluded.priority);
        UPDATE {s}.queues q
            SET next = (SELECT min(w.event) FROM {s}.work w WHERE w.stream = q.stream AND w.event > q.position)
            WHERE q.stream = ANY (p_streams) AND q.next IS NULL;
    END IF;
    UPDATE {s}.checkpoint SET position = p_to WHERE id = 1;
    RETURN p_to;
END $$;

-- The fencing rule shared by settle and renew: 0 ok, 1 unknown queue,
-- 2 stale token, 3 lease not live, 4 position moved. Checked in that order.
CREATE FUNCTION {s}.act_fence(
    q {s}.queues, p_token bigint, p_from bigint, p_now timestamptz
) RETURNS int LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN q.stream IS NULL THEN 1
        WHEN q.token <> p_token THEN 2
        WHEN q.lease_expires IS NULL OR q.lease_expires <= p_now THEN 3
        WHEN p_from IS NOT NULL AND q.position <> p_from THEN 4
        ELSE 0
    END
$$;

-- Settle a batch: blocks first, then acks and retries; every lease released.
-- p_kinds: 0 ack, 1 retry, 2 block. Returns, per input in order, the fence
-- code, the value it refers to (current token or position) and whether the
-- queue has claimable work left.
CREATE FUNCTION {s}.act_settle(
    p_streams text[], p_tokens bigint[], p_froms bigint[], p_tos bigint[],
    p_kinds smallint[], p_delays_us bigint[], p_errors text[], p_offset_us bigint
) RETURNS TABLE (code int, current bigint, more boolean) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
    v_n int := coalesce(array_length(p_streams, 1), 0);
    v_codes int[] := array_fill(0, ARRAY[v_n]);
    v_current bigint[] := array_fill(NULL::bigint, ARRAY[v_n]);
    v_more boolean[] := array_fill(false, ARRAY[v_n]);
    q {s}.queues;
    v_code int; v_retries int; v_pass int; i int; v_left boolean;
BEGIN
    PERFORM 1 FROM {s}.queues x WHERE x.stream = ANY (p_streams) ORDER BY x.stream FOR UPDATE;
    FOR v_pass IN 1..2 LOOP
        FOR i IN 1..v_n LOOP
            CONTINUE WHEN (v_pass = 1) <> (p_kinds[i] = 2);
            SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_streams[i];
            v_code := {s}.act_fence(q, p_tokens[i], p_froms[i], v_now);
            v_codes[i] := v_code;
            IF v_code = 2 THEN v_current[i] := q.token; END IF;
            IF v_code = 4 THEN v_current[i] := q.position; END IF;
            CONTINUE WHEN v_code <> 0;
            v_retries := CASE WHEN p_tos[i] > p_froms[i] THEN 1 ELSE q.retries + 1 END;
            UPDATE {s}.queues x SET
                position = p_tos[i],
                retries = CASE p_kinds[i] WHEN 0 THEN 0 ELSE v_retries END,
                retry_at = CASE p_kinds[i] WHEN 1 THEN v_now + p_delays_us[i] * interval '1 microsecond' END,
                blocked = (p_kinds[i] = 2),
                error = CASE p_kinds[i] WHEN 0 THEN NULL ELSE p_errors[i] END,
                lease_owner = NULL, lease_expires = NULL,
                next = (SELECT min(w.event) FROM {s}.work w WHERE w.stream = p_streams[i] AND w.event > p_tos[i])
            WHERE x.stream = p_streams[i]
            RETURNING x.next IS NOT NULL AND NOT x.blocked AND (x.retry_at IS NULL OR x.retry_at <= v_now)
            INTO v_left;
            v_more[i] := v_left;
        END LOOP;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(v_codes, v_current, v_more);
END $$;

-- Renew live leases; returns per input the fence code, the current token
-- (when stale) and the new expiry.
CREATE FUNCTION {s}.act_renew(
    p_streams text[], p_tokens bigint[], p_lease_us bigint, p_offset_us bigint
) RETURNS TABLE (code int, current bigint, expires timestamptz) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
    v_exp timestamptz := v_now + p_lease_us * interval '1 microsecond';
    v_n int := coalesce(array_length(p_streams, 1), 0);
    v_codes int[] := array_fill(0, ARRAY[v_n]);
    v_current bigint[] := array_fill(NULL::bigint, ARRAY[v_n]);
    q {s}.queues; i int;
BEGIN
    PERFORM 1 FROM {s}.queues x WHERE x.stream = ANY (p_streams) ORDER BY x.stream FOR UPDATE;
    FOR i IN 1..v_n LOOP
        SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_streams[i];
        v_codes[i] := {s}.act_fence(q, p_tokens[i], NULL, v_now);
        IF v_codes[i] = 2 THEN v_current[i] := q.token; END IF;
        IF v_codes[i] = 0 THEN
            UPDATE {s}.queues x SET lease_expires = v_exp WHERE x.stream = p_streams[i];
        END IF;
    END LOOP;
    RETURN QUERY SELECT c, t, v_exp FROM unnest(v_codes, v_current) AS u(c, t);
END $$;

-- Release leases whose token is current (live or expired).
CREATE FUNCTION {s}.act_release(p_streams text[], p_tokens bigint[])
RETURNS TABLE (code int, current bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_n int := coalesce(array_length(p_streams, 1), 0);
    v_codes int[] := array_fill(0, ARRAY[v_n]);
    v_current bigint[] := array_fill(NULL::bigint, ARRAY[v_n]);
    q {s}.queues; i int;
BEGIN
    PERFORM 1 FROM {s}.queues x WHERE x.stream = ANY (p_streams) ORDER BY x.stream FOR UPDATE;
    FOR i IN 1..v_n LOOP
        SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_streams[i];
        IF q.stream IS NULL THEN
            v_codes[i] := 1;
        ELSIF q.token <> p_tokens[i] THEN
            v_codes[i] := 2; v_current[i] := q.token;
        ELSE
            UPDATE {s}.queues x SET lease_owner = NULL, lease_expires = NULL WHERE x.stream = p_streams[i];
        END IF;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(v_codes, v_current);
END $$;
"#;

/// Checks `name` is a plain identifier, safe to put in SQL text.
pub(crate) fn validate(name: &str) -> act::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(act::Error::InvalidInput(format!(
            "schema `{name}` must be 1–63 characters of a-z, 0-9 and _, not starting with a digit"
        )))
    }
}

/// Opens the schema as `mode` says: creates or upgrades it (`Create`),
/// upgrades an existing one (`Existing`: a missing one is
/// [`act::Error::Missing`], nothing is created), or only checks its version
/// (`ReadOnly`: no DDL, no write). Refuses a foreign or newer schema.
pub(crate) async fn open(
    client: &mut Object,
    schema: &str,
    store: &str,
    mode: OpenMode,
) -> act::Result<()> {
    match mode {
        OpenMode::ReadOnly => check(client, schema, store).await,
        OpenMode::Create | OpenMode::Existing => migrate(client, schema, store, mode).await,
    }
}

fn refuse(store: &str, message: String) -> act::Error {
    act::Error::Schema {
        store: store.to_string(),
        message,
    }
}

fn newer(store: &str, schema: &str, current: i32) -> act::Error {
    refuse(
        store,
        format!(
            "schema `{schema}` was made by a newer act-rs (version {current}; this build knows up to {SCHEMA_VERSION}): upgrade act-rs"
        ),
    )
}

/// The read-only check: the schema exists and is at this build's version.
/// Two plain SELECTs.
async fn check(client: &Object, schema: &str, store: &str) -> act::Result<()> {
    let err = |e: tokio_postgres::Error| map(store, e);
    let recorded: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'act_migrations')",
            &[&schema],
        )
        .await
        .map_err(err)?
        .get(0);
    if !recorded {
        return Err(act::Error::Missing {
            store: store.to_string(),
        });
    }
    let current: i32 = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.act_migrations"),
            &[],
        )
        .await
        .map_err(err)?
        .get(0);
    if current == 0 {
        return Err(act::Error::Missing {
            store: store.to_string(),
        });
    }
    if current > SCHEMA_VERSION {
        return Err(newer(store, schema, current));
    }
    if current < SCHEMA_VERSION {
        return Err(refuse(
            store,
            format!(
                "schema `{schema}` is at version {current} and this build reads version {SCHEMA_VERSION}: \
                 open the store once for writing (a broker, `act worker`) to upgrade it, then read it"
            ),
        ));
    }
    Ok(())
}

/// Creates (when `mode` allows) or upgrades the schema, in one transaction
/// under an advisory lock. Refuses a foreign or newer schema.
async fn migrate(
    client: &mut Object,
    schema: &str,
    store: &str,
    mode: OpenMode,
) -> act::Result<()> {
    let err = |e: tokio_postgres::Error| map(store, e);
    let tx = client.transaction().await.map_err(err)?;
    // A migration may wait for another process's (the lock below) and
    // rewrite every row of a big store (the v1 upgrade): the session's
    // statement_timeout is for act's calls, not for this.
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(err)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('act-rs migrate ' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(err)?;
    if mode == OpenMode::Create {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(err)?;
    }
    let tables: Vec<String> = tx
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !tables.is_empty() && !tables.iter().any(|t| t == "act_migrations") {
        return Err(refuse(
            store,
            format!(
                "schema `{schema}` holds tables {} and no act_migrations: not an act-rs schema; refusing to touch it",
                tables.join(", ")
            ),
        ));
    }
    if tables.is_empty() && mode == OpenMode::Existing {
        return Err(act::Error::Missing {
            store: store.to_string(),
        });
    }
    tx.batch_execute(&MIGRATIONS_TABLE.replace("{s}", schema))
        .await
        .map_err(err)?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.act_migrations"),
            &[],
        )
        .await
        .map_err(err)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(newer(store, schema, current));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(&sql.replace("{s}", schema))
            .await
            .map_err(err)?;
        tx.execute(
            &format!("INSERT INTO {schema}.act_migrations (version, name) VALUES ($1, $2)"),
            &[version, name],
        )
        .await
        .map_err(err)?;
        tracing::info!(schema, version, name, "applied PostgreSQL migration");
    }
    tx.commit().await.map_err(err)?;
    Ok(())
}

/// Test-only: the SQL that creates a store at schema `version` (1 ..= the
/// current one) in `schema`: the schema, the migrations record and migrations 1 to `version`
/// as released, each recorded, so upgrade tests start from what that
/// release left.
#[cfg(feature = "test-hooks")]
pub fn store_sql_at(schema: &str, version: i32) -> String {
    let mut sql = v1_store_sql(schema);
    for (v, name, body) in MIGRATIONS.iter().filter(|m| m.0 > 1 && m.0 <= version) {
        sql.push_str(&format!(
            "\n{}\nINSERT INTO {schema}.act_migrations (version, name) VALUES ({v}, '{}');",
            body.replace("{s}", schema),
            name.replace('\'', "''")
        ));
    }
    sql
}

/// Test-only: the SQL that builds a store of schema version 1 in `schema`
/// (the schema, the migrations record and migration 1, as released), so
/// upgrade tests start from what version 1 left.
#[cfg(feature = "test-hooks")]
pub fn v1_store_sql(schema: &str) -> String {
    format!(
        "CREATE SCHEMA {schema};\n{};\n{}\nINSERT INTO {schema}.act_migrations (version, name) VALUES (1, '{}');",
        MIGRATIONS_TABLE.replace("{s}", schema),
        V1.replace("{s}", schema),
        MIGRATIONS[0].1
    )
}
