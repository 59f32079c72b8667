-- The hot path in one round trip: the job ledger's claim (optional), response-cache lookup,
-- single-flight claim, and one atomic check-and-record over every rate-limit scope of the
-- request (all pass, or nothing is recorded). Time is Redis server time in microseconds, so
-- replicas' clocks never matter. claim_job.lua is prepended.
--
-- KEYS[1] cache entry (hash: g = generation, v = stored replies)
-- KEYS[2] cache generations (hash: '*' and one field per kind)
-- KEYS[3] single-flight claim (string: '<owner instance>/<admission id>')
-- KEYS[4] job record        KEYS[5] job cancel marker
-- KEYS[6..] four per scope: log (zset; a hash for a provider budget), token sum,
--           warning throttle, exceeded throttle
-- ARGV[1] read the cache (1/0)  ARGV[2] coalesce (1/0)  ARGV[3] kind  ARGV[4] admission id
-- ARGV[5] claim lease (ms)      ARGV[6] warn ratio
-- ARGV[7] claim the job (1/0)   ARGV[8] this instance
-- ARGV[9] instance liveness key prefix ('' = owners are not tracked)  ARGV[10] job ttl (s)
-- ARGV[11..] four per scope: measure (count|sum|budget), limit, window (us), cost
-- Returns {'done', stored events} | {'cancelled', ''} | {'busy', owner}   (the job claim)
--       | {'hit', replies} | {'follow', generation, lease left (ms), leader instance}
--       | {'admit', now, generation, notices...}
--       | {'limited', now, wait (us), index of the scope that waits longest, notices...}
-- A notice is five values: 'warning' or 'exceeded', scope index, remaining, wait (us), limit.
-- A single-flight claim whose owner has no liveness key was left by a dead instance: taken over.

local FIXED_KEYS, FIXED_ARGS = 5, 10

if ARGV[7] == '1' then
  local claim = claim_job(KEYS[4], KEYS[5], ARGV[8], ARGV[9], ARGV[10])
  if claim[1] ~= 'claimed' then
    return claim
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local g = redis.call('HMGET', KEYS[2], '*', ARGV[3])
local gen = (g[1] or '0') .. '.' .. (g[2] or '0')

if ARGV[1] == '1' then
  local entry = redis.call('HMGET', KEYS[1], 'g', 'v')
  if entry[1] == gen and entry[2] then
    return {'hit', entry[2]}
  end
end
if ARGV[2] == '1' then
  local holder = redis.call('GET', KEYS[3])
  local owner = holder and string.match(holder, '^(.*)/[^/]*$')
  local alive = owner and (ARGV[9] == '' or (owner ~= ARGV[8]
                          and redis.call('EXISTS', ARGV[9] .. owner) == 1))
  if alive then
    return {'follow', gen, redis.call('PTTL', KEYS[3]), owner}
  end
end

local n = (#ARGV - FIXED_ARGS) / 4
local warn = tonumber(ARGV[6])
local notices = {}
local used = {}
local wait, worst = 0, 0

local function notify(event, i, remaining, retry, limit)
  local key = KEYS[FIXED_KEYS + (i - 1) * 4 + (event == 'warning' and 3 or 4)]
  if redis.call('SET', key, '1', 'NX', 'PX', 1000) then
    for _, v in ipairs({event, i, math.max(0, remaining), retry, limit}) do
      table.insert(notices, v)
    end
  end
end

-- Microseconds until enough of the oldest entries leave the window for `cost` to fit.
local function room_in(log, total, limit, cost, window, measure)
  if measure == 'count' then
    local oldest = redis.call('ZRANGE', log, total + cost - limit - 1, total + cost - limit - 1,
                              'WITHSCORES')
    return tonumber(oldest[2]) + window - now
  end
  local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
  local freed = 0
  for j = 1, #entries, 2 do
    freed = freed + (tonumber(string.match(entries[j], ':(%d+)$')) or 1)
    if total - freed + cost <= limit then
      return tonumber(entries[j + 1]) + window - now
    end
  end
  return window
end

-- Scope i: its first key's index minus one, measure, limit, window (us), cost, log key.
local function scope(i)
  local a, k = FIXED_ARGS + (i - 1) * 4, FIXED_KEYS + (i - 1) * 4
  return k, ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
         KEYS[k + 1]
end

for i = 1, n do
  local k, measure, limit, window, cost, log = scope(i)
  if measure == 'budget' then
    local b = redis.call('HMGET', log, 'left', 'limit')
    if b[1] and tonumber(b[1]) < cost then
      local retry = math.max(1, redis.call('PTTL', log)) * 1000
      if retry > wait then wait, worst = retry, i end
      notify('exceeded', i, tonumber(b[1]), retry, tonumber(b[2]) or 0)
    end
  else
    local cutoff = now - window
    if measure == 'sum' then
      local expired = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
      local freed = 0
      for _, m in ipairs(expired) do
        freed = freed + (tonumber(string.match(m, ':(%d+)$')) or 1)
      end
      if freed > 0 then
        redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
        redis.call('DECRBY', KEYS[k + 2], freed)
      end
      if redis.call('EXISTS', log) == 1 then
        used[i] = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
      else
        redis.call('DEL', KEYS[k + 2])
        used[i] = 0
      end
    else
      redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
      used[i] = redis.call('ZCARD', log)
    end
    if used[i] + cost > limit then
      local retry = math.max(1, room_in(log, used[i], limit, cost, window, measure))
      if retry > wait then wait, worst = retry, i end
      notify('exceeded', i, limit - used[i], retry, limit)
    end
  end
end

if wait > 0 then
  return {'limited', now, wait, worst, unpack(notices)}
end

for i = 1, n do
  local k, measure, limit, window, cost, log = scope(i)
  if measure == 'budget' then
    if redis.call('EXISTS', log) == 1 then
      redis.call('HINCRBY', log, 'left', -cost)
    end
  else
    local ttl = math.ceil(window / 1000) + 1
    if measure == 'sum' then
      redis.call('ZADD', log, now, ARGV[4] .. ':' .. cost)
      redis.call('INCRBY', KEYS[k + 2], cost)
      redis.call('PEXPIRE', KEYS[k + 2], ttl)
    else
      redis.call('ZADD', log, now, ARGV[4])
    end
    redis.call('PEXPIRE', log, ttl)
    if used[i] + cost >= warn * limit then
      notify('warning', i, limit - used[i] - cost, 0, limit)
    end
  end
end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[3], ARGV[8] .. '/' .. ARGV[4], 'PX', ARGV[5])
end
return {'admit', now, gen, unpack(notices)}
