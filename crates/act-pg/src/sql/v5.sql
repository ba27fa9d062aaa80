-- Version 5: correlation no longer writes the rows that claims and settles
-- update, so neither waits for the other (with several brokers, settles
-- used to wait on the row locks of an enqueue that touched every queue).
--
-- * marks: what only correlation writes per queue, the last sequence
--   number handed out (enqueued) and the last event enqueued (head). An
--   enqueue locks the marks of its target queues, never their queue rows.
-- * news: what an enqueue has to tell a queue row (its lowest new event,
--   the highest priority, whether these are the queue's first items ever).
--   Insert-only for enqueues; folded into the queue row (next, priority,
--   waiting) by whoever holds that row's lock next: a settle folds the
--   queues it settles, an acknowledgement inside a projection its queue,
--   and act_fold_news (which the store runs before each claim, listing and
--   next-due question, in a transaction of its own) every queue no one
--   holds.
-- * A claim reads the queue's mark (what a settlement may remove) in the
--   statement that reads its window, and hands out no item numbered past
--   it. Enqueues of a queue number its items in the order they commit, so
--   every item at or below the mark was in that window.
--
-- Lock order, everywhere: subscription rows (by name), then queue rows (by
-- stream, byte order), then marks (by stream), then replay rows. Queue rows
-- that an enqueue creates are inserted with DO NOTHING (no lock on a row
-- that exists). Released version 4 is never edited in place: this migration
-- replaces the functions and moves the two columns.

CREATE TABLE {s}.marks (
    stream   text   COLLATE "C" PRIMARY KEY,
    enqueued bigint NOT NULL DEFAULT 0,
    head     bigint NOT NULL DEFAULT 0
);
COMMENT ON COLUMN {s}.marks.enqueued IS 'items ever enqueued: the last sequence number handed out';
COMMENT ON COLUMN {s}.marks.head IS 'the last event ever enqueued';
INSERT INTO {s}.marks (stream, enqueued, head) SELECT q.stream, q.enqueued, q.head FROM {s}.queues q;

CREATE TABLE {s}.news (
    stream   text    COLLATE "C" NOT NULL,
    first    bigint  NOT NULL,
    priority int     NOT NULL,
    fresh    boolean NOT NULL
);
CREATE INDEX news_stream ON {s}.news (stream);

-- The view and the reset that returns its rows change with the columns.
DROP FUNCTION {s}.act_reset(text, bigint);
DROP VIEW {s}.queue_states;
ALTER TABLE {s}.queues DROP COLUMN head, DROP COLUMN enqueued;

-- What operators see of a queue; lag is the number of distinct pending events.
CREATE VIEW {s}.queue_states AS
    SELECT q.stream, q.position, coalesce(m.head, 0) AS head, q.next,
           (SELECT count(*) FROM (SELECT DISTINCT i.event FROM {s}.items i WHERE i.stream = q.stream) d) AS lag,
           q.priority, q.retries, q.retry_at, q.blocked, q.error, q.token, q.lease_owner, q.lease_expires,
           q.waiting, q.replay
    FROM {s}.queues q LEFT JOIN {s}.marks m ON m.stream = q.stream;

-- Fold the news of queues whose rows the caller holds locked: the lowest
-- pending event read again from the items (news may tell of items already
-- delivered), the priority (the first items ever set it, later ones only
-- raise it), and waiting cleared when the first pending event moved down.
CREATE FUNCTION {s}.act_fold(p_streams text[]) RETURNS void LANGUAGE sql AS $$
    WITH d AS (
        DELETE FROM {s}.news n WHERE n.stream = ANY (p_streams)
        RETURNING n.stream, n.first, n.priority, n.fresh
    ), a AS (
        SELECT d.stream, min(d.first) AS first, max(d.priority) AS priority, bool_or(d.fresh) AS fresh
        FROM d GROUP BY d.stream
    )
    UPDATE {s}.queues q SET
        next = (SELECT min(i.event) FROM {s}.items i WHERE i.stream = q.stream),
        priority = CASE WHEN a.fresh THEN a.priority ELSE greatest(q.priority, a.priority) END,
        waiting = CASE WHEN q.next IS NULL OR a.first < q.next THEN NULL ELSE q.waiting END
    FROM a WHERE q.stream = a.stream
$$;

-- Fold the news of every queue no other transaction holds (SKIP LOCKED:
-- never waits; a held queue is folded by its holder or by a later call).
-- Returns how many queues it folded. Costs one look at an empty table when
-- there is no news.
CREATE FUNCTION {s}.act_fold_news() RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_streams text[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {s}.news) THEN
        RETURN 0;
    END IF;
    SELECT coalesce(array_agg(l.stream), '{}') INTO v_streams FROM (
        SELECT x.stream FROM {s}.queues x
        WHERE x.stream IN (SELECT n.stream FROM {s}.news n)
        ORDER BY x.stream FOR UPDATE SKIP LOCKED) l;
    IF cardinality(v_streams) > 0 THEN
        PERFORM {s}.act_fold(v_streams);
    END IF;
    RETURN cardinality(v_streams);
END $$;

-- Claim, as in version 2, except for the mark: the queue's enqueue mark
-- (marks.enqueued), read in the statement that cuts the window, so in the
-- same snapshot as the window's items; the events handed out carry only
-- items at or below it (an enqueue that commits meanwhile is for the next
-- claim). The store folds news (act_fold_news) before it claims.
CREATE OR REPLACE FUNCTION {s}.act_claim(
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
    v_mark bigint;
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
               max(v.event) FILTER (WHERE v.prefix),
               coalesce((SELECT m.enqueued FROM {s}.marks m WHERE m.stream = q.stream), 0)
            INTO v_first, v_bad, v_last, v_mark FROM (
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
            SELECT q.stream, q.token + 1, v_expires, q.position, q.retries, q.lapses, v_mark, v_suspect,
                   e.id, e.stream, e.version, e.name, e.data, e.created, e.correlation, e.causation, e.actor, w.rs
            FROM (SELECT i.event,
                         coalesce(array_agg(i.reaction ORDER BY i.reaction) FILTER (WHERE i.reaction <> ''), '{}') AS rs
                  FROM {s}.items i
                  WHERE i.stream = q.stream AND i.event BETWEEN v_first AND v_last AND i.seq <= v_mark
                  GROUP BY i.event) w
            JOIN {s}.events e ON e.id = w.event
            ORDER BY w.event;
        v_leased := v_leased + 1;
        EXIT WHEN v_leased >= p_queues;
    END LOOP;
    CLOSE c;
END $$;

-- Settle, as in version 4, after folding the news of the settled queues
-- (their rows are locked first, so nothing can tell them news unseen).
CREATE OR REPLACE FUNCTION {s}.act_settle(
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
    PERFORM {s}.act_fold(p_streams);
    FOR i IN 1..v_n LOOP
        SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_streams[i];
        v_code := {s}.act_fence(q, p_tokens[i], p_froms[i], v_now);
        v_codes[i] := v_code;
        IF v_code = 2 THEN v_current[i] := q.token; END IF;
        IF v_code = 4 THEN v_current[i] := q.position; END IF;
        CONTINUE WHEN v_code <> 0;
        v_walking := p_acked[i] IS NOT NULL AND p_acked[i] < q.suspect_to;
        v_progress := p_acked[i] IS NOT NULL;
        IF p_acked[i] IS NOT NULL THEN
            DELETE FROM {s}.items it
            WHERE it.stream = p_streams[i] AND it.event <= p_acked[i] AND it.seq <= p_marks[i];
        END IF;
        UPDATE {s}.queues x SET
            position = greatest(x.position, coalesce(p_acked[i], x.position)),
            suspect_to = CASE WHEN v_progress AND NOT v_walking THEN 0 ELSE x.suspect_to END,
            retries = CASE WHEN p_kinds[i] = 0 THEN 0
                           WHEN p_kinds[i] = 3 THEN CASE WHEN v_progress THEN 0 ELSE x.retries END
                           WHEN v_progress THEN 1
                           ELSE least(x.retries, 2147483646) + 1 END,
            lapses = CASE WHEN p_kinds[i] = 0 OR v_progress THEN 0 ELSE x.lapses END,
            retry_at = CASE WHEN p_kinds[i] IN (1, 3)
                            THEN v_now + p_delays_us[i] * interval '1 microsecond' END,
            blocked = x.blocked OR p_kinds[i] = 2,
            error = CASE WHEN p_kinds[i] IN (1, 2) THEN p_errors[i] END,
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

-- Acknowledge within the caller's transaction, as in version 4, after
-- folding the queue's news.
CREATE OR REPLACE FUNCTION {s}.act_ack_within(
    p_stream text, p_token bigint, p_from bigint, p_mark bigint, p_acked bigint, p_offset_us bigint
) RETURNS TABLE (code int, current bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
    q {s}.queues;
    v_code int;
BEGIN
    SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_stream FOR UPDATE;
    PERFORM {s}.act_fold(ARRAY[p_stream]);
    v_code := {s}.act_fence(q, p_token, p_from, v_now);
    IF v_code <> 0 THEN
        RETURN QUERY SELECT v_code, CASE v_code WHEN 2 THEN q.token WHEN 4 THEN q.position END;
        RETURN;
    END IF;
    DELETE FROM {s}.items it
    WHERE it.stream = p_stream AND it.event <= p_acked AND it.seq <= p_mark;
    UPDATE {s}.queues x SET
        position = greatest(x.position, p_acked),
        suspect_to = CASE WHEN p_acked >= x.suspect_to THEN 0 ELSE x.suspect_to END,
        retries = 0, lapses = 0, retry_at = NULL, error = NULL,
        next = (SELECT min(it.event) FROM {s}.items it WHERE it.stream = p_stream)
    WHERE x.stream = p_stream;
    RETURN QUERY SELECT 0, NULL::bigint;
END $$;

-- One correlation step, as in version 2 (same arguments, same results),
-- writing marks and news instead of queue rows (see the top of this file),
-- and moving a group of reactions as one (below).
CREATE OR REPLACE FUNCTION {s}.act_enqueue(
    p_reactions text[], p_replay text, p_from bigint, p_to bigint,
    p_streams text[], p_events bigint[], p_items text[], p_priorities int[]
) RETURNS TABLE (positions bigint[], added bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_moved text[];
    v_after bigint[];
    v_head bigint;
    v_top bigint;
    v_added bigint := 0;
    v_lead text;
BEGIN
    v_top := (SELECT max(t.e) FROM unnest(p_events) AS t(e));
    IF v_top IS NOT NULL THEN
        v_head := (SELECT coalesce(max(e.id), 0) FROM {s}.events e);
        IF v_top > v_head THEN
            RAISE EXCEPTION USING ERRCODE = 'AC400', MESSAGE = v_top::text, DETAIL = v_head::text;
        END IF;
    END IF;
    IF p_replay IS NULL THEN
        -- Compare-and-set per reaction, the group as one: the call that
        -- locks the group's lead (its first active reaction, byte order)
        -- moves it, and a call that finds the lead held moves nothing (the
        -- holder wins; schema 4 skipped held reactions one by one, so two
        -- brokers split a group and read each page twice over). The rest
        -- are then locked in order, waited for if need be: only a call
        -- that sees the groups otherwise (a stale broker) can hold one, and
        -- it never waits for the lead, which sorts first.
        v_lead := (SELECT min(x.name) FROM {s}.subscriptions x
                   WHERE x.name = ANY (p_reactions) AND x.retired IS NULL);
        v_moved := '{}';
        IF v_lead IS NOT NULL THEN
            PERFORM 1 FROM {s}.subscriptions x WHERE x.name = v_lead FOR UPDATE SKIP LOCKED;
            IF FOUND THEN
                SELECT coalesce(array_agg(m.name), '{}') INTO v_moved FROM (
                    SELECT x.name FROM {s}.subscriptions x
                    WHERE x.name = ANY (p_reactions) AND x.retired IS NULL AND x.checkpoint = p_from
                    ORDER BY x.name FOR UPDATE) m;
            END IF;
        END IF;
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
        -- The target queues, created on first sight. A queue that exists is
        -- neither written nor waited for (DO NOTHING takes no row lock):
        -- claims and settles own the queue rows.
        INSERT INTO {s}.queues AS q (stream)
            SELECT DISTINCT t.s COLLATE "C" FROM unnest(p_streams, p_items) AS t(s, r)
            WHERE t.r = ANY (v_moved) AND (p_replay IS NULL OR t.s = p_replay)
            ORDER BY 1
            ON CONFLICT (stream) DO NOTHING;
        -- Their marks, created on first sight, every one locked, in stream
        -- order (WHERE false: lock without writing a row version), so
        -- enqueues of one queue number their items one after another, in
        -- the order they commit.
        INSERT INTO {s}.marks AS m (stream)
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
            SELECT w.s, w.e, w.r, w.p, w.o, m.enqueued
            FROM w JOIN {s}.queues q ON q.stream = w.s JOIN {s}.marks m ON m.stream = w.s
            WHERE w.e > q.floor
              AND NOT EXISTS (SELECT 1 FROM {s}.items i WHERE i.stream = w.s AND i.event = w.e AND i.reaction = w.r)
        ), numbered AS (
            SELECT f.s, f.e, f.r, f.p, f.enqueued + row_number() OVER (PARTITION BY f.s ORDER BY f.o) AS seq
            FROM fresh f
        ), ins AS (
            INSERT INTO {s}.items (stream, event, reaction, seq) SELECT n.s, n.e, n.r, n.seq FROM numbered n
        ), touched AS (
            UPDATE {s}.marks m SET
                enqueued = m.enqueued + a.n,
                head = greatest(m.head, a.last)
            FROM (SELECT n.s, count(*) AS n, max(n.e) AS last, min(n.e) AS first, max(n.p) AS priority
                  FROM numbered n GROUP BY n.s) a
            WHERE m.stream = a.s
            -- the new value: the queue's first items iff it equals a.n
            RETURNING a.s, a.n, a.first, a.priority, m.enqueued = a.n AS fresh
        ), told AS (
            -- for the queue row, folded in by whoever next holds its lock
            INSERT INTO {s}.news (stream, first, priority, fresh)
                SELECT t.s, t.first, t.priority, t.fresh FROM touched t
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

-- Reset, as in version 2 (recreated with the view it returns).
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
