-- Version 6: an enqueue says which cursors it moved, and a refused renewal
-- locks nothing.
--
-- act_enqueue returns, beside each reaction's position after the call and
-- the number of items added, whether this call moved that reaction (it was
-- at p_from). A broker that read the same page as another and enqueued it
-- second finds the cursor where its own step ends; without this it could
-- not tell that it had lost the race, and read every page again behind the
-- winner. Otherwise as in version 5 (released: never edited in place). The
-- return type changes, so the function is dropped and created again.

DROP FUNCTION {s}.act_enqueue(text[], text, bigint, bigint, text[], bigint[], text[], int[]);

CREATE FUNCTION {s}.act_enqueue(
    p_reactions text[], p_replay text, p_from bigint, p_to bigint,
    p_streams text[], p_events bigint[], p_items text[], p_priorities int[]
) RETURNS TABLE (positions bigint[], added bigint, moved boolean[]) LANGUAGE plpgsql AS $$
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
    moved := (SELECT array_agg(u.r = ANY (v_moved) ORDER BY u.o)
              FROM unnest(p_reactions) WITH ORDINALITY AS u(r, o));
    RETURN NEXT;
END $$;

-- Renew, as in version 1, except that it locks only the rows it renews
-- (token current, lease live): a renewal that is refused (the lease
-- expired) no longer holds the queue row for its transaction, during which
-- a claim (SKIP LOCKED) passed over a queue that was claimable, and a
-- one-shot run could end with work left. A row not locked here cannot be
-- renewed: tokens only grow, and an expired lease comes back only through
-- a claim, which changes the token.
CREATE OR REPLACE FUNCTION {s}.act_renew(
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
    PERFORM 1 FROM {s}.queues x JOIN unnest(p_streams, p_tokens) AS u(s, t)
        ON x.stream = u.s AND x.token = u.t
        WHERE x.lease_expires > v_now
        ORDER BY x.stream FOR UPDATE OF x;
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
