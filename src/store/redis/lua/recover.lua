-- recover: ARGV[3] destination, [4] consumer, [5] batch. At start: the deliveries
-- this consumer name held when its previous process died go back on the stream,
-- due as they were. Returns how many.
local dest, consumer, batch = ARGV[3], ARGV[4], tonumber(ARGV[5])
local q = stream(dest)
if redis.call('EXISTS', q) == 0 then
  return 0
end
local moved = 0
for _, p in ipairs(redis.call('XPENDING', q, GROUP, '-', '+', batch, consumer)) do
  local entry = p[1]
  local e = redis.call('XRANGE', q, entry, entry)
  drop_entry(dest, entry)
  if #e > 0 then
    local id = e[1][2][2]
    local cur = redis.call('HMGET', record(id), 'st', 'e', 'na')
    if cur[1] == 'q' and cur[2] == entry then
      enqueue(dest, id, tonumber(cur[3]))
    end
  end
  moved = moved + 1
end
return moved
