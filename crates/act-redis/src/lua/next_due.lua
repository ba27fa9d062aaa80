-- Microseconds until some pending, unblocked queue that a broker with the
-- reactions ARGV[3..] may claim becomes claimable: 0 when one is claimable
-- now, -1 when none has deliverable work (read only). Queues waiting for a
-- reaction outside the list are not counted.

local now = now_us()
if redis.call('ZCARD', DUE) > 0 then
  return 0
end
for i = 3, #ARGV do
  if redis.call('ZCARD', waitkey(ARGV[i])) > 0 then
    return 0
  end
end
local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
if not first[1] then
  return -1
end
return math.max(tonumber(first[2]) - now, 0)
