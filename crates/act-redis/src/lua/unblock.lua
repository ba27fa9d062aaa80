-- Unblock: for each queue from ARGV[3] that is blocked (each once), clears
-- the block, retries, lapses, error, waiting and lease and increases the
-- token. Returns the queues that were unblocked, in the order given.

local now = now_us()
local out = {}
local seen = {}
for i = 3, #ARGV do
  local s = ARGV[i]
  if not seen[s] and redis.call('HGET', qkey(s), 'blocked') == '1' then
    seen[s] = true
    clear(s)
    place(s, now)
    out[#out + 1] = s
  end
end
if #out > 0 then
  redis.call('PUBLISH', WAKE, 'unblock')
end
return out
