-- retire: ARGV[3] destination, [4] reason, [5] now ms, [6] batch. Moves up to a
-- batch of the destination's queued deliveries (on its stream, claimed or not, and
-- waiting to retry) to its dead letters. Returns how many.
local dest, reason, now, batch = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local moved = 0
local RETRY = P .. ':retry:' .. dest
for _, id in ipairs(redis.call('ZRANGE', RETRY, 0, batch - 1)) do
  redis.call('ZREM', RETRY, id)
  redis.call('HSET', record(id), 'le', reason)
  to_dead(dest, id, now)
  moved = moved + 1
end
if redis.call('EXISTS', stream(dest)) == 1 and moved < batch then
  for _, e in ipairs(redis.call('XRANGE', stream(dest), '-', '+', 'COUNT', batch - moved)) do
    local id = e[2][2]
    drop_entry(dest, e[1])
    if redis.call('HGET', record(id), 'st') == 'q' then
      redis.call('HSET', record(id), 'le', reason)
      to_dead(dest, id, now)
      moved = moved + 1
    end
  end
end
return moved
