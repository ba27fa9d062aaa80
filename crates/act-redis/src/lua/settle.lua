-- Settle: applies settlements in the order given (the caller puts blocks
-- first), each only when its lease passes the fencing rule; releases each
-- lease. ARGV[3] is the number of settlements, then 7 fields each: queue,
-- token, from, to, kind ('a' ack, 'r' retry, 'b' block), delay (us), error.
--
-- Returns {code, detail} per settlement (see `fence`); publishes a wake-up
-- when a settled queue is claimable again.

local now = now_us()
local out = {}
local wake = false
for i = 0, tonumber(ARGV[3]) - 1 do
  local b = 4 + i * 7
  local s = ARGV[b]
  local verdict, f = fence(s, ARGV[b + 1], now, ARGV[b + 2])
  if verdict[1] == 0 then
    local k = qkey(s)
    local kind = ARGV[b + 4]
    local retries = tonumber(f[4]) or 0
    if tonumber(ARGV[b + 3]) > tonumber(ARGV[b + 2]) then
      retries = 1
    else
      retries = math.min(retries + 1, 4294967295)
    end
    redis.call('HDEL', k, 'owner', 'expires')
    if kind == 'a' then
      redis.call('HSET', k, 'position', ARGV[b + 3], 'retries', 0)
      redis.call('HDEL', k, 'retry_at', 'error')
    elseif kind == 'r' then
      redis.call('HSET', k, 'position', ARGV[b + 3], 'retries', fmt(retries),
        'retry_at', fmt(now + tonumber(ARGV[b + 5])), 'error', ARGV[b + 6])
    else
      redis.call('HSET', k, 'position', ARGV[b + 3], 'retries', fmt(retries), 'blocked', 1,
        'error', ARGV[b + 6])
      redis.call('HDEL', k, 'retry_at')
      redis.call('ZADD', BLOCKED, 0, s)
    end
    -- Claimable work left, or at least a lease freed: brokers waiting for
    -- either (catch_up waits for other brokers' leases) look again.
    place(s, now)
    wake = true
  end
  out[#out + 1] = verdict
end
if wake then
  redis.call('PUBLISH', WAKE, 'settle')
end
return out
