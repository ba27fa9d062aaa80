-- Correlation step. ARGV: 3 replay queue ('' for a live or backfill step),
-- 4 from, 5 to, 6 number of reactions n, then n reaction names, then
-- quadruples (queue, event id, reaction, priority).
--
-- Per reaction (compare-and-set): an active subscription whose checkpoint
-- is `from` (for a replay step: whose replay on the queue is at `from`)
-- moves to `to`; the items of the other reactions are dropped, and so are
-- the items of a replay step for another queue. Items for events at or
-- below a queue's floor, or already pending, are not added. Each added
-- item gets the queue's next sequence number. Creates queues on first
-- sight. A replay that reaches its end is deleted and the queue's replay
-- horizon recomputed. O(items · log n).
--
-- Returns {-1, index of the item, head} when an item names an event that
-- is not in the log (nothing written), else {1 when items were added,
-- {position after the call | false, ...}}.

local replay = ARGV[3]
if replay == '' then
  replay = nil
end
local from, to = ARGV[4], ARGV[5]
local nr = tonumber(ARGV[6])
local first_item = 7 + nr

local head = head_id()
for i = first_item, #ARGV, 4 do
  local e = tonumber(ARGV[i + 1])
  if not e or e < 1 or e > head then
    return { -1, (i - first_item) / 4, head }
  end
end

local now = now_us()
local after = {}
local moved = {}
-- Per reaction: 1 when this call moves it, 0 when another call had.
local mine = {}
for j = 1, nr do
  local r = ARGV[6 + j]
  local at = nil
  if replay then
    local v = redis.call('HGET', RP, replay_member(replay, r))
    if v then
      at = string.match(v, '^([^:]+):')
    end
  else
    local f = redis.call('HMGET', subkey(r), 'checkpoint', 'retired')
    if f[1] and not f[2] then
      at = f[1]
    end
  end
  if at == from then
    moved[r] = true
    after[j] = to
    mine[j] = 1
  else
    after[j] = at or false
    mine[j] = 0
  end
end

-- Per touched queue: what this call read of it and changes (written once
-- per queue at the end).
local queues = {}
local order = {}
local added = 0
local counts = {}
for i = first_item, #ARGV, 4 do
  local s, r = ARGV[i], ARGV[i + 2]
  if moved[r] and (not replay or s == replay) then
    local e, p = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 3])
    local q = queues[s]
    if not q then
      -- What `place` needs (1 to 9) and what this step needs (10 on).
      local f = redis.call('HMGET', qkey(s), 'priority', 'blocked', 'retry_at', 'expires',
        'waiting', 'replay', 'dk', 'at', 'wi', 'position', 'floor', 'enqueued', 'head', 'lag')
      if f[10] then
        local nxt = nil
        if f[7] then
          nxt = key_next(f[7])
        else
          nxt = first_event(s)
        end
        q = { floor = tonumber(f[11]) or 0, next = nxt, enqueued = tonumber(f[12]) or 0,
          head = tonumber(f[13]) or 0, priority = tonumber(f[1]) or 0, lag = tonumber(f[14]) or 0 }
      else
        create(s)
        f = { '0', '0', false, false, false, false, false, false, false }
        q = { floor = 0, next = nil, enqueued = 0, head = 0, priority = 0, lag = 0 }
      end
      q.f, q.unwait, q.changed = f, false, false
      q.head0, q.added, q.adds, q.events = q.head, {}, {}, {}
      queues[s] = q
      order[#order + 1] = s
    end
    if e > q.floor then
      -- Items added by this call are written at the end (one ZADD per
      -- queue); above the work mark the queue had nothing pending yet, so
      -- only items at or below it are looked up.
      local id = ARGV[i + 1]
      local mine = id .. '\0' .. r
      local known = q.added[mine] ~= nil
      local stored = {}
      if not known and e <= q.head0 then
        stored = redis.call('ZRANGEBYSCORE', ikey(s), id, id)
        local prefix = r .. '\0'
        for _, m in ipairs(stored) do
          if string.sub(m, 1, #prefix) == prefix then
            known = true
            break
          end
        end
      end
      if not known then
        if q.next and e < q.next then
          -- The first pending event changed: look again at who can run it.
          q.unwait = true
        end
        if not q.next or e < q.next then
          q.next = e
        end
        if q.enqueued == 0 then
          q.priority = p
        elseif p > q.priority then
          q.priority = p
        end
        q.enqueued = q.enqueued + 1
        q.added[mine] = true
        q.adds[#q.adds + 1] = id
        q.adds[#q.adds + 1] = item(r, q.enqueued)
        if #stored == 0 and not q.events[id] then
          q.lag = q.lag + 1
        end
        q.events[id] = true
        if e > q.head then
          q.head = e
        end
        q.changed = true
        added = added + 1
        counts[r] = (counts[r] or 0) + 1
      end
    end
  end
end

for _, s in ipairs(order) do
  local q = queues[s]
  if q.changed then
    local k = qkey(s)
    local j = 1
    while j <= #q.adds do
      local chunk = {}
      for x = j, math.min(j + 999, #q.adds) do
        chunk[#chunk + 1] = q.adds[x]
      end
      redis.call('ZADD', ikey(s), unpack(chunk))
      j = j + 1000
    end
    redis.call('HSET', k, 'enqueued', fmt(q.enqueued), 'head', fmt(q.head), 'priority',
      fmt(q.priority), 'lag', fmt(q.lag))
    q.f[1] = fmt(q.priority)
    if q.unwait then
      redis.call('HDEL', k, 'waiting')
      q.f[5] = false
    end
  end
end

if replay then
  for j = 1, nr do
    local r = ARGV[6 + j]
    if moved[r] then
      local m = replay_member(replay, r)
      local v = redis.call('HGET', RP, m)
      local untl = string.match(v, ':(.+)$')
      if tonumber(to) >= tonumber(untl) then
        redis.call('HDEL', RP, m)
        redis.call('ZREM', REPLAYS, m)
        redis.call('ZREM', rqkey(replay), r)
      else
        redis.call('HSET', RP, m, to .. ':' .. untl)
        redis.call('ZADD', rqkey(replay), to, r)
      end
    end
  end
  refresh_replay(replay)
  if not queues[replay] then
    place(replay, now)
  end
else
  for j = 1, nr do
    local r = ARGV[6 + j]
    if moved[r] then
      redis.call('HSET', subkey(r), 'checkpoint', to)
    end
  end
end

for _, s in ipairs(order) do
  local q = queues[s]
  if s == replay then
    -- The replay horizon moved: read the queue again.
    place(s, now, q.next)
  else
    place(s, now, q.next, q.f)
  end
end
count_pending(counts)
if added > 0 or replay then
  redis.call('PUBLISH', WAKE, 'enqueue')
end
local flag = 0
if added > 0 then
  flag = 1
end
return { flag, after, mine }
