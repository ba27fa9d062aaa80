\set s random(1, 100)
INSERT INTO act_probe.events (id, stream, version, name, data, created, correlation, causation, actor) VALUES ((pg_current_xact_id()::text::bigint << 16) + 1, 'stream-' || :s || '-' || random(), 0, 'Ping', '{"n":1,"text":"hello"}'::jsonb, now(), 'c0ffee00-0000-0000-0000-000000000000', '{"action":{"name":"ping","stream":"s"}}'::jsonb, '{"id":"bench","name":"bench"}'::jsonb);
