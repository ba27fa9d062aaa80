-- Release: gives leases back without moving positions; checks only the
-- token. Pairs from ARGV[3]: queue, token. Returns {code, detail} per lease
-- (0 ok, 1 unknown, 2 stale with the current token).

local now = now_us()
local out = {}
local wake = false
for i = 3, #ARGV, 2 do
  local s = ARGV[i]
  local k = qkey(s)
  local token = redis.call('HGET', k, 'token')
  if not token then
    out[#out + 1] = { 1, 0 }
  elseif tonumber(token) ~= tonumber(ARGV[i + 1]) then
    out[#out + 1] = { 2, tonumber(token) }
  else
    redis.call('HDEL', k, 'owner', 'expires')
    place(s, now)
    wake = true
    out[#out + 1] = { 0, 0 }
  end
end
if wake then
  redis.call('PUBLISH', WAKE, 'release')
end
return out
