-- Opening: reads the schema marker, or writes it under a prefix that holds
-- nothing yet. ARGV[3]: the schema version this build writes.
-- Returns the version found (or just written), or -1 when act keys exist
-- without a marker.

local found = redis.call('HGET', P .. 'meta', 'schema')
if found then
  return tonumber(found) or -2
end
if redis.call('EXISTS', P .. 'seq', P .. 'events', P .. 'checkpoint', QUEUES) > 0 then
  return -1
end
redis.call('HSET', P .. 'meta', 'schema', ARGV[3], 'created', fmt(now_us()))
return tonumber(ARGV[3])
