-- Append: idempotency key lookup, expected-version check, dense ids (INCRBY
-- inside the script, so ids become visible in order), one JSON record per
-- event, the stream's index, the key, and a wake-up.
--
-- ARGV: 3 stream, 4 expected ('any' | 'none' | 'exact'), 5 expected version,
-- 6 '1' when 7 is an idempotency key, 8 stream as JSON, 9 correlation as
-- JSON, 10 causation as JSON, 11 actor as JSON, 12 number of messages n, then
-- n pairs (name as JSON, data as JSON).
--
-- Returns {0, first id, created (us), first version} when appended,
-- {1, first id, last id, records...} for a used key, {2, actual version or
-- -1} for a version conflict, {3} for an empty append that matched.

local key = nil
if ARGV[6] == '1' then
  key = ARGV[7]
end
if key then
  local used = redis.call('HGET', P .. 'keys', key)
  if used then
    local first, last = string.match(used, '^(%d+):(%d+)$')
    first, last = tonumber(first), tonumber(last)
    local ids = {}
    for id = first, last do
      ids[#ids + 1] = fmt(id)
    end
    local out = { 1, first, last }
    for _, r in ipairs(hmget(EVENTS, ids)) do
      out[#out + 1] = r
    end
    return out
  end
end

local skey = P .. 's:' .. ARGV[3]
local count = redis.call('ZCARD', skey)
local expected = ARGV[4]
local ok = expected == 'any'
  or (expected == 'none' and count == 0)
  or (expected == 'exact' and count > 0 and count - 1 == tonumber(ARGV[5]))
if not ok then
  return { 2, count - 1 }
end
local n = tonumber(ARGV[12])
if n == 0 then
  return { 3 }
end

local now = now_us()
local last = redis.call('INCRBY', P .. 'seq', n)
local first = last - n + 1
local common = ',"created":' .. fmt(now) .. ',"correlation":' .. ARGV[9]
  .. ',"causation":' .. ARGV[10] .. ',"actor":' .. ARGV[11] .. ',"data":'
for i = 0, n - 1 do
  local id = fmt(first + i)
  local record = '{"stream":' .. ARGV[8] .. ',"version":' .. fmt(count + i)
    .. ',"name":' .. ARGV[13 + 2 * i] .. common .. ARGV[14 + 2 * i] .. '}'
  redis.call('HSET', EVENTS, id, record)
  redis.call('ZADD', skey, id, id)
end
if key then
  redis.call('HSET', P .. 'keys', key, fmt(first) .. ':' .. fmt(last))
end
redis.call('PUBLISH', WAKE, fmt(last))
return { 0, first, now, count }
