-- Unblock: for each queue from ARGV[3] that is blocked, clears the block,
-- retries, error and lease and increases the token. Returns the queues that
-- were unblocked.

local now = now_us()
local out = {}
for i = 3, #ARGV do
  local s = ARGV[i]
  if redis.call('HGET', qkey(s), 'blocked') == '1' then
    clear(s)
    place(s, now)
    out[#out + 1] = s
  end
end
if #out > 0 then
  redis.call('PUBLISH', WAKE, 'unblock')
end
return out
