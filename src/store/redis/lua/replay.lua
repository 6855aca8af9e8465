-- replay: ARGV[3] now ms, [4] 'id' or 'dest', [5] the ID or destination, [6] batch.
-- Puts dead letters back on their stream, due now, attempts reset. Returns how many.
local now, mode, which, batch = tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
local function replay(dest, id)
  local r = record(id)
  redis.call('ZREM', P .. ':dead:' .. dest, id)
  redis.call('HSET', r, 'att', '0', 'na', n(now))
  redis.call('HDEL', r, 'fa', 'fin')
  enqueue(dest, id, now)
  count(dest, 1, -1)
end
if mode == 'id' then
  local cur = redis.call('HMGET', record(which), 'st', 'dest')
  if cur[1] ~= 'd' then
    return 0
  end
  replay(cur[2], which)
  return 1
end
local ids = redis.call('ZRANGE', P .. ':dead:' .. which, 0, batch - 1)
for _, id in ipairs(ids) do
  replay(which, id)
end
return #ids
