-- Version 4: a handler may answer "not yet" (a deferral, p_kinds 3): the
-- queue keeps its position, its next attempt is at v_now + p_delays_us, and
-- the attempt is not a failure: the retry count stays as it was (0 after
-- progress, as for any ack), no error is recorded and the lapses count is
-- kept. Released version 3 knew kinds 0-2 only; it is never edited in
-- place, so this migration replaces the function. Version 4 also adds
-- act_ack_within (at the end), for transactional projections.

-- Settle a batch, in the order given (the caller puts blocks first): each
-- settlement that passes the fence removes the queue's items up to p_acked
-- enqueued up to p_marks (when acked), moves the position up to it, records
-- the outcome (p_kinds: 0 ack, 1 retry, 2 block, 3 defer) and clears the
-- lease and waiting. Any ack is progress; one at or past suspect_to (the end
-- of a lapsed batch the queue walks) also ends the walk (suspect_to = 0).
-- Retries restart at 1 after a failure with progress, else grow; a deferral
-- keeps them (0 after progress). Lapses restart on an ack and on progress.
-- Returns, per input in order, the fence code, the value it refers to
-- (current token or position) and whether the queue has claimable work left.
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

-- Acknowledge a queue's events inside the caller's own transaction (a
-- transactional projection: the caller's writes to its tables and this
-- acknowledgement commit together). The fencing rule of a settlement
-- (act_fence: the token, a live lease, the position read), then what an
-- ack of a settlement does: remove the items up to p_acked enqueued up to
-- p_mark, move the position up to it, clear retries, lapses, the retry time
-- and the error, end a lapsed batch's walk past suspect_to. The lease is
-- kept: the broker settles (and releases) it afterwards. The queue row
-- stays locked until the caller's transaction ends, so no other broker can
-- claim the queue in between. Returns the fence code and the value it
-- refers to (current token or position).
CREATE FUNCTION {s}.act_ack_within(
    p_stream text, p_token bigint, p_from bigint, p_mark bigint, p_acked bigint, p_offset_us bigint
) RETURNS TABLE (code int, current bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
    q {s}.queues;
    v_code int;
BEGIN
    SELECT * INTO q FROM {s}.queues x WHERE x.stream = p_stream FOR UPDATE;
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
