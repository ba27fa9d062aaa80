-- Shared by every script (prepended at build time). ARGV[1] is the key
-- prefix (`{name}:`), ARGV[2] the test clock offset in microseconds.
--
-- Numbers: Lua numbers are doubles, exact up to 2^53. Anything written to a
-- key or concatenated into a string goes through `fmt` (plain `..` would
-- print large numbers in exponent form). Checkpoints and positions that
-- only travel (never take part in arithmetic) are kept as the exact decimal
-- strings Rust sent.
--
-- Strings: Lua's `<` on strings follows the server's locale (strcoll);
-- `before` compares bytes, which is the order every listing and claim
-- tie-break promises.
--
-- Layout of one queue `s`:
--   q:{s}  hash: position, head, priority, retries, lapses, blocked, token,
--          floor, enqueued, lag, retry_at, error, owner, expires, waiting,
--          replay, leased_to, suspect_to (absent reads as 0); dk (its claim key, while in an index), at and wi (which
--          index, see `place`)
--   i:{s}  sorted set of pending items, score = event id, member =
--          reaction .. "\0" .. seq (reaction '' for an item of schema 1;
--          seq is unique in the queue), so the items of one event sort by
--          reaction in byte order and the first member is the first
--          pending event
--   rq:{s} sorted set of its replays: member = reaction, score = position
-- Over every queue (schema 3):
--   pending  hash: reaction -> its pending items in all queues (a reaction
--            with none has no field); every script that adds or removes
--            items moves it (`count_pending`)
-- Claim indexes (members are claim keys `%08x` (2^31-1 - priority) ..
-- `%016x` next .. stream, so byte order is claim order):
--   due            claimable now, not waiting (all scores 0)
--   waiting:{r}    claimable but waiting for a broker with reaction r
--   delayed        leased or retrying, scored by when that ends

redis.replicate_commands()

local P = ARGV[1]
local OFFSET = tonumber(ARGV[2]) or 0
local DUE = P .. 'due'
local DELAYED = P .. 'delayed'
local QUEUES = P .. 'queues'
local BLOCKED = P .. 'blocked'
local EVENTS = P .. 'events'
local SUBS = P .. 'subs'
local REPLAYS = P .. 'replays'
local RP = P .. 'rp'
local WAKE = P .. 'wake'
local PENDING = P .. 'pending'

local function fmt(n)
  return string.format('%d', n)
end

-- The store's clock: the server's TIME plus the test offset, in microseconds.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) + OFFSET
end

-- True when string a sorts before string b in byte order.
local function before(a, b)
  if a == b then
    return false
  end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local function head_id()
  return tonumber(redis.call('GET', P .. 'seq') or '0')
end

local function qkey(s)
  return P .. 'q:' .. s
end

local function ikey(s)
  return P .. 'i:' .. s
end

local function rqkey(s)
  return P .. 'rq:' .. s
end

local function subkey(name)
  return P .. 'sub:' .. name
end

local function waitkey(r)
  return P .. 'waiting:' .. r
end

-- One pending item's member (its event is its score), and its parts.
local function item(reaction, seq)
  return reaction .. '\0' .. fmt(seq)
end

local function item_reaction(m)
  local z = string.find(m, '\0', 1, true)
  return string.sub(m, 1, z - 1)
end

local function item_seq(m)
  local z = string.find(m, '\0', 1, true)
  return tonumber(string.sub(m, z + 1))
end

-- The replay member of (queue, reaction): byte order of the pair, since
-- names hold no U+0000.
local function replay_member(s, r)
  return s .. '\0' .. r
end

