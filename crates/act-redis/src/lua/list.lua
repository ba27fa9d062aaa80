-- Lists queues for operators (read only). ARGV[3]: 'one' (ARGV[4] is the
-- queue), 'all' or 'blocked' (ARGV[4] is the exclusive lower bound of the
-- page in byte order, '' from the start; ARGV[5] the page size). Returns the
-- states (see `state`) in stream order.

local names
if ARGV[3] == 'one' then
  names = { ARGV[4] }
else
  local index = QUEUES
  if ARGV[3] == 'blocked' then
    index = BLOCKED
  end
  local from = '-'
  if ARGV[4] ~= '' then
    from = '(' .. ARGV[4]
  end
  names = redis.call('ZRANGEBYLEX', index, from, '+', 'LIMIT', 0, tonumber(ARGV[5]))
end
local out = {}
for _, s in ipairs(names) do
  local row = state(s)
  if row then
    out[#out + 1] = row
  end
end
return out
