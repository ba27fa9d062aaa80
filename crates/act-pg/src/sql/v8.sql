-- Version 8: act_fold in PL/pgSQL, so its plan is kept.
--
-- Claims and settles fold correlation's news into the queue rows through
-- act_fold (version 5). It was a LANGUAGE sql function. PostgreSQL before
-- version 18 keeps no plan of such a function from one call to the next: it
-- parses and plans the body on every call. That cost 0.4–0.5 ms per claim
-- and per settle (pg_stat_statements: 0.44–0.51 ms per call, of which the
-- statement itself ran 0.04 ms). In a one-broker drain it was about a sixth
-- of the server's time. PL/pgSQL keeps the statement's plan for the
-- session, and a generic plan (plan_cache_mode) spares the planning that
-- a custom plan per call would still cost: 0.13–0.21 ms per call remain.
-- The plan's shape does not depend on the streams given (a few news rows,
-- queue rows by primary key). The statement, its arguments and its effect
-- are the same.
-- Released versions are never edited in place: this migration replaces
-- the function.

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
        next = (SELECT min(i.event) FROM {s}.items i WHERE i.stream = q.stream),
        priority = CASE WHEN a.fresh THEN a.priority ELSE greatest(q.priority, a.priority) END,
        waiting = CASE WHEN q.next IS NULL OR a.first < q.next THEN NULL ELSE q.waiting END
    FROM a WHERE q.stream = a.stream;
END $$;
