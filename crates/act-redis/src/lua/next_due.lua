-- Microseconds until some pending, unblocked queue becomes claimable: 0 when
-- one is claimable now, -1 when none has pending work (read only).

local now = now_us()
if redis.call('ZCARD', DUE) > 0 then
  return 0
end
local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
if not first[1] then
  return -1
end
return math.max(tonumber(first[2]) - now, 0)
