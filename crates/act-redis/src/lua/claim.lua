-- Claim: moves queues whose lease or retry time has passed from `delayed`
-- back to `due` (at most 1000 + ARGV[4] of them per call), then leases the
-- first ARGV[4] queues of `due` to owner ARGV[3] for ARGV[6] microseconds,
-- each with a new fencing token, and reads up to ARGV[5] of each queue's
-- pending events from its work index.
--
-- Returns one entry per leased queue:
-- {stream, token, expires (us), position, retries, {ids...}, {records...}}.

local now = now_us()
local n = tonumber(ARGV[4])
if n <= 0 then
  return {}
end
local ready = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', fmt(now), 'LIMIT', 0, 1000 + n)
for _, s in ipairs(ready) do
  place(s, now)
end
local picked = redis.call('ZRANGE', DUE, 0, n - 1)
local expires = now + tonumber(ARGV[6])
local out = {}
for _, member in ipairs(picked) do
  local s = string.sub(member, 25)
  local k = qkey(s)
  local token = redis.call('HINCRBY', k, 'token', 1)
  redis.call('HSET', k, 'owner', ARGV[3], 'expires', fmt(expires))
  place(s, now)
  local f = redis.call('HMGET', k, 'position', 'retries')
  local ids = redis.call('ZRANGEBYSCORE', wkey(s), '(' .. f[1], '+inf', 'LIMIT', 0, tonumber(ARGV[5]))
  out[#out + 1] = { s, token, expires, f[1], f[2] or '0', ids, hmget(EVENTS, ids) }
end
return out