-- ZREM of many members, in chunks (unpack has a stack limit).
local function zrem_all(key, members)
  local i = 1
  while i <= #members do
    local chunk = {}
    for j = i, math.min(i + 499, #members) do
      chunk[#chunk + 1] = members[j]
    end
    redis.call('ZREM', key, unpack(chunk))
    i = i + 500
  end
end

-- HMGET in chunks; nil becomes false so the reply array keeps its length.
local function hmget(key, fields)
  local out = {}
  local i = 1
  while i <= #fields do
    local chunk = {}
    for j = i, math.min(i + 499, #fields) do
      chunk[#chunk + 1] = fields[j]
    end
    local got = redis.call('HMGET', key, unpack(chunk))
    for j = 1, #chunk do
      out[#out + 1] = got[j] or false
    end
    i = i + 500
  end
  return out
end

-- The first pending event of queue `s`, or nil.
local function first_event(s)
  local r = redis.call('ZRANGE', ikey(s), 0, 0, 'WITHSCORES')
  if r[1] then
    return tonumber(r[2])
  end
  return nil
end

-- A new queue with nothing pending (position 0, token 0).
local function create(s)
  local k = qkey(s)
  if redis.call('EXISTS', k) == 1 then
    return false
  end
  redis.call('HSET', k, 'position', 0, 'head', 0, 'priority', 0, 'retries', 0, 'lapses', 0,
    'blocked', 0, 'token', 0, 'floor', 0, 'enqueued', 0, 'lag', 0)
  redis.call('ZADD', QUEUES, 0, s)
  return true
end

-- Puts queue `s` in the index its state calls for: with a deliverable first
-- event (pending, within the replay horizon) and not blocked, `delayed`
-- while leased or retrying, else `waiting:{r}` when waiting for reaction r,
-- else `due`; no index otherwise. The queue records its claim key (`dk`)
-- and where it is (`at`: 'd' due, 'w' waiting (key in `wi`), 'l' .. time
-- for delayed), so an unchanged placement costs one read. Every script that
-- changes a queue calls it last; `nxt` is its first pending event when the
-- caller knows it (nil: read it), `f` its PLACE_FIELDS when the caller has
-- read them (and applied its own changes). O(log N).
local PLACE_FIELDS = { 'priority', 'blocked', 'retry_at', 'expires', 'waiting', 'replay', 'dk',
  'at', 'wi' }

-- The first pending event a claim key names.
local function key_next(member)
  return tonumber(string.sub(member, 9, 24), 16)
end

local function place(s, now, nxt, f)
  local k = qkey(s)
  f = f or redis.call('HMGET', k, unpack(PLACE_FIELDS))
  local old, at, oldw = f[7] or nil, f[8] or nil, f[9] or nil
  if f[2] == '1' then
    nxt = nil
  elseif nxt == nil then
    nxt = first_event(s)
  end
  if nxt and f[6] and nxt > tonumber(f[6]) then
    nxt = nil
  end
  local member, where, wait, wk = nil, nil, 0, nil
  if nxt then
    member = string.format('%08x%016x', 2147483647 - (tonumber(f[1]) or 0), nxt) .. s
    local r, e = tonumber(f[3]), tonumber(f[4])
    if r and r > now then
      wait = r
    end
    if e and e > now and e > wait then
      wait = e
    end
    if wait > 0 then
      where = 'l' .. fmt(wait)
    elseif f[5] then
      where, wk = 'w', waitkey(f[5])
    else
      where = 'd'
    end
  end
  if old == member and at == where and oldw == wk then
    return
  end
  if old then
    if at == 'd' then
      redis.call('ZREM', DUE, old)
    elseif at == 'w' then
      redis.call('ZREM', oldw, old)
    elseif at then
      redis.call('ZREM', DELAYED, old)
    else
      redis.call('ZREM', DUE, old)
      redis.call('ZREM', DELAYED, old)
    end
  end
  if not member then
    redis.call('HDEL', k, 'dk', 'at', 'wi')
  elseif where == 'd' then
    redis.call('ZADD', DUE, 0, member)
    redis.call('HSET', k, 'dk', member, 'at', 'd')
  elseif where == 'w' then
    redis.call('ZADD', wk, 0, member)
    redis.call('HSET', k, 'dk', member, 'at', 'w', 'wi', wk)
  else
    redis.call('ZADD', DELAYED, fmt(wait), member)
    redis.call('HSET', k, 'dk', member, 'at', where)
  end
  if oldw and where ~= 'w' then
    redis.call('HDEL', k, 'wi')
  end
end

-- The lowest position of the replays of queue `s` (its replay horizon),
-- written to the queue (removed when there is none).
local function refresh_replay(s)
  local k = qkey(s)
  if redis.call('EXISTS', k) == 0 then
    return
  end
  local r = redis.call('ZRANGE', rqkey(s), 0, 0, 'WITHSCORES')
  if r[1] then
    redis.call('HSET', k, 'replay', fmt(tonumber(r[2])))
  else
    redis.call('HDEL', k, 'replay')
  end
end

-- Moves the per-reaction counts of pending items by `delta` (reaction ->
-- change), dropping a reaction's field when it reaches 0.
local function count_pending(delta)
  for r, n in pairs(delta) do
    if n ~= 0 then
      if redis.call('HINCRBY', PENDING, r, n) <= 0 then
        redis.call('HDEL', PENDING, r)
      end
    end
  end
end

-- Removes the pending items of queue `s` that `remove(member)` selects
-- among `got` (members and scores, as ZRANGE ... WITHSCORES returns them;
-- it must hold every item of each event it holds, i.e. a score range), and
-- keeps the queue's count of distinct pending events exact. Returns the
-- number removed. O(got + removed · log n).
local function drop_where(s, got, remove)
  local gone, hit, left, counts = {}, {}, {}, {}
  for j = 1, #got, 2 do
    if remove(got[j]) then
      gone[#gone + 1] = got[j]
      local r = item_reaction(got[j])
      counts[r] = (counts[r] or 0) - 1
      hit[got[j + 1]] = true
    else
      left[got[j + 1]] = true
    end
  end
  if #gone == 0 then
    return 0
  end
  zrem_all(ikey(s), gone)
  count_pending(counts)
  local emptied = 0
  for e in pairs(hit) do
    if not left[e] then
      emptied = emptied + 1
    end
  end
  if emptied > 0 then
    redis.call('HINCRBY', qkey(s), 'lag', -emptied)
  end
  return #gone
end

-- What an operator sees of queue `s`, or false when it does not exist:
-- {stream, position, head, next|false, lag, priority, retries,
--  retry_at|false, blocked (0/1), error|false, token, owner|false,
--  expires|false, waiting|false, replay|false}
local function state(s)
  local f = redis.call('HMGET', qkey(s), 'position', 'head', 'priority', 'retries', 'retry_at',
    'blocked', 'error', 'token', 'owner', 'expires', 'lag', 'waiting', 'replay')
  if not f[1] then
    return false
  end
  local nxt = first_event(s) or false
  local blocked = 0
  if f[6] == '1' then
    blocked = 1
  end
  return { s, f[1], f[2] or '0', nxt, f[11] or '0', f[3] or '0', f[4] or '0', f[5] or false,
    blocked, f[7] or false, f[8] or '0', f[9] or false, f[10] or false, f[12] or false,
    f[13] or false }
end

-- Clears a queue's lease, retries, lapses, retry, block and waiting
-- (unblock, reset) and fences off every earlier lease.
local function clear(s)
  local k = qkey(s)
  redis.call('HSET', k, 'retries', 0, 'lapses', 0, 'blocked', 0)
  redis.call('HDEL', k, 'retry_at', 'error', 'owner', 'expires', 'waiting')
  redis.call('HINCRBY', k, 'token', 1)
  redis.call('ZREM', BLOCKED, s)
end

-- The fencing rule, in this order: unknown queue, stale token, lease not live
-- on the store's clock, position moved (settlements only). Returns
-- {code, detail}: 0 ok, 1 unknown, 2 stale (current token), 3 expired,
-- 4 moved (actual position); and the queue's fields when ok.
local function fence(s, token, now, from)
  local f = redis.call('HMGET', qkey(s), 'token', 'expires', 'position', 'retries', 'lapses')
  if not f[1] then
    return { 1, 0 }
  end
  if tonumber(f[1]) ~= tonumber(token) then
    return { 2, tonumber(f[1]) }
  end
  if not f[2] or tonumber(f[2]) <= now then
    return { 3, 0 }
  end
  if from and f[3] ~= from then
    return { 4, f[3] }
  end
  return { 0, 0 }, f
end

-- Every subscription, ordered by name in byte order: {name, events (JSON),
-- target|false, start, checkpoint, created (us), seen (us), retired|false}.
local function subscriptions()
  local out = {}
  for _, name in ipairs(redis.call('ZRANGE', SUBS, 0, -1)) do
    local f = redis.call('HMGET', subkey(name), 'events', 'target', 'start', 'checkpoint',
      'created', 'seen', 'retired')
    out[#out + 1] = { name, f[1] or '[]', f[2] or false, f[3] or '0', f[4] or '0', f[5] or '0',
      f[6] or '0', f[7] or false }
  end
  return out
end
