-- accept: ARGV[3] now ms, [4] dedupe window ms, [5] max queued, [6] number of
-- events, then per event: dedupe key, number of deliveries, then per delivery:
-- destination, delivery ID, rendered request. All or nothing: a script runs whole.
-- One call may carry the events of many requests (group.rs).
-- Returns the new commit count ({P}:meta commits), then one 1 (accepted) or 0
-- (duplicate) per event.
--
-- What is the same for every delivery to one destination in this call (the
-- destination's registration, its stream's entry time, its counter) is looked up and
-- written once per destination, not once per delivery: per delivery, one XADD and
-- one HSET.
local now = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local max = tonumber(ARGV[5])
local events = {}
local i = 7
local adding = 0
for e = 1, tonumber(ARGV[6]) do
  local nd = tonumber(ARGV[i + 1])
  events[e] = { ARGV[i], i + 2, nd }
  adding = adding + nd
  i = i + 2 + 3 * nd
end
local queued = tonumber(redis.call('HGET', COUNTS, 'total') or '0')
if adding > 0 and queued + adding > max then
  return redis.error_reply('FULL ' .. n(queued) .. ' deliveries queued, max_queued is ' .. n(max))
end
local DEDUPE = P .. ':dedupe'
local TOP = P .. ':top'
-- Per destination named in this call: { entry time (ms string), deliveries added }.
local dests = {}
local function destination(dest)
  local d = dests[dest]
  if d then
    return d
  end
  if redis.call('SADD', P .. ':dests', dest) == 1 then
    redis.pcall('XGROUP', 'CREATE', stream(dest), GROUP, '0', 'MKSTREAM')
  end
  -- Entry times never go backwards (see enqueue in common.lua).
  local top = tonumber(redis.call('HGET', TOP, dest) or '0')
  local ms = now
  if top > ms then
    ms = top
  else
    redis.call('HSET', TOP, dest, n(ms))
  end
  d = { n(ms) .. '-*', 0 }
  dests[dest] = d
  return d
end
local out = {}
local added = 0
for e, ev in ipairs(events) do
  local exp = redis.call('ZSCORE', DEDUPE, ev[1])
  if exp and tonumber(exp) > now then
    out[e] = 0
  else
    redis.call('ZADD', DEDUPE, n(now + window), ev[1])
    for k = 0, ev[3] - 1 do
      local j = ev[2] + 3 * k
      local dest, id = ARGV[j], ARGV[j + 1]
      local d = destination(dest)
      local entry = redis.call('XADD', stream(dest), d[1], 'i', id)
      redis.call('HSET', record(id), 'dest', dest, 'req', ARGV[j + 2], 'ca', n(now),
        'na', n(now), 'att', '0', 'st', 'q', 'e', entry)
      d[2] = d[2] + 1
      added = added + 1
    end
    out[e] = 1
  end
end
for dest, d in pairs(dests) do
  redis.call('HINCRBY', COUNTS, 'q:' .. dest, d[2])
end
if added > 0 then
  redis.call('HINCRBY', COUNTS, 'total', added)
end
-- The marks expire with the window: once no event came for a whole window, every
-- mark in the set has expired, and so does the set.
redis.call('PEXPIRE', DEDUPE, n(window))
-- The commit counter first: it only grows, so a relay that gets a number no larger
-- than one it saw before knows Redis went back in time (see mark.rs).
table.insert(out, 1, redis.call('HINCRBY', P .. ':meta', 'commits', 1))
return out
