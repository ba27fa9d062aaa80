-- The replays under way, ordered by queue then reaction in byte order (read
-- only): {queue, reaction, position, until} each.

local out = {}
for _, m in ipairs(redis.call('ZRANGE', REPLAYS, 0, -1)) do
  local z = string.find(m, '\0', 1, true)
  local v = redis.call('HGET', RP, m)
  if z and v then
    local position, untl = string.match(v, '^([^:]+):(.+)$')
    out[#out + 1] = { string.sub(m, 1, z - 1), string.sub(m, z + 1), position, untl }
  end
end
return out
