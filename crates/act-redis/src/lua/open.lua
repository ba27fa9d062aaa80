-- Opening: reads the schema marker. ARGV: 3 the schema version this build
-- writes, 4 '1' when it may create the store (write the marker under a
-- prefix that holds nothing yet). Writes nothing else.
-- Returns the version found (or just written); 0 when the prefix holds
-- nothing and creating is not allowed; -1 when act keys exist without a
-- marker; -2 for a marker that is not a number.

local found = redis.call('HGET', P .. 'meta', 'schema')
if found then
  return tonumber(found) or -2
end
if redis.call('EXISTS', P .. 'seq', P .. 'events', P .. 'checkpoint', QUEUES, SUBS) > 0 then
  return -1
end
if ARGV[4] ~= '1' then
  return 0
end
redis.call('HSET', P .. 'meta', 'schema', ARGV[3], 'created', fmt(now_us()))
return tonumber(ARGV[3])
