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
  local f = fields_of(c)
  local name, pending, since = f['name'], f['pending'], f['idle']
  if name and pending == 0 and since and since > idle then
    redis.call('XGROUP', 'DELCONSUMER', q, GROUP, name)
    gone = gone + 1
  end
end
return gone
