-- Schema version 2: durable subscriptions, items that name their reaction,
-- replays of reset queues, lease lapses (a lapsed batch is then handed out
-- one event at a time), byte order for every listed name.
--
-- Lock order, everywhere: subscription rows (by name), then queue rows (by
-- stream, byte order), then replay rows. Claim never waits (SKIP LOCKED);
-- enqueue never waits for a subscription row (SKIP LOCKED: the caller's read
-- is stale anyway). Every other function waits in that order, so no two
-- calls deadlock.

-- Names are compared and ordered as bytes, whatever the database's default
-- collation (an en_US or ICU default would reorder listings, pages and claim
-- tie-breaks).
DROP INDEX {s}.queues_due;
ALTER TABLE {s}.queues ALTER COLUMN stream TYPE text COLLATE "C";
ALTER TABLE {s}.queues
    ADD COLUMN floor      bigint NOT NULL DEFAULT 0,
    ADD COLUMN lapses     int    NOT NULL DEFAULT 0,
    ADD COLUMN enqueued   bigint NOT NULL DEFAULT 0,
    ADD COLUMN waiting    text   COLLATE "C",
    ADD COLUMN replay     bigint,
    ADD COLUMN leased_to  bigint NOT NULL DEFAULT 0,
    ADD COLUMN suspect_to bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN {s}.queues.next IS 'lowest pending event (may be below position)';
COMMENT ON COLUMN {s}.queues.floor IS 'items for events at or below it are dropped (set by reset)';
COMMENT ON COLUMN {s}.queues.enqueued IS 'items ever enqueued: the last sequence number handed out';
COMMENT ON COLUMN {s}.queues.waiting IS 'the reaction the first pending event needs and the last claimer lacked';
COMMENT ON COLUMN {s}.queues.replay IS 'replay horizon: nothing past it is delivered';
COMMENT ON COLUMN {s}.queues.leased_to IS 'the last event handed out by the latest claim (0: none yet)';
COMMENT ON COLUMN {s}.queues.suspect_to IS 'the end of a batch whose lease lapsed, until an ack passes it: the queue goes one event at a time up to it (0: none)';

