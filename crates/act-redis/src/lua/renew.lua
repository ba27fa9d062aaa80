-- Renew: extends live leases to ARGV[3] microseconds from now. Then pairs
-- from ARGV[4]: queue, token. Returns {code, detail or new expiry (us)} per
-- lease (see `fence`).

local now = now_us()
local expires = now + tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 2 do
  local s = ARGV[i]
  local verdict = fence(s, ARGV[i + 1], now, nil)
  if verdict[1] == 0 then
    redis.call('HSET', qkey(s), 'expires', fmt(expires))
    place(s, now)
    verdict = { 0, expires }
  end
  out[#out + 1] = verdict
end
return out
