-- Reads events by id (read only). Two modes:
--   ARGV 3 'range': 4 lowest id, 5 highest id (inclusive), clamped to the
--     head; 6 '1' for backward, 7 at most this many.
--   ARGV 3 'stream': 4 stream, 5 exclusive lower bound, 6 exclusive upper
--     bound ('+inf' for none), 7 '1' for backward, 8 at most this many.
-- Returns {head, ids..., records...} with ids and records in read order.

local head = tonumber(redis.call('GET', P .. 'seq') or '0')
local ids = {}
if ARGV[3] == 'range' then
  local lo, hi = math.max(tonumber(ARGV[4]), 1), math.min(tonumber(ARGV[5]), head)
  local limit = tonumber(ARGV[7])
  if ARGV[6] == '1' then
    local id = hi
    while id >= lo and #ids < limit do
      ids[#ids + 1] = fmt(id)
      id = id - 1
    end
  else
    local id = lo
    while id <= hi and #ids < limit do
      ids[#ids + 1] = fmt(id)
      id = id + 1
    end
  end
else
  local skey = P .. 's:' .. ARGV[4]
  local lo, hi = '(' .. ARGV[5], ARGV[6]
  if hi ~= '+inf' then
    hi = '(' .. hi
  end
  if ARGV[7] == '1' then
    ids = redis.call('ZREVRANGEBYSCORE', skey, hi, lo, 'LIMIT', 0, tonumber(ARGV[8]))
  else
    ids = redis.call('ZRANGEBYSCORE', skey, lo, hi, 'LIMIT', 0, tonumber(ARGV[8]))
  end
end
local out = { head }
for _, id in ipairs(ids) do
  out[#out + 1] = id
end
for _, r in ipairs(hmget(EVENTS, ids)) do
  out[#out + 1] = r
end
return out