-- Pending work: one row per (queue, event, reaction); an ack deletes rows.
-- reaction '' is an item enqueued by schema version 1 (no reaction named).
CREATE TABLE {s}.items (
    stream   text   COLLATE "C" NOT NULL,
    event    bigint NOT NULL,
    reaction text   COLLATE "C" NOT NULL,
    seq      bigint NOT NULL,
    PRIMARY KEY (stream, event, reaction)
);
-- Version 1 pending work (past the queue's position) becomes legacy items;
-- acknowledged work is dropped.
INSERT INTO {s}.items (stream, event, reaction, seq)
    SELECT w.stream, w.event, '', row_number() OVER (PARTITION BY w.stream ORDER BY w.event)
    FROM {s}.work w JOIN {s}.queues q ON q.stream = w.stream
    WHERE w.event > q.position;
UPDATE {s}.queues q SET
    enqueued = (SELECT count(*) FROM {s}.items i WHERE i.stream = q.stream),
    next = (SELECT min(i.event) FROM {s}.items i WHERE i.stream = q.stream);
DROP TABLE {s}.work;

-- Claim walks this index only: queues with deliverable work, in claim order.
CREATE INDEX queues_due ON {s}.queues (priority DESC, next, stream)
    WHERE next IS NOT NULL AND NOT blocked AND (replay IS NULL OR next <= replay);

CREATE TABLE {s}.subscriptions (
    name       text        COLLATE "C" PRIMARY KEY,
    events     text[]      NOT NULL,
    target     text        COLLATE "C",
    start      bigint      NOT NULL,
    checkpoint bigint      NOT NULL,
    created    timestamptz NOT NULL,
    seen       timestamptz NOT NULL,
    retired    timestamptz
);

CREATE TABLE {s}.replays (
    stream   text   COLLATE "C" NOT NULL,
    reaction text   COLLATE "C" NOT NULL,
    position bigint NOT NULL,
    until    bigint NOT NULL,
    PRIMARY KEY (stream, reaction)
);

-- What operators see of a queue; lag is the number of distinct pending events.
CREATE VIEW {s}.queue_states AS
    SELECT q.stream, q.position, q.head, q.next,
           (SELECT count(*) FROM (SELECT DISTINCT i.event FROM {s}.items i WHERE i.stream = q.stream) d) AS lag,
           q.priority, q.retries, q.retry_at, q.blocked, q.error, q.token, q.lease_owner, q.lease_expires,
           q.waiting, q.replay
    FROM {s}.queues q;

-- Append: as in version 1, and one writer per stream at a time (a
-- transaction-level advisory lock on the stream, taken before the version is
-- read and before the transaction has an id), so appends that expect any
-- version never collide on (stream, version), and an exact expectation that
-- loses a race is reported as a conflict with the actual version. Appends to
-- other streams do not wait for each other.
--
-- Its first statement takes ROW EXCLUSIVE on the events table, before the
-- transaction has an id: act_visible finds every transaction that may still
-- commit events among the holders of that lock. So act_append must be the
-- first write of its transaction (the store always calls it alone).
CREATE OR REPLACE FUNCTION {s}.act_append(
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
    LOCK TABLE {s}.events IN ROW EXCLUSIVE MODE;
    PERFORM pg_advisory_xact_lock(hashtextextended('{s}' || chr(31) || p_stream, 0));
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

-- The visibility bound of this schema's events, as a transaction id: every
-- event with an id below (act_visible() << 16) is final for any snapshot
-- taken after this call returns. Only transactions that write these events
-- count, not every transaction on the server (a long transaction in another
-- schema or database no longer hides new events). The least of:
--   * the snapshot's xmax (ids assigned later are above it);
--   * the id of every transaction holding or awaiting ROW EXCLUSIVE on the
--     events table (act_append takes it before it has an id, and keeps it
--     until it ends), read from the ExclusiveLock it holds on its own
--     transaction id (32 bits, widened with the snapshot's epoch);
--   * when a holder shows no transactionid lock yet (it has no id, or is
--     between getting one and locking it), the least running id of the
--     snapshot that shows no transactionid lock either.
-- pg_locks is read once (materialized) and after the snapshot was taken;
-- the caller reads events in a later statement. Costs one scan of the lock
-- table, so readers call it only when the server-wide bound hides events.
CREATE FUNCTION {s}.act_visible() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    WITH s AS MATERIALIZED (
        SELECT pg_current_snapshot() AS snap
    ), l AS MATERIALIZED (
        SELECT k.locktype, k.database, k.relation, k.mode, k.virtualtransaction,
               k.transactionid::text::bigint AS xid
        FROM pg_locks k
    ), x AS (
        SELECT pg_snapshot_xmax(s.snap)::text::bigint AS xmax FROM s
    ), holders AS (
        SELECT (SELECT t.xid FROM l t
                WHERE t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock'
                  AND t.virtualtransaction = h.virtualtransaction
                LIMIT 1) AS xid
        FROM l h
        WHERE h.locktype = 'relation' AND h.mode = 'RowExclusiveLock'
          AND h.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
          AND h.relation = '{s}.events'::regclass
    )
    SELECT least(
        x.xmax,
        (SELECT min(x.xmax - ((x.xmax % 4294967296 - h.xid + 6442450944) % 4294967296 - 2147483648))
         FROM holders h WHERE h.xid IS NOT NULL),
        CASE WHEN EXISTS (SELECT 1 FROM holders h WHERE h.xid IS NULL) THEN
            (SELECT min(i::text::bigint) FROM s, pg_snapshot_xip(s.snap) AS i
             WHERE NOT EXISTS (SELECT 1 FROM l t
                               WHERE t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock'
                                 AND t.xid = i::text::bigint % 4294967296))
        END)
    FROM x
$$;

-- Subscribe: records unknown reactions (checkpoint = start), refreshes
-- seen, events and target of known active ones (retired ones stay as they
-- are), returns every subscription by name. p_events is a JSON array of
-- arrays of event names, one per reaction. The caller sends each name once.
CREATE FUNCTION {s}.act_subscribe(
    p_names text[], p_events jsonb, p_targets text[], p_starts bigint[], p_offset_us bigint
) RETURNS SETOF {s}.subscriptions LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
BEGIN
    INSERT INTO {s}.subscriptions AS x (name, events, target, start, checkpoint, created, seen)
        SELECT u.n, ARRAY(SELECT jsonb_array_elements_text(p_events -> (u.o::int - 1))), u.t, u.st, u.st, v_now, v_now
        FROM unnest(p_names, p_targets, p_starts) WITH ORDINALITY AS u(n, t, st, o)
        ORDER BY u.n COLLATE "C"
        ON CONFLICT (name) DO UPDATE SET seen = excluded.seen, events = excluded.events, target = excluded.target
        WHERE x.retired IS NULL;
    RETURN QUERY SELECT * FROM {s}.subscriptions x ORDER BY x.name;
END $$;

-- One correlation step. Moves each of p_reactions whose checkpoint (or, when
-- p_replay is set, whose replay on that queue) is p_from to p_to and records
-- the items of the moved reactions (for a replay, of that queue only):
-- queues created on first sight, items at or below a queue's floor or
-- already held dropped, each added item numbered after the queue's last
-- sequence number, work marks and priorities moved up. Set-based: one
-- statement for the queues, one for the items and the touched queues.
-- Returns the position of every reaction after the call (NULL: retired,
-- unknown, or no such replay) and how many items were added. Raises AC400
-- (message: the event, detail: the head) for work naming an event past the
-- log's head.
CREATE FUNCTION {s}.act_enqueue(
    p_reactions text[], p_replay text, p_from bigint, p_to bigint,
    p_streams text[], p_events bigint[], p_items text[], p_priorities int[]
) RETURNS TABLE (positions bigint[], added bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_moved text[];
    v_after bigint[];
    v_head bigint;
    v_top bigint;
    v_added bigint := 0;
BEGIN
    v_top := (SELECT max(t.e) FROM unnest(p_events) AS t(e));
    IF v_top IS NOT NULL THEN
        v_head := (SELECT coalesce(max(e.id), 0) FROM {s}.events e);
        IF v_top > v_head THEN
            RAISE EXCEPTION USING ERRCODE = 'AC400', MESSAGE = v_top::text, DETAIL = v_head::text;
        END IF;
    END IF;
    IF p_replay IS NULL THEN
        -- Compare-and-set per reaction. A reaction another call is moving
        -- right now is skipped, not waited for: that call wins.
        SELECT coalesce(array_agg(m.name), '{}') INTO v_moved FROM (
            SELECT x.name FROM {s}.subscriptions x
            WHERE x.name = ANY (p_reactions) AND x.retired IS NULL AND x.checkpoint = p_from
            ORDER BY x.name FOR UPDATE SKIP LOCKED) m;
        SELECT array_agg(CASE WHEN u.r = ANY (v_moved) THEN p_to
                              ELSE (SELECT x.checkpoint FROM {s}.subscriptions x WHERE x.name = u.r AND x.retired IS NULL) END
                         ORDER BY u.o)
            INTO v_after FROM unnest(p_reactions) WITH ORDINALITY AS u(r, o);
    ELSE
        -- Replays of a queue change under its row lock.
        PERFORM 1 FROM {s}.queues q WHERE q.stream = p_replay FOR UPDATE;
        SELECT coalesce(array_agg(r.reaction), '{}') INTO v_moved FROM {s}.replays r
            WHERE r.stream = p_replay AND r.reaction = ANY (p_reactions) AND r.position = p_from;
        SELECT array_agg(CASE WHEN u.r = ANY (v_moved) THEN p_to
                              ELSE (SELECT r.position FROM {s}.replays r WHERE r.stream = p_replay AND r.reaction = u.r) END
                         ORDER BY u.o)
            INTO v_after FROM unnest(p_reactions) WITH ORDINALITY AS u(r, o);
    END IF;
    IF cardinality(v_moved) > 0 AND coalesce(cardinality(p_streams), 0) > 0 THEN
        -- The target queues: created on first sight, every one locked, in
        -- stream order (WHERE false: lock without writing a row version).
        INSERT INTO {s}.queues AS q (stream)
            SELECT DISTINCT t.s COLLATE "C" FROM unnest(p_streams, p_items) AS t(s, r)
            WHERE t.r = ANY (v_moved) AND (p_replay IS NULL OR t.s = p_replay)
            ORDER BY 1
            ON CONFLICT (stream) DO UPDATE SET stream = excluded.stream WHERE false;
        WITH w AS (
            SELECT DISTINCT ON (t.s, t.e, t.r) t.s, t.e, t.r, t.p, t.o
            FROM unnest(p_streams, p_events, p_items, p_priorities) WITH ORDINALITY AS t(s, e, r, p, o)
            WHERE t.r = ANY (v_moved) AND (p_replay IS NULL OR t.s = p_replay)
            ORDER BY t.s, t.e, t.r, t.o
        ), fresh AS (
            SELECT w.s, w.e, w.r, w.p, w.o, q.enqueued FROM w JOIN {s}.queues q ON q.stream = w.s
            WHERE w.e > q.floor
              AND NOT EXISTS (SELECT 1 FROM {s}.items i WHERE i.stream = w.s AND i.event = w.e AND i.reaction = w.r)
        ), numbered AS (
            SELECT f.s, f.e, f.r, f.p, f.enqueued + row_number() OVER (PARTITION BY f.s ORDER BY f.o) AS seq
            FROM fresh f
        ), ins AS (
            INSERT INTO {s}.items (stream, event, reaction, seq) SELECT n.s, n.e, n.r, n.seq FROM numbered n
        ), touched AS (
            UPDATE {s}.queues q SET
                enqueued = q.enqueued + a.n,
                head = greatest(q.head, a.last),
                next = least(q.next, a.first),
                -- the first item ever sets the priority (negative ones too)
                priority = CASE WHEN q.enqueued = 0 THEN a.priority ELSE greatest(q.priority, a.priority) END,
                -- the first pending event changed: look again at who can run it
                waiting = CASE WHEN a.first < q.next THEN NULL ELSE q.waiting END
            FROM (SELECT n.s, count(*) AS n, max(n.e) AS last, min(n.e) AS first, max(n.p) AS priority
                  FROM numbered n GROUP BY n.s) a
            WHERE q.stream = a.s
            RETURNING a.n
        )
        SELECT coalesce(sum(t.n), 0) INTO v_added FROM touched t;
    END IF;
    IF cardinality(v_moved) > 0 THEN
        IF p_replay IS NULL THEN
            UPDATE {s}.subscriptions x SET checkpoint = p_to WHERE x.name = ANY (v_moved);
        ELSE
            UPDATE {s}.replays r SET position = p_to WHERE r.stream = p_replay AND r.reaction = ANY (v_moved);
            -- a replay that reached its end is over
            DELETE FROM {s}.replays r WHERE r.stream = p_replay AND r.reaction = ANY (v_moved) AND r.position >= r.until;
            UPDATE {s}.queues q SET replay = (SELECT min(r.position) FROM {s}.replays r WHERE r.stream = p_replay)
                WHERE q.stream = p_replay;
        END IF;
    END IF;
    positions := v_after;
    added := v_added;
    RETURN NEXT;
END $$;

-- Claim: walks the due index in claim order (priority, oldest pending event,
-- stream), skipping rows other claims hold, one row at a time, and stops as
-- soon as p_queues queues are leased. At each claimable queue: an expired
-- lease counts as a failed attempt (a lapse) and marks the batch it covered
-- (up to leased_to) suspect; while the first pending event is at or below
-- suspect_to the queue goes one event at a time. Then the window of up to
-- p_events (1 when suspect) pending events within the replay horizon is cut
-- before the first event with an item for a reaction the claimer lacks
-- (legacy items, reaction '', never cut). A cut at 0 marks the queue
-- waiting for that reaction (the first in byte order) and leases nothing;
-- otherwise the queue is leased (token + 1, leased_to = the last event
-- handed out) and its events are returned with their reactions, one row per
-- event. Costs two index range scans of the queue's items per examined
-- queue.
CREATE FUNCTION {s}.act_claim(
    p_owner text, p_queues int, p_events int, p_lease_us bigint, p_reactions text[],
    p_lapse_prefix text, p_lapse_suffix text, p_offset_us bigint
) RETURNS TABLE (
    l_stream text, l_token bigint, l_expires timestamptz, l_position bigint, l_retries int,
    l_lapses int, l_mark bigint, l_suspect boolean,
    e_id bigint, e_stream text, e_version bigint, e_name text, e_data jsonb, e_created timestamptz,
    e_correlation text, e_causation jsonb, e_actor jsonb, e_reactions text[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
    v_expires timestamptz := v_now + p_lease_us * interval '1 microsecond';
    v_leased int := 0;
    v_first bigint;
    v_bad bigint;
    v_last bigint;
    v_suspect boolean;
    q {s}.queues;
    c refcursor;
BEGIN
    IF p_queues < 1 THEN
        RETURN;
    END IF;
    OPEN c FOR SELECT * FROM {s}.queues x
        WHERE x.next IS NOT NULL AND NOT x.blocked AND (x.replay IS NULL OR x.next <= x.replay)
          AND (x.lease_expires IS NULL OR x.lease_expires <= v_now)
          AND (x.retry_at IS NULL OR x.retry_at <= v_now)
          AND (x.waiting IS NULL OR x.waiting = ANY (p_reactions))
        ORDER BY x.priority DESC, x.next, x.stream
        FOR UPDATE SKIP LOCKED;
    LOOP
        FETCH c INTO q;
        EXIT WHEN NOT FOUND;
        IF q.lease_owner IS NOT NULL THEN
            -- Claimable with an owner: the lease ended without a settlement,
            -- somewhere in the batch it covered.
            q.retries := least(q.retries, 2147483646) + 1;
            q.lapses := least(q.lapses, 2147483646) + 1;
            q.error := p_lapse_prefix || q.lease_owner || p_lapse_suffix;
            q.suspect_to := greatest(q.suspect_to, q.leased_to);
        END IF;
        v_suspect := q.suspect_to > 0 AND q.next <= q.suspect_to;
        -- The window, its first unrunnable event and the end of the
        -- runnable prefix (the last event handed out).
        SELECT min(v.event), min(v.event) FILTER (WHERE NOT v.runnable),
               max(v.event) FILTER (WHERE v.prefix)
            INTO v_first, v_bad, v_last FROM (
            SELECT w.event, w.runnable, bool_and(w.runnable) OVER (ORDER BY w.event) AS prefix FROM (
                SELECT i.event, bool_and(i.reaction = '' OR i.reaction = ANY (p_reactions)) AS runnable
                FROM {s}.items i
                WHERE i.stream = q.stream AND (q.replay IS NULL OR i.event <= q.replay)
                GROUP BY i.event ORDER BY i.event
                LIMIT CASE WHEN v_suspect THEN 1 ELSE p_events END) w) v;
        IF v_last IS NULL THEN
            UPDATE {s}.queues x SET retries = q.retries, lapses = q.lapses, error = q.error,
                suspect_to = q.suspect_to, lease_owner = NULL, lease_expires = NULL,
                waiting = (SELECT min(i.reaction) FROM {s}.items i
                           WHERE i.stream = q.stream AND i.event = v_bad AND i.reaction <> ''
                             AND NOT (i.reaction = ANY (p_reactions)))
            WHERE x.stream = q.stream;
            CONTINUE;
        END IF;
        UPDATE {s}.queues x SET token = x.token + 1, retries = q.retries, lapses = q.lapses, error = q.error,
            suspect_to = q.suspect_to, leased_to = v_last,
            lease_owner = p_owner, lease_expires = v_expires, waiting = NULL
        WHERE x.stream = q.stream;
        -- Every pending event up to v_last is in the window (v_first is the
        -- queue's first pending event).
        RETURN QUERY
            SELECT q.stream, q.token + 1, v_expires, q.position, q.retries, q.lapses, q.enqueued, v_suspect,
                   e.id, e.stream, e.version, e.name, e.data, e.created, e.correlation, e.causation, e.actor, w.rs
            FROM (SELECT i.event,
                         coalesce(array_agg(i.reaction ORDER BY i.reaction) FILTER (WHERE i.reaction <> ''), '{}') AS rs
                  FROM {s}.items i
                  WHERE i.stream = q.stream AND i.event BETWEEN v_first AND v_last
                  GROUP BY i.event) w
            JOIN {s}.events e ON e.id = w.event
            ORDER BY w.event;
        v_leased := v_leased + 1;
        EXIT WHEN v_leased >= p_queues;
    END LOOP;
    CLOSE c;
END $$;

DROP FUNCTION {s}.act_enqueue(bigint, bigint, text[], bigint[], int[]);
DROP FUNCTION {s}.act_settle(text[], bigint[], bigint[], bigint[], smallint[], bigint[], text[], bigint);

-- Settle a batch, in the order given (the caller puts blocks first): each
-- settlement that passes the fence removes the queue's items up to p_acked
-- enqueued up to p_marks (when acked), moves the position up to it, records
-- the outcome (p_kinds: 0 ack, 1 retry, 2 block) and clears the lease and
-- waiting. An ack that stops short of suspect_to (the queue walks a lapsed
-- batch) is no progress: the batch's count of failed attempts stays, and an
-- ack then keeps retries, lapses and error; an ack at or past it ends the
-- walk (suspect_to = 0). Retries restart at 1 after a failure with progress,
-- else grow; lapses restart on an ack and on progress. Returns, per input in
-- order, the fence code, the value it refers to (current token or position)
-- and whether the queue has claimable work left.
CREATE FUNCTION {s}.act_settle(
    p_streams text[], p_tokens bigint[], p_froms bigint[], p_marks bigint[], p_acked bigint[],
    p_kinds smallint[], p_delays_us bigint[], p_errors text[], p_offset_us bigint
) RETURNS TABLE (code int, current bigint, more boolean) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
    v_n int := coalesce(array_length(p_streams, 1), 0);
    v_codes int[] := array_fill(0, ARRAY[v_n]);
    v_current bigint[] := array_fill(NULL::bigint, ARRAY[v_n]);
    v_more boolean[] := array_fill(false, ARRAY[v_n]);
    q {s}.queues;
    v_code int; i int; v_left boolean; v_progress boolean; v_walking boolean;
BEGIN
    PERFORM 1 FROM {s}.queues x WHERE x.stream = ANY (p_streams) ORDER BY x.stream FOR UPDATE;
    FOR i IN 1..v_n LOOP
        SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_streams[i];
        v_code := {s}.act_fence(q, p_tokens[i], p_froms[i], v_now);
        v_codes[i] := v_code;
        IF v_code = 2 THEN v_current[i] := q.token; END IF;
        IF v_code = 4 THEN v_current[i] := q.position; END IF;
        CONTINUE WHEN v_code <> 0;
        v_walking := p_acked[i] IS NOT NULL AND p_acked[i] < q.suspect_to;
        v_progress := p_acked[i] IS NOT NULL AND NOT v_walking;
        IF p_acked[i] IS NOT NULL THEN
            DELETE FROM {s}.items it
            WHERE it.stream = p_streams[i] AND it.event <= p_acked[i] AND it.seq <= p_marks[i];
        END IF;
        UPDATE {s}.queues x SET
            position = greatest(x.position, coalesce(p_acked[i], x.position)),
            suspect_to = CASE WHEN v_progress THEN 0 ELSE x.suspect_to END,
            retries = CASE WHEN p_kinds[i] = 0 AND v_walking THEN x.retries
                           WHEN p_kinds[i] = 0 THEN 0
                           WHEN v_progress THEN 1
                           ELSE least(x.retries, 2147483646) + 1 END,
            lapses = CASE WHEN NOT v_walking AND (p_kinds[i] = 0 OR v_progress) THEN 0 ELSE x.lapses END,
            retry_at = CASE p_kinds[i] WHEN 1 THEN v_now + p_delays_us[i] * interval '1 microsecond' END,
            blocked = x.blocked OR p_kinds[i] = 2,
            error = CASE WHEN p_kinds[i] <> 0 THEN p_errors[i] WHEN v_walking THEN x.error END,
            lease_owner = NULL, lease_expires = NULL, waiting = NULL,
            next = CASE WHEN p_acked[i] IS NOT NULL
                        THEN (SELECT min(it.event) FROM {s}.items it WHERE it.stream = p_streams[i])
                        ELSE x.next END
        WHERE x.stream = p_streams[i]
        RETURNING x.next IS NOT NULL AND NOT x.blocked AND (x.replay IS NULL OR x.next <= x.replay)
                  AND (x.retry_at IS NULL OR x.retry_at <= v_now)
        INTO v_left;
        v_more[i] := v_left;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(v_codes, v_current, v_more);
END $$;

-- Reset: moves a queue to p_position (also its floor), drops its items and
-- replays, clears retries, lapses, block, waiting, lease and the walk of a
-- lapsed batch (suspect_to), increases the token, and records a replay for
-- every active reaction that may target it (static target this queue, or
-- dynamic) whose checkpoint is past max(p_position, its start). Those
-- subscriptions are share-locked first, so no correlation moves them
-- meanwhile. Creates the queue when absent. Raises AC422 (message: the
-- head) past the head, AC404 for a queue that does not exist and that no
-- reaction can target. Returns the queue's state.
CREATE FUNCTION {s}.act_reset(p_stream text, p_position bigint)
RETURNS SETOF {s}.queue_states LANGUAGE plpgsql AS $$
DECLARE
    v_head bigint := (SELECT coalesce(max(e.id), 0) FROM {s}.events e);
BEGIN
    IF p_position > v_head THEN
        RAISE EXCEPTION USING ERRCODE = 'AC422', MESSAGE = v_head::text;
    END IF;
    PERFORM 1 FROM {s}.subscriptions x
        WHERE x.retired IS NULL AND (x.target IS NULL OR x.target = p_stream)
        ORDER BY x.name FOR SHARE;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM {s}.queues x WHERE x.stream = p_stream) THEN
        RAISE EXCEPTION USING ERRCODE = 'AC404', MESSAGE = p_stream;
    END IF;
    INSERT INTO {s}.queues AS x (stream) VALUES (p_stream)
        ON CONFLICT (stream) DO UPDATE SET stream = excluded.stream WHERE false;
    DELETE FROM {s}.items i WHERE i.stream = p_stream;
    DELETE FROM {s}.replays r WHERE r.stream = p_stream;
    INSERT INTO {s}.replays (stream, reaction, position, until)
        SELECT p_stream, x.name, greatest(p_position, x.start), x.checkpoint
        FROM {s}.subscriptions x
        WHERE x.retired IS NULL AND (x.target IS NULL OR x.target = p_stream)
          AND x.checkpoint > greatest(p_position, x.start)
        ORDER BY x.name;
    UPDATE {s}.queues x SET
        position = p_position, floor = p_position, next = NULL,
        retries = 0, lapses = 0, retry_at = NULL, error = NULL, blocked = false, waiting = NULL,
        suspect_to = 0, lease_owner = NULL, lease_expires = NULL, token = x.token + 1,
        replay = (SELECT min(r.position) FROM {s}.replays r WHERE r.stream = p_stream)
    WHERE x.stream = p_stream;
    RETURN QUERY SELECT * FROM {s}.queue_states s WHERE s.stream = p_stream;
END $$;

-- Retire reactions: all or nothing. Raises AC404 (message: the name) for the
-- first name that is not a subscription. For each name in order, when not
-- yet retired: marks it retired, deletes its items everywhere (counting
-- items and queues), stops queues waiting for it from waiting, deletes its
-- replays and recomputes those queues' horizons. Every touched queue is
-- locked first, in stream order. Scans the items (retire is an operator's
-- command, not a hot path: no index on reaction slows enqueues).
CREATE FUNCTION {s}.act_retire(p_names text[], p_offset_us bigint)
RETURNS TABLE (r_name text, r_dropped bigint, r_queues bigint, r_newly boolean) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
    v_missing text;
    v_active text[];
    v_name text;
    v_streams text[];
BEGIN
    PERFORM 1 FROM {s}.subscriptions x WHERE x.name = ANY (p_names) ORDER BY x.name FOR UPDATE;
    SELECT u.n INTO v_missing FROM unnest(p_names) WITH ORDINALITY AS u(n, o)
        WHERE NOT EXISTS (SELECT 1 FROM {s}.subscriptions x WHERE x.name = u.n)
        ORDER BY u.o LIMIT 1;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'AC404', MESSAGE = v_missing;
    END IF;
    SELECT coalesce(array_agg(x.name), '{}') INTO v_active FROM {s}.subscriptions x
        WHERE x.name = ANY (p_names) AND x.retired IS NULL;
    IF cardinality(v_active) > 0 THEN
        PERFORM 1 FROM {s}.queues q
            WHERE q.stream IN (SELECT i.stream FROM {s}.items i WHERE i.reaction = ANY (v_active)
                               UNION SELECT r.stream FROM {s}.replays r WHERE r.reaction = ANY (v_active))
               OR q.waiting = ANY (v_active)
            ORDER BY q.stream FOR UPDATE;
    END IF;
    FOREACH v_name IN ARRAY p_names LOOP
        r_name := v_name;
        r_dropped := 0;
        r_queues := 0;
        UPDATE {s}.subscriptions x SET retired = v_now WHERE x.name = v_name AND x.retired IS NULL;
        r_newly := FOUND;
        IF r_newly THEN
            WITH d AS (DELETE FROM {s}.items i WHERE i.reaction = v_name RETURNING i.stream)
            SELECT count(*), count(DISTINCT d.stream), coalesce(array_agg(DISTINCT d.stream), '{}')
                INTO r_dropped, r_queues, v_streams FROM d;
            UPDATE {s}.queues q SET next = (SELECT min(i.event) FROM {s}.items i WHERE i.stream = q.stream)
                WHERE q.stream = ANY (v_streams);
            UPDATE {s}.queues q SET waiting = NULL WHERE q.waiting = v_name;
            WITH d AS (DELETE FROM {s}.replays r WHERE r.reaction = v_name RETURNING r.stream)
            SELECT coalesce(array_agg(DISTINCT d.stream), '{}') INTO v_streams FROM d;
            UPDATE {s}.queues q SET replay = (SELECT min(r.position) FROM {s}.replays r WHERE r.stream = q.stream)
                WHERE q.stream = ANY (v_streams);
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
