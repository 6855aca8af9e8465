-- forget: ARGV[3] destination, [4] idle ms. Deletes the group's consumers that hold
-- nothing and were idle this long (relays that stopped: a consumer name per process
-- would otherwise pile up). Safe for a live one too: holding nothing, it loses
-- nothing, and its next read creates it again. Returns how many.
local q = stream(ARGV[3])
local idle = tonumber(ARGV[4])
if redis.call('EXISTS', q) == 0 then
  return 0
end
local gone = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', q, GROUP)) do
  local name, pending, since
  for k = 1, #c, 2 do
    if c[k] == 'name' then
      name = c[k + 1]
    elseif c[k] == 'pending' then
      pending = c[k + 1]
    elseif c[k] == 'idle' then
      since = c[k + 1]
    end
  end
  if name and pending == 0 and since and since > idle then
    redis.call('XGROUP', 'DELCONSUMER', q, GROUP, name)
    gone = gone + 1
  end
end
return gone
