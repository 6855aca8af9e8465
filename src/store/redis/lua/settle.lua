-- settle: ARGV[3] delivery ID, [4] what: complete | retry | dead | release, [5] now
-- ms, [6] how long a delivered one's receipt is kept (ms, receipt retention), [7] number of fields to
-- set, then field, value pairs, then the fields to delete. Only a claimed delivery
-- (pending in its stream's group) is settled; anything else is a late settle and
-- changes nothing. Returns 1 when settled, 0 when not.
local id, what, now = ARGV[3], ARGV[4], tonumber(ARGV[5])
local r = record(id)
local cur = redis.call('HMGET', r, 'st', 'e', 'dest')
if cur[1] ~= 'q' or not cur[2] then
  return 0
end
local dest, entry = cur[3], cur[2]
if redis.call('XACK', stream(dest), GROUP, entry) == 0 then
  return 0
end
redis.call('XDEL', stream(dest), entry)
redis.call('HDEL', r, 'e')
local nset = tonumber(ARGV[7])
local k = 8
for _ = 1, nset do
  redis.call('HSET', r, ARGV[k], ARGV[k + 1])
  k = k + 2
end
for j = k, #ARGV do
  redis.call('HDEL', r, ARGV[j])
end
if what == 'complete' then
  local att = tonumber(redis.call('HGET', r, 'att') or '0') + 1
  redis.call('HSET', r, 'st', 'c', 'att', n(att), 'la', n(now), 'fin', n(now))
  redis.call('HDEL', r, 'req', 'le')
  -- Written anew: a hash that once held the request stays in Redis's large encoding
  -- (about 520 bytes) after the request is deleted; the few fields of a receipt
  -- fit the compact one (docs/redis.md, sizing).
  local keep = redis.call('HGETALL', r)
  redis.call('DEL', r)
  redis.call('HSET', r, unpack(keep))
  redis.call('PEXPIRE', r, ARGV[6])
  count(dest, -1, 0)
elseif what == 'retry' then
  local due = tonumber(redis.call('HGET', r, 'na'))
  redis.call('HSET', r, 'st', 'r')
  redis.call('ZADD', P .. ':retry:' .. dest, due, id)
elseif what == 'dead' then
  to_dead(dest, id, now)
else
  enqueue(dest, id, tonumber(redis.call('HGET', r, 'na')))
end
return 1
