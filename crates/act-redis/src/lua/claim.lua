-- Claim. ARGV: 3 owner, 4 queues n, 5 events per queue, 6 lease (us),
-- 7 and 8 the lapse error's text before and after the owner's name,
-- 9 number of reactions, then the reactions the broker runs.
--
-- Moves queues whose lease or retry time has passed from `delayed` to
-- `due` (at most 10000 per call), then examines candidates in claim order
-- (the merge of `due` and the `waiting:{r}` index of each reaction r of the
-- broker) until n queues are leased. At each: an expired lease counts as a
-- failed attempt (retries and lapses + 1, the lapse error, lease cleared)
-- and makes the batch it covered (up to `leased_to`, the last event the
-- latest claim handed out) suspect: `suspect_to` = max(suspect_to,
-- leased_to). While its first pending event is <= suspect_to the queue is
-- suspect and handed out one event per claim. Then its first pending events
-- (within the replay horizon, at most 1 when suspect) with all their items,
-- cut before the first event with an item for a reaction the broker lacks.
-- A cut at 0 marks the queue as waiting for that reaction (first missing in
-- byte order) and leases nothing; otherwise the queue is leased with a new
-- token and `leased_to` = the last event handed out.
-- O((n + waiting candidates) · (reactions + log N) + events).
--
-- Returns one entry per leased queue: {stream, token, expires (us),
-- position, retries, lapses, mark, suspect (0/1), {ids...},
-- {{reactions...}...}, {records...}}.

local now = now_us()
local n = tonumber(ARGV[4])
if n <= 0 then
  return {}
end
local limit = math.max(tonumber(ARGV[5]), 1)
local expires = now + tonumber(ARGV[6])
local lapse_before, lapse_after = ARGV[7], ARGV[8]
local mine = {}
local indexes = { DUE }
for i = 10, 9 + tonumber(ARGV[9]) do
  if not mine[ARGV[i]] then
    mine[ARGV[i]] = true
    indexes[#indexes + 1] = waitkey(ARGV[i])
  end
end

-- Leases and retries that ended: claimable again, in claim order.
local ready = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', fmt(now), 'LIMIT', 0, 10000)
for _, m in ipairs(ready) do
  redis.call('ZADD', DUE, 0, m)
  redis.call('HSET', qkey(string.sub(m, 25)), 'at', 'd')
end
zrem_all(DELAYED, ready)

-- Candidates in claim order: the smallest head of the merged indexes.
-- Every examined queue leaves them (leased: `delayed`; waiting: the index
-- of a reaction the broker lacks), so each index is read forward once.
local page = math.min(n + 16, 1000)
local buf, at, cursor, done = {}, {}, {}, {}
for i = 1, #indexes do
  buf[i], at[i], done[i] = {}, 1, false
end
local function peek(i)
  if at[i] > #buf[i] then
    if done[i] then
      return nil
    end
    local from = '-'
    if cursor[i] then
      from = '(' .. cursor[i]
    end
    buf[i] = redis.call('ZRANGEBYLEX', indexes[i], from, '+', 'LIMIT', 0, page)
    at[i] = 1
    if #buf[i] < page then
      done[i] = true
    end
    if #buf[i] == 0 then
      return nil
    end
    cursor[i] = buf[i][#buf[i]]
  end
  return buf[i][at[i]]
end
local function next_candidate()
  local best, from = nil, nil
  for i = 1, #indexes do
    local m = peek(i)
    if m and (not best or before(m, best)) then
      best, from = m, i
    end
  end
  if from then
    at[from] = at[from] + 1
  end
  return best
end

-- Up to `most` distinct pending events of `s` (none past `horizon`) with
-- the reactions of their items, in id order ('' items of schema 1 name no
-- reaction and are left out), and the first reaction the broker lacks of
-- each event.
local function pending(s, horizon, most)
  local ids, reactions, missing = {}, {}, {}
  local size = math.min(most, 1000) + 16
  local start = 0
  while true do
    local got = redis.call('ZRANGE', ikey(s), start, start + size - 1, 'WITHSCORES')
    for j = 1, #got, 2 do
      local e = tonumber(got[j + 1])
      if horizon and e > horizon then
        return ids, reactions, missing
      end
      if ids[#ids] ~= e then
        if #ids == most then
          return ids, reactions, missing
        end
        ids[#ids + 1] = e
        reactions[#ids] = {}
        missing[#ids] = false
      end
      local r = item_reaction(got[j])
      if r ~= '' then
        table.insert(reactions[#ids], r)
        if not mine[r] and not missing[#ids] then
          missing[#ids] = r
        end
      end
    end
    if #got < 2 * size then
      return ids, reactions, missing
    end
    start = start + size
  end
end

local out = {}
while #out < n do
  local member = next_candidate()
  if not member then
    break
  end
  local s = string.sub(member, 25)
  local k = qkey(s)
  local f = redis.call('HMGET', k, 'blocked', 'replay', 'retry_at', 'expires', 'owner', 'waiting',
    'retries', 'lapses', 'position', 'enqueued', 'leased_to', 'suspect_to')
  local horizon = tonumber(f[2])
  local nxt = first_event(s)
  local claimable = f[1] ~= '1' and nxt and (not horizon or nxt <= horizon)
    and not (f[4] and tonumber(f[4]) > now) and not (f[3] and tonumber(f[3]) > now)
    and (not f[6] or mine[f[6]])
  if not claimable then
    -- Not where its state says it belongs: put it there, lease nothing.
    place(s, now)
  else
    local retries, lapses = tonumber(f[7]) or 0, tonumber(f[8]) or 0
    local suspect_to = tonumber(f[12]) or 0
    if f[5] then
      -- The lease ended without a settlement: a failed attempt, somewhere
      -- in the batch it covered.
      retries = math.min(retries + 1, 4294967295)
      lapses = math.min(lapses + 1, 4294967295)
      suspect_to = math.max(suspect_to, tonumber(f[11]) or 0)
      redis.call('HSET', k, 'retries', fmt(retries), 'lapses', fmt(lapses), 'error',
        lapse_before .. f[5] .. lapse_after, 'suspect_to', fmt(suspect_to))
      redis.call('HDEL', k, 'owner', 'expires')
    end
    -- Walking a lapsed batch: one event at a time until an ack passes it.
    local suspect = suspect_to > 0 and nxt <= suspect_to
    local ids, reactions, missing = pending(s, horizon, suspect and 1 or limit)
    local cut = #ids
    for j = 1, #ids do
      if missing[j] then
        cut = j - 1
        break
      end
    end
    if cut == 0 then
      redis.call('HSET', k, 'waiting', missing[1])
      place(s, now)
    else
      local token = redis.call('HINCRBY', k, 'token', 1)
      redis.call('HSET', k, 'owner', ARGV[3], 'expires', fmt(expires), 'leased_to',
        fmt(ids[cut]))
      redis.call('HDEL', k, 'waiting')
      place(s, now)
      local keep, rs, fields = {}, {}, {}
      for j = 1, cut do
        keep[j] = ids[j]
        rs[j] = reactions[j]
        fields[j] = fmt(ids[j])
      end
      out[#out + 1] = { s, token, expires, f[9] or '0', retries, lapses, f[10] or '0',
        suspect and 1 or 0, keep, rs, hmget(EVENTS, fields) }
    end
  end
end
return out
