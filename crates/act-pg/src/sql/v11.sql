-- Version 11: a settle and a fold look for a queue's next event from where
-- it can be, not from the queue's first index entry.
--
-- A queue's `next` is its lowest pending event, except for items whose
-- news is not folded yet: every item is at or above `next`, or was added
-- by an enqueue whose news row for the queue is still there. Enqueues add
-- items only with news (version 5); a fold sets `next` from all items;
-- settles, acknowledgements and retirements delete items and set it from
-- what is left; a reset deletes them all. So:
--
-- * a settle, after folding the queue's news under its row lock, deletes
--   its batch and looks for the new `next` at or above the `next` it
--   holds: every item of the batch is there (it was pending when the queue
--   was claimed), and an item added since came with news, folded later;
-- * a fold looks at or above the lower of `next` and its news' first
--   events.
--
-- Both used to walk the queue's primary key from its first entry, through
-- the entries of every item deleted before and not yet vacuumed: on a
-- queue of 200,000 events the settle's delete and its `min(event)` took
-- 0.6–0.7 ms each on average, up to 8 ms, growing with the backlog already
-- delivered. Same arguments, results and locks. Released versions are
-- never edited in place: this migration replaces both functions.

-- Settle, as in version 7, bounded below by the queue's next event.
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
    v_locked text[];
    q {s}.queues;
    v_code int; i int; v_left boolean; v_progress boolean; v_walking boolean;
BEGIN
    SELECT coalesce(array_agg(l.stream), '{}') INTO v_locked FROM (
        SELECT x.stream FROM {s}.queues x
        JOIN unnest(p_streams, p_tokens, p_froms) AS u(s, t, f) ON x.stream = u.s
        WHERE {s}.act_fence(x, u.t, u.f, v_now) = 0
        ORDER BY x.stream FOR UPDATE OF x) l;
    IF cardinality(v_locked) > 0 THEN
        PERFORM {s}.act_fold(v_locked);
    END IF;
    FOR i IN 1..v_n LOOP
        SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_streams[i];
        v_code := {s}.act_fence(q, p_tokens[i], p_froms[i], v_now);
        IF v_code = 0 AND NOT (p_streams[i] = ANY (v_locked)) THEN
            v_code := 3; -- renewed after this call found the lease expired
        END IF;
        v_codes[i] := v_code;
        IF v_code = 2 THEN v_current[i] := q.token; END IF;
        IF v_code = 4 THEN v_current[i] := q.position; END IF;
        CONTINUE WHEN v_code <> 0;
        v_walking := p_acked[i] IS NOT NULL AND p_acked[i] < q.suspect_to;
        v_progress := p_acked[i] IS NOT NULL;
        IF p_acked[i] IS NOT NULL THEN
            DELETE FROM {s}.items it
            WHERE it.stream = p_streams[i] AND it.event >= coalesce(q.next, 0)
              AND it.event <= p_acked[i] AND it.seq <= p_marks[i];
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
                        THEN (SELECT min(it.event) FROM {s}.items it
                              WHERE it.stream = p_streams[i] AND it.event >= coalesce(q.next, 0))
                        ELSE x.next END
        WHERE x.stream = p_streams[i]
        RETURNING x.next IS NOT NULL AND NOT x.blocked AND (x.replay IS NULL OR x.next <= x.replay)
                  AND (x.retry_at IS NULL OR x.retry_at <= v_now)
        INTO v_left;
        v_more[i] := v_left;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(v_codes, v_current, v_more);
END $$;

-- Fold, as in version 8, bounded below by the queue's next event and the
-- news' first events.
CREATE OR REPLACE FUNCTION {s}.act_fold(p_streams text[]) RETURNS void LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    WITH d AS (
        DELETE FROM {s}.news n WHERE n.stream = ANY (p_streams)
        RETURNING n.stream, n.first, n.priority, n.fresh
    ), a AS (
        SELECT d.stream, min(d.first) AS first, max(d.priority) AS priority, bool_or(d.fresh) AS fresh
        FROM d GROUP BY d.stream
    )
    UPDATE {s}.queues q SET
        next = (SELECT min(i.event) FROM {s}.items i
                WHERE i.stream = q.stream AND i.event >= least(q.next, a.first)),
        priority = CASE WHEN a.fresh THEN a.priority ELSE greatest(q.priority, a.priority) END,
        waiting = CASE WHEN q.next IS NULL OR a.first < q.next THEN NULL ELSE q.waiting END
    FROM a WHERE q.stream = a.stream;
END $$;
