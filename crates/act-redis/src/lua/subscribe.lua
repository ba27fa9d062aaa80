-- Subscribe. ARGV: 3 number of subscriptions n, then n quintuples (name,
-- event names as JSON, '1' when a target follows | '0', target, start).
-- Records the unknown ones (checkpoint = start, created = seen = now),
-- refreshes `seen`, event names and target of the known active ones, leaves
-- retired ones alone. Returns every subscription (see `subscriptions`).

local now = fmt(now_us())
for i = 0, tonumber(ARGV[3]) - 1 do
  local b = 4 + i * 5
  local name, events, has_target, target, start = ARGV[b], ARGV[b + 1], ARGV[b + 2],
    ARGV[b + 3], ARGV[b + 4]
  local k = subkey(name)
  local f = redis.call('HMGET', k, 'start', 'retired')
  if not f[1] then
    redis.call('HSET', k, 'events', events, 'start', start, 'checkpoint', start, 'created', now,
      'seen', now)
    redis.call('ZADD', SUBS, 0, name)
    if has_target == '1' then
      redis.call('HSET', k, 'target', target)
    end
  elseif not f[2] then
    redis.call('HSET', k, 'events', events, 'seen', now)
    if has_target == '1' then
      redis.call('HSET', k, 'target', target)
    else
      redis.call('HDEL', k, 'target')
    end
  end
end
return subscriptions()
