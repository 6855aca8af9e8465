-- purge: ARGV[3] now ms, [4] dead-letter retention ms, [5] batch, then the
-- destinations. Removes up to a batch of expired dedupe marks and of each
-- destination's dead letters past the retention. Returns { marks, dead letters }.
local now, retention, batch = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local DEDUPE = P .. ':dedupe'
local expired = redis.call('ZCOUNT', DEDUPE, '-inf', n(now))
if expired > batch then
  expired = batch
end
if expired > 0 then
  redis.call('ZREMRANGEBYRANK', DEDUPE, 0, expired - 1)
end
local dead = 0
for j = 6, #ARGV do
  local dest = ARGV[j]
  local z = P .. ':dead:' .. dest
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. n(now - retention), 'LIMIT', 0, batch)) do
    redis.call('ZREM', z, id)
    redis.call('DEL', record(id))
    count(dest, 0, -1)
    dead = dead + 1
  end
end
return { expired, dead }
