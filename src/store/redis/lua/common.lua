-- Shared head of every script. ARGV[1] is the key prefix (a hash tag, so every key
-- of one relay installation lives in one slot), ARGV[2] the epoch this relay opened.
-- A missing or different epoch means Redis lost the relay's data (a restart without
-- persistence, a flush, a failover to an empty replica): refuse, never carry on as
-- if the queue were empty.
local P = ARGV[1]
if redis.call('HGET', P .. ':meta', 'epoch') ~= ARGV[2] then
  return redis.error_reply('DATALOSS the relay data in Redis is gone or was replaced')
end
local GROUP = 'relay'
local COUNTS = P .. ':counts'

local function n(x)
  return string.format('%d', x)
end

local function stream(dest)
  return P .. ':q:' .. dest
end

local function record(id)
  return P .. ':r:' .. id
end

-- Puts delivery `id` on its destination's stream, due at `due` ms. Entry IDs carry
-- the due time, so a claim takes only the entries whose time has come; they never go
-- backwards, so an entry is due no earlier than the one before it.
local function enqueue(dest, id, due)
  local top = tonumber(redis.call('HGET', P .. ':top', dest) or '0')
  local ms = due
  if top > ms then
    ms = top
  else
    redis.call('HSET', P .. ':top', dest, n(ms))
  end
  local entry = redis.call('XADD', stream(dest), n(ms) .. '-*', 'i', id)
  redis.call('HSET', record(id), 'st', 'q', 'e', entry)
end

-- An XINFO reply's flat field, value, field, value... list as a table.
local function fields_of(flat)
  local t = {}
  for k = 1, #flat, 2 do
    t[flat[k]] = flat[k + 1]
  end
  return t
end

-- The group's position: entries after it have not been handed to any consumer.
local function last_delivered(q)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', q)) do
    local f = fields_of(g)
    if f['name'] == GROUP then
      return f['last-delivered-id']
    end
  end
  return '0-0'
end

-- Takes an entry off its stream (acknowledged and deleted: nothing is trimmed while
-- pending, and an acknowledged entry is not kept).
local function drop_entry(dest, entry)
  redis.call('XACK', stream(dest), GROUP, entry)
  redis.call('XDEL', stream(dest), entry)
end

local function count(dest, queued, dead)
  if queued ~= 0 then
    redis.call('HINCRBY', COUNTS, 'q:' .. dest, queued)
    redis.call('HINCRBY', COUNTS, 'total', queued)
  end
  if dead ~= 0 then
    redis.call('HINCRBY', COUNTS, 'd:' .. dest, dead)
  end
end

-- Moves a delivery (not on a stream any more) to the dead letters of its destination.
local function to_dead(dest, id, at)
  redis.call('HSET', record(id), 'st', 'd', 'fin', n(at))
  redis.call('HDEL', record(id), 'e')
  redis.call('ZADD', P .. ':dead:' .. dest, at, id)
  count(dest, -1, 1)
end
