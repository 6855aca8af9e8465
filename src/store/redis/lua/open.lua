-- open: KEYS none; ARGV[1] prefix, [2] a new epoch, [3] a new dedupe secret, [4] the
-- format. Initialises the installation's meta hash when there is none; returns
-- { epoch, secret, format, created (1 when this call created it) }.
local META = ARGV[1] .. ':meta'
local created = 0
if redis.call('HEXISTS', META, 'epoch') == 0 then
  redis.call('HSET', META, 'epoch', ARGV[2], 'secret', ARGV[3], 'format', ARGV[4])
  created = 1
end
local m = redis.call('HMGET', META, 'epoch', 'secret', 'format')
return { m[1], m[2], m[3], created }
