-- next_due: ARGV[3] destination. The earliest due time (ms) of a delivery no
-- consumer holds: the first entry past the group's position, or the first retry.
local dest = ARGV[3]
local q = stream(dest)
local best
if redis.call('EXISTS', q) == 1 then
  local e = redis.call('XRANGE', q, '(' .. last_delivered(q), '+', 'COUNT', 1)
  if #e > 0 then
    best = tonumber(string.match(e[1][1], '^(%d+)'))
  end
end
local r = redis.call('ZRANGE', P .. ':retry:' .. dest, 0, 0, 'WITHSCORES')
if #r > 0 and (not best or tonumber(r[2]) < best) then
  best = tonumber(r[2])
end
if best then
  return n(best)
end
return false
