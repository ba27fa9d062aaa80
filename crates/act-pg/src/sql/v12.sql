-- Version 12: an acknowledgement inside a handler's transaction looks for
-- the queue's next event from where it can be, as a settle does since
-- version 11.
--
-- `act_ack_within` (version 7) folds the queue's news under its row lock,
-- then deleted the acknowledged items and set `next` to the queue's lowest
-- item, both by walking the queue's primary key from its first entry,
-- through the entries of every item deleted before and not yet vacuumed. A
-- transactional projection replaying a long stream acknowledges one window
-- at a time, so each acknowledgement walked all the windows before it.
-- After the fold every item of the queue is at or above the `next` read
-- then (version 11's argument: items below `next` exist only while their
-- news is unfolded, and the fold just took all of it), so both are
-- bounded below by that `next`. Same arguments, results and locks.
-- Released versions are never edited in place: this migration replaces
-- the function.
CREATE OR REPLACE FUNCTION {s}.act_ack_within(
    p_stream text, p_token bigint, p_from bigint, p_mark bigint, p_acked bigint, p_offset_us bigint
) RETURNS TABLE (code int, current bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now() + p_offset_us * interval '1 microsecond';
    q {s}.queues;
    v_code int;
    v_next bigint;
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
    SELECT coalesce(x.next, 0) INTO v_next FROM {s}.queues x WHERE x.stream = p_stream;
    DELETE FROM {s}.items it
    WHERE it.stream = p_stream AND it.event >= v_next AND it.event <= p_acked AND it.seq <= p_mark;
    UPDATE {s}.queues x SET
        position = greatest(x.position, p_acked),
        suspect_to = CASE WHEN p_acked >= x.suspect_to THEN 0 ELSE x.suspect_to END,
        retries = 0, lapses = 0, retry_at = NULL, error = NULL,
        next = (SELECT min(it.event) FROM {s}.items it WHERE it.stream = p_stream AND it.event >= v_next)
    WHERE x.stream = p_stream;
    RETURN QUERY SELECT 0, NULL::bigint;
END $$;
