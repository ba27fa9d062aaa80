-- Shared by every script (prepended at build time). ARGV[1] is the key
-- prefix (`{name}:`), ARGV[2] the test clock offset in microseconds.
--
-- Numbers: Lua numbers are doubles, exact up to 2^53. Anything written to a
-- key or concatenated into a string goes through `fmt` (plain `..` would
-- print large numbers in exponent form).

redis.replicate_commands()

local P = ARGV[1]
local OFFSET = tonumber(ARGV[2]) or 0
local DUE = P .. 'due'
local DELAYED = P .. 'delayed'
local QUEUES = P .. 'queues'
local BLOCKED = P .. 'blocked'
local EVENTS = P .. 'events'
local WAKE = P .. 'wake'

local function fmt(n)
  return string.format('%d', n)
end

-- The store's clock: the server's TIME plus the test offset, in microseconds.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) + OFFSET
end

local function qkey(s)
  return P .. 'q:' .. s
end

local function wkey(s)
  return P .. 'w:' .. s
end

-- HMGET in chunks (unpack has a stack limit); nil becomes false so the
-- reply array keeps its length.
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

-- The first pending event of queue `s` after `position`, or nil.
local function next_of(s, position)
  local r = redis.call('ZRANGEBYSCORE', wkey(s), '(' .. fmt(position), '+inf', 'LIMIT', 0, 1)
  if r[1] then
    return tonumber(r[1])
  end
  return nil
end

-- Puts queue `s` in the index its state calls for: `due` (pending, not
-- blocked, no live lease, no retry waiting: claimable now, in claim order),
-- `delayed` (pending but leased or waiting for a retry, scored by when that
-- ends) or neither (nothing pending, or blocked). Every script that changes a
-- queue calls it last. Returns true when the queue is claimable now.
local function place(s, now)
  local k = qkey(s)
  local f = redis.call('HMGET', k, 'position', 'priority', 'blocked', 'retry_at', 'expires', 'dk')
  local old = f[6]
  local nxt = nil
  if f[1] and f[3] ~= '1' then
    nxt = next_of(s, tonumber(f[1]))
  end
  local wait = 0
  if nxt then
    local r, e = tonumber(f[4]), tonumber(f[5])
    if r and r > now then
      wait = r
    end
    if e and e > now and e > wait then
      wait = e
    end
  end
  if nxt and wait == 0 then
    -- Claim order: priority (high first), oldest pending event, stream.
    local member = string.format('%08x%016x', 2147483647 - (tonumber(f[2]) or 0), nxt) .. s
    if member ~= old then
      if old then
        redis.call('ZREM', DUE, old)
      end
      redis.call('ZADD', DUE, 0, member)
      redis.call('HSET', k, 'dk', member)
    end
    redis.call('ZREM', DELAYED, s)
    return true
  end
  if old then
    redis.call('ZREM', DUE, old)
    redis.call('HDEL', k, 'dk')
  end
  if nxt then
    redis.call('ZADD', DELAYED, fmt(wait), s)
  else
    redis.call('ZREM', DELAYED, s)
  end
  return false
end

-- What an operator sees of queue `s`, or false when it does not exist:
-- {stream, position, head, next|false, lag, priority, retries,
--  retry_at|false, blocked (0/1), error|false, token, owner|false, expires|false}
local function state(s)
  local f = redis.call('HMGET', qkey(s), 'position', 'head', 'priority', 'retries', 'retry_at',
    'blocked', 'error', 'token', 'owner', 'expires')
  if not f[1] then
    return false
  end
  local after = '(' .. f[1]
  local nxt = redis.call('ZRANGEBYSCORE', wkey(s), after, '+inf', 'LIMIT', 0, 1)[1] or false
  local lag = redis.call('ZCOUNT', wkey(s), after, '+inf')
  local blocked = 0
  if f[6] == '1' then
    blocked = 1
  end
  return { s, f[1], f[2] or '0', nxt, lag, f[3] or '0', f[4] or '0', f[5] or false, blocked,
    f[7] or false, f[8] or '0', f[9] or false, f[10] or false }
end

-- Clears a queue's lease, retry and block (unblock, reset) and fences off
-- every earlier lease.
local function clear(s)
  local k = qkey(s)
  redis.call('HSET', k, 'retries', 0, 'blocked', 0)
  redis.call('HDEL', k, 'retry_at', 'error', 'owner', 'expires')
  redis.call('HINCRBY', k, 'token', 1)
  redis.call('ZREM', BLOCKED, s)
end

-- The fencing rule, in this order: unknown queue, stale token, lease not live
-- on the store's clock, position moved (settlements only). Returns
-- {code, detail}: 0 ok, 1 unknown, 2 stale (current token), 3 expired,
-- 4 moved (actual position); and the queue's fields when ok.
local function fence(s, token, now, from)
  local f = redis.call('HMGET', qkey(s), 'token', 'expires', 'position', 'retries')
  if not f[1] then
    return { 1, 0 }
  end
  if tonumber(f[1]) ~= tonumber(token) then
    return { 2, tonumber(f[1]) }
  end
  if not f[2] or tonumber(f[2]) <= now then
    return { 3, 0 }
  end
  if from and tonumber(f[3]) ~= tonumber(from) then
    return { 4, tonumber(f[3]) }
  end
  return { 0, 0 }, f
end
