-- Retire. ARGV from 3: reaction names. When one is not a subscription,
-- changes nothing and returns {-1, name}. Otherwise, for each not yet
-- retired: marks it retired, drops its pending items from every queue
-- (walks every queue's items: an operator's command, not a hot path), stops
-- queues waiting for it from waiting, deletes its replays and recomputes
-- those queues' replay horizons. Returns {1, {name, dropped, queues,
-- newly (0/1)}...}.

for i = 3, #ARGV do
  if redis.call('EXISTS', subkey(ARGV[i])) == 0 then
    return { -1, ARGV[i] }
  end
end
local now = now_us()
local out = {}
local streams = nil
for i = 3, #ARGV do
  local name = ARGV[i]
  local k = subkey(name)
  local dropped, touched, newly = 0, 0, 0
  if not redis.call('HGET', k, 'retired') then
    newly = 1
    redis.call('HSET', k, 'retired', fmt(now))
    streams = streams or redis.call('ZRANGE', QUEUES, 0, -1)
    for _, s in ipairs(streams) do
      local got = redis.call('ZRANGE', ikey(s), 0, -1, 'WITHSCORES')
      local n = drop_where(s, got, function(m)
        return item_reaction(m) == name
      end)
      local changed = false
      if n > 0 then
        dropped = dropped + n
        touched = touched + 1
        changed = true
      end
      if redis.call('HGET', qkey(s), 'waiting') == name then
        redis.call('HDEL', qkey(s), 'waiting')
        changed = true
      end
      if changed then
        place(s, now)
      end
    end
    for _, m in ipairs(redis.call('ZRANGE', REPLAYS, 0, -1)) do
      local z = string.find(m, '\0', 1, true)
      if z and string.sub(m, z + 1) == name then
        local s = string.sub(m, 1, z - 1)
        redis.call('ZREM', REPLAYS, m)
        redis.call('HDEL', RP, m)
        redis.call('ZREM', rqkey(s), name)
        refresh_replay(s)
        place(s, now)
      end
    end
  end
  out[#out + 1] = { name, dropped, touched, newly }
end
redis.call('PUBLISH', WAKE, 'retire')
return { 1, out }
