-- Reset. ARGV: 3 queue, 4 position (checked >= 0 by the caller). Returns
-- {-1, head} for a position past the log's head, {-2} for a queue that does
-- not exist and that no active reaction can target (static target this
-- queue, or dynamic); otherwise drops the queue's items, moves it to the
-- position (also its floor), clears retries, lapses, retry, block, waiting,
-- lease and the walk of a lapsed batch (suspect_to), increases the token, replaces its replays by one per active
-- reaction that may target it and has correlated past max(position, its
-- start), and returns {1, state}. Creates the queue when absent.

local s, position = ARGV[3], ARGV[4]
local head = head_id()
if tonumber(position) > head then
  return { -1, head }
end
local candidates = {}
for _, name in ipairs(redis.call('ZRANGE', SUBS, 0, -1)) do
  local f = redis.call('HMGET', subkey(name), 'retired', 'target', 'start', 'checkpoint')
  if not f[1] and (not f[2] or f[2] == s) then
    candidates[#candidates + 1] = { name, f[3] or '0', f[4] or '0' }
  end
end
local k = qkey(s)
if redis.call('EXISTS', k) == 0 and #candidates == 0 then
  return { -2 }
end
create(s)

for _, r in ipairs(redis.call('ZRANGE', rqkey(s), 0, -1)) do
  local m = replay_member(s, r)
  redis.call('ZREM', REPLAYS, m)
  redis.call('HDEL', RP, m)
end
redis.call('DEL', rqkey(s))
for _, c in ipairs(candidates) do
  local from = position
  if tonumber(c[2]) > tonumber(position) then
    from = c[2]
  end
  if tonumber(c[3]) > tonumber(from) then
    local m = replay_member(s, c[1])
    redis.call('ZADD', REPLAYS, 0, m)
    redis.call('HSET', RP, m, from .. ':' .. c[3])
    redis.call('ZADD', rqkey(s), from, c[1])
  end
end

local counts = {}
for _, m in ipairs(redis.call('ZRANGE', ikey(s), 0, -1)) do
  local r = item_reaction(m)
  counts[r] = (counts[r] or 0) - 1
end
count_pending(counts)
redis.call('DEL', ikey(s))
redis.call('HSET', k, 'position', position, 'floor', position, 'lag', 0)
redis.call('HDEL', k, 'suspect_to')
clear(s)
refresh_replay(s)
place(s, now_us())
redis.call('PUBLISH', WAKE, 'reset')
return { 1, state(s) }
