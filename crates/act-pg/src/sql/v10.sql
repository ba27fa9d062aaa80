-- Version 10: a claim reads its window, not the queue's whole backlog,
-- whatever the table's statistics say.
--
-- act_claim cuts each queue's window with a statement that groups the
-- queue's items by event, in event order, and stops after the window's
-- events. PostgreSQL plans it for each of a session's first five calls with
-- the values given (a custom plan). When the statistics of `items` say that
-- queues are short while one is long (a reaction added to a long log, the
-- one queue of a projection), it chose to read every pending item of the
-- queue through a bitmap scan and sort them all to find the first events:
-- 20,000 items per claim in `tests/plans.rs`, a million after a backfill of
-- a million events, and 7–9 ms instead of 0.2 ms per claim of a 20,000-item
-- queue. Without bitmap scans and sorts the only cheap plan left is the one
-- that follows the primary key in event order and stops early, and the
-- function's other statements already follow indexes in the order they
-- need (the due queues by `queues_due`, the window's items by the primary
-- key, events by id; ORDER BY inside an aggregate is not affected).
-- Released versions are never edited in place: this migration sets the
-- function's planner settings and leaves its body as version 5 made it.

ALTER FUNCTION {s}.act_claim(text, int, int, bigint, text[], text, text, bigint)
    SET enable_bitmapscan = off
    SET enable_sort = off;
