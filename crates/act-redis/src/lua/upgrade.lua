-- Upgrades a prefix of schema 1 or 2 to 3, in one script, only when the
-- marker says 1 or 2 (a second process that opens at the same time finds
-- 3 and does nothing). ARGV[3]: the version it writes (3).
--
-- Schema 1 to 2:
--
-- Schema 1 kept each queue's work as event ids (`w:{s}`, pending = above
-- the position) and no reactions. Each pending id becomes an item with no
-- reaction (sequence numbers 1, 2, ... in id order); acknowledged ones are
-- dropped. New queue fields get their defaults (floor 0, lapses 0); the
-- claim indexes are rebuilt (their members changed). The v1 correlation
-- checkpoint (`checkpoint`) stays: it is the legacy checkpoint.
-- O(work of schema 1 · log n).
--
-- Schema 2 to 3: the `pending` hash (reaction -> pending items), counted
-- from every queue's items. O(pending items).
--
-- Returns the version after the call.

local found = redis.call('HGET', P .. 'meta', 'schema')
if found ~= '1' and found ~= '2' then
  return tonumber(found) or -2
end
local now = now_us()
if found == '1' then
redis.call('DEL', DUE, DELAYED)
for _, s in ipairs(redis.call('ZRANGE', QUEUES, 0, -1)) do
  local k = qkey(s)
  local w = P .. 'w:' .. s
  local position = redis.call('HGET', k, 'position') or '0'
  local ids = redis.call('ZRANGEBYSCORE', w, '(' .. position, '+inf')
  local members = {}
  for j, id in ipairs(ids) do
    members[#members + 1] = id
    members[#members + 1] = item('', j)
  end
  local i = 1
  while i <= #members do
    local chunk = {}
    for j = i, math.min(i + 999, #members) do
      chunk[#chunk + 1] = members[j]
    end
    redis.call('ZADD', ikey(s), unpack(chunk))
    i = i + 1000
  end
  redis.call('DEL', w)
  redis.call('HDEL', k, 'dk', 'at', 'wi')
  redis.call('HSET', k, 'floor', 0, 'lapses', 0, 'enqueued', fmt(#ids), 'lag', fmt(#ids))
  if not redis.call('HGET', k, 'head') then
    redis.call('HSET', k, 'head', 0)
  end
  place(s, now)
end
end

redis.call('DEL', PENDING)
local counts = {}
for _, s in ipairs(redis.call('ZRANGE', QUEUES, 0, -1)) do
  for _, m in ipairs(redis.call('ZRANGE', ikey(s), 0, -1)) do
    local r = item_reaction(m)
    counts[r] = (counts[r] or 0) + 1
  end
end
count_pending(counts)
redis.call('HSET', P .. 'meta', 'schema', ARGV[3], 'upgraded', fmt(now))
return tonumber(ARGV[3])
