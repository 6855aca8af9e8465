-- claim: ARGV[3] destination, [4] consumer, [5] now ms, [6] limit, [7] claim
-- timeout ms. Moves due retries back onto the stream, hands out the entries another
-- consumer has held past the timeout (a dead relay's: they are the oldest, so they go
-- first, ahead of any backlog), then the due entries no consumer has seen.
-- Returns each claimed delivery's record (HGETALL) with its delivery ID first.
local dest, consumer = ARGV[3], ARGV[4]
local now, limit, idle = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local q = stream(dest)
if redis.call('EXISTS', q) == 0 then
  return {}
end
local RETRY = P .. ':retry:' .. dest
for _, id in ipairs(redis.call('ZRANGEBYSCORE', RETRY, '-inf', n(now), 'LIMIT', 0, limit)) do
  redis.call('ZREM', RETRY, id)
  enqueue(dest, id, tonumber(redis.call('HGET', record(id), 'na') or n(now)))
end
local ids = {}
local function take(entries)
  for _, e in ipairs(entries) do
    if type(e) == 'table' and type(e[2]) == 'table' then
      ids[#ids + 1] = { e[1], e[2][2] }
    end
  end
end
if idle > 0 then
  -- The scan of the pending entries goes on where the last claim left it ({P}:scan),
  -- so a long list of live claims cannot hide an abandoned one at its end.
  local SCAN = P .. ':scan'
  local r = redis.call('XAUTOCLAIM', q, GROUP, consumer, idle, redis.call('HGET', SCAN, dest) or '0-0',
    'COUNT', limit)
  redis.call('HSET', SCAN, dest, r[1])
  take(r[2])
end
if #ids < limit then
  local fresh = redis.call('XRANGE', q, '(' .. last_delivered(q), n(now), 'COUNT', limit - #ids)
  if #fresh > 0 then
    local got = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', #fresh, 'STREAMS', q, '>')
    if got then
      take(got[1][2])
    end
  end
end
local out = {}
for _, x in ipairs(ids) do
  local entry, id = x[1], x[2]
  local fields = redis.call('HGETALL', record(id))
  local st = redis.call('HGET', record(id), 'st')
  if st == 'q' and redis.call('HGET', record(id), 'e') == entry then
    table.insert(fields, 1, id)
    out[#out + 1] = fields
  else
    -- an entry whose delivery moved on (retired, or a stale duplicate): drop it
    drop_entry(dest, entry)
  end
end
return out
