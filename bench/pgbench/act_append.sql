\set s random(1, 100)
SELECT * FROM act_probe.act_append('stream-' || :s, -2, ARRAY['Ping'], ARRAY['{"n":1,"text":"hello"}'::jsonb], 'c0ffee00-0000-0000-0000-000000000000', '{"action":{"name":"ping","stream":"s"}}'::jsonb, '{"id":"bench","name":"bench"}'::jsonb, NULL, 0, false, 0);
