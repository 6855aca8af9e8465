-- note: a partner's later word on delivered deliveries. ARGV[3] state, [4] reason
-- ('' for none), [5] the partner's request ID, [6] checked at (ms, '' for not yet),
-- then the delivery IDs. Only a delivered one's receipt (st = c) takes it; its
-- expiry stays as it was. Returns how many took it.
local state, reason, request, checked = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local taken = 0
for j = 7, #ARGV do
  local r = record(ARGV[j])
  if redis.call('HGET', r, 'st') == 'c' then
    redis.call('HSET', r, 'ps', state, 'pq', request)
    if reason ~= '' then
      redis.call('HSET', r, 'pr', reason)
    else
      redis.call('HDEL', r, 'pr')
    end
    if checked ~= '' then
      redis.call('HSET', r, 'pc', checked)
    else
      redis.call('HDEL', r, 'pc')
    end
    taken = taken + 1
  end
end
return taken
