-- Reset: moves queue ARGV[3] to position ARGV[4], clears retries, block and
-- lease, increases the token. Returns the queue's state (see `state`), or
-- false when the queue does not exist.

local s = ARGV[3]
if redis.call('EXISTS', qkey(s)) == 0 then
  return false
end
clear(s)
redis.call('HSET', qkey(s), 'position', ARGV[4])
place(s, now_us())
redis.call('PUBLISH', WAKE, 'reset')
return state(s)
