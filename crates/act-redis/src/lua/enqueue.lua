-- Correlation: records work and moves the checkpoint from ARGV[3] to ARGV[4]
-- (compare-and-set: when the checkpoint is not ARGV[3], writes nothing).
-- Then triples from ARGV[5]: queue, event id, priority. Creates queues on
-- first sight, moves work marks and priorities up (never down), re-places
-- every touched queue.
--
-- Returns {checkpoint after the call, 1 when work was recorded}.

local cp = tonumber(redis.call('GET', P .. 'checkpoint') or '0')
if cp ~= tonumber(ARGV[3]) then
  return { cp, 0 }
end
local now = now_us()
local seen = {}
local order = {}
for i = 5, #ARGV, 3 do
  local s, e, p = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  redis.call('ZADD', wkey(s), ARGV[i + 1], ARGV[i + 1])
  local t = seen[s]
  if not t then
    seen[s] = { e, p }
    order[#order + 1] = s
  else
    if e > t[1] then
      t[1] = e
    end
    if p > t[2] then
      t[2] = p
    end
  end
end
for _, s in ipairs(order) do
  local k = qkey(s)
  local t = seen[s]
  local f = redis.call('HMGET', k, 'head', 'priority')
  if not f[1] then
    redis.call('HSET', k, 'position', 0, 'head', fmt(t[1]), 'priority', fmt(t[2]),
      'retries', 0, 'blocked', 0, 'token', 0)
    redis.call('ZADD', QUEUES, 0, s)
  else
    if t[1] > tonumber(f[1]) then
      redis.call('HSET', k, 'head', fmt(t[1]))
    end
    if t[2] > (tonumber(f[2]) or 0) then
      redis.call('HSET', k, 'priority', fmt(t[2]))
    end
  end
  place(s, now)
end
redis.call('SET', P .. 'checkpoint', ARGV[4])
if #order > 0 then
  redis.call('PUBLISH', WAKE, 'enqueue')
  return { tonumber(ARGV[4]), 1 }
end
return { tonumber(ARGV[4]), 0 }
