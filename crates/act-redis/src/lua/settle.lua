-- Settle: applies settlements in the order given (the caller puts blocks
-- first), each only when its lease passes the fencing rule; releases each
-- lease and clears `waiting`. ARGV[3] is the number of settlements, then 8
-- fields each: queue, token, from, mark, acked ('' for none), kind ('a' ack,
-- 'r' retry, 'b' block, 'd' defer), delay (us), error.
--
-- With `acked`, removes the queue's items for events up to it that were
-- enqueued up to `mark` and moves the position up to it (never down). An
-- ack at or past `suspect_to` ends the walk of a lapsed batch (see
-- claim.lua; suspect_to = 0). Any ack is progress: a failure after it
-- restarts the retry count at 1 and clears lapses; one without progress
-- adds one. A deferral is not a failure: it keeps the count (0 after
-- progress), records no error and sets the next attempt after the delay.
-- O(items removed · log n) each.
--
-- Returns {code, detail} per settlement (see `fence`); publishes a wake-up
-- when one was applied.

local now = now_us()
local out = {}
local wake = false
for i = 0, tonumber(ARGV[3]) - 1 do
  local b = 4 + i * 8
  local s = ARGV[b]
  local verdict, f = fence(s, ARGV[b + 1], now, ARGV[b + 2])
  if verdict[1] == 0 then
    local k = qkey(s)
    local mark, acked, kind = tonumber(ARGV[b + 3]), ARGV[b + 4], ARGV[b + 5]
    local retries, lapses = tonumber(f[4]) or 0, tonumber(f[5]) or 0
    local kept = retries
    local walking = false
    if acked ~= '' then
      local got = redis.call('ZRANGEBYSCORE', ikey(s), '-inf', acked, 'WITHSCORES')
      drop_where(s, got, function(m)
        return item_seq(m) <= mark
      end)
      if tonumber(acked) > tonumber(f[3]) then
        redis.call('HSET', k, 'position', acked)
      end
      walking = tonumber(acked) < (tonumber(redis.call('HGET', k, 'suspect_to')) or 0)
      if not walking then
        redis.call('HDEL', k, 'suspect_to')
      end
    end
    if acked ~= '' then
      retries, lapses = 1, 0
    else
      retries = math.min(retries + 1, 4294967295)
    end
    redis.call('HDEL', k, 'owner', 'expires', 'waiting')
    if kind == 'a' then
      redis.call('HSET', k, 'retries', 0, 'lapses', 0)
      redis.call('HDEL', k, 'retry_at', 'error')
    elseif kind == 'd' then
      if acked ~= '' then
        kept = 0
      end
      redis.call('HSET', k, 'retries', fmt(kept), 'lapses', fmt(lapses), 'retry_at',
        fmt(now + tonumber(ARGV[b + 6])))
      redis.call('HDEL', k, 'error')
    elseif kind == 'r' then
      redis.call('HSET', k, 'retries', fmt(retries), 'lapses', fmt(lapses), 'retry_at',
        fmt(now + tonumber(ARGV[b + 6])), 'error', ARGV[b + 7])
    else
      redis.call('HSET', k, 'retries', fmt(retries), 'lapses', fmt(lapses), 'blocked', 1,
        'error', ARGV[b + 7])
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
