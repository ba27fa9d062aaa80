-- Version 7: a refused settle, release or acknowledgement locks nothing,
-- as version 6 did for renewals.
--
-- Each function used to lock every queue row it was given, then check the
-- fence (token, live lease, position). A refused call (a stale broker, a
-- lease that just expired) still held those rows until its statement or
-- transaction ended. Meanwhile a claim, which skips locked rows, passed
-- over a queue that was claimable, and a one-shot run could end with work
-- left. Now each function first reads the rows without locking, locks (in
-- stream order) only those that pass the fence, then reads them again
-- under the lock and checks the fence again: only that second check
-- decides. A row that failed the first check is refused without a lock;
-- it could only pass a later check through a renewal that committed in
-- between, that is after this call's clock found the lease expired, and
-- refusing that call is what the fence is for.
--
-- Same arguments and results as before. Released versions are never
-- edited in place: this migration replaces the three functions.

-- Settle, as in version 5, locking and folding only the queues that pass
-- the fence.
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

-- Acknowledge within the caller's transaction, as in version 5, locking
-- the queue only when it passes the fence. The caller's transaction holds
-- what it locks until it commits, so a refusal there held the row longest.
CREATE OR REPLACE FUNCTION {s}.act_ack_within(
    p_stream text, p_token bigint, p_from bigint, p_mark bigint, p_acked bigint, p_offset_us bigint
) RETURNS TABLE (code int, current bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
    q {s}.queues;
    v_code int;
BEGIN
    SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_stream;
    v_code := {s}.act_fence(q, p_token, p_from, v_now);
    IF v_code = 0 THEN
        SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_stream FOR UPDATE;
        v_code := {s}.act_fence(q, p_token, p_from, v_now);
    END IF;
    IF v_code <> 0 THEN
        RETURN QUERY SELECT v_code, CASE v_code WHEN 2 THEN q.token WHEN 4 THEN q.position END;
        RETURN;
    END IF;
    PERFORM {s}.act_fold(ARRAY[p_stream]);
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

-- Release leases whose token is current (live or expired), as in version
-- 1, locking only those rows. A row whose token was not current when
-- looked at never becomes current again: tokens only grow.
CREATE OR REPLACE FUNCTION {s}.act_release(p_streams text[], p_tokens bigint[])
RETURNS TABLE (code int, current bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_n int := coalesce(array_length(p_streams, 1), 0);
    v_codes int[] := array_fill(0, ARRAY[v_n]);
    v_current bigint[] := array_fill(NULL::bigint, ARRAY[v_n]);
    v_locked text[];
    q {s}.queues; i int;
BEGIN
    SELECT coalesce(array_agg(l.stream), '{}') INTO v_locked FROM (
        SELECT x.stream FROM {s}.queues x
        JOIN unnest(p_streams, p_tokens) AS u(s, t) ON x.stream = u.s AND x.token = u.t
        ORDER BY x.stream FOR UPDATE OF x) l;
    FOR i IN 1..v_n LOOP
        SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_streams[i];
        IF q.stream IS NULL THEN
            v_codes[i] := 1;
        ELSIF q.token <> p_tokens[i] OR NOT (p_streams[i] = ANY (v_locked)) THEN
            v_codes[i] := 2; v_current[i] := q.token;
        ELSE
            UPDATE {s}.queues x SET lease_owner = NULL, lease_expires = NULL WHERE x.stream = p_streams[i];
        END IF;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(v_codes, v_current);
END $$;
