-- One atomic check-and-record over every rate-limit scope of a request: all pass, or nothing
-- is recorded. Time is Redis server time in microseconds, so replicas' clocks never matter.
-- Every key carries the one limiter hash tag (keys.py), so this runs on a Redis Cluster too.
--
-- KEYS four per scope: log (zset; a hash for a provider budget), token sum, warning throttle,
--      exceeded throttle
-- ARGV[1] admission id   ARGV[2] warn ratio
-- ARGV[3..] four per scope: measure (count|sum|budget), limit, window (us), cost
-- Returns {'admit', now, notices...}
--       | {'limited', now, wait (us), index of the scope that waits longest, notices...}
-- A notice is five values: 'warning' or 'exceeded', scope index, remaining, wait (us), limit.

local FIXED_KEYS, FIXED_ARGS = 0, 2
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local n = (#ARGV - FIXED_ARGS) / 4
local warn = tonumber(ARGV[2])
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
      redis.call('ZADD', log, now, ARGV[1] .. ':' .. cost)
      redis.call('INCRBY', KEYS[k + 2], cost)
      redis.call('PEXPIRE', KEYS[k + 2], ttl)
    else
      redis.call('ZADD', log, now, ARGV[1])
    end
    redis.call('PEXPIRE', log, ttl)
    if used[i] + cost >= warn * limit then
      notify('warning', i, limit - used[i] - cost, 0, limit)
    end
  end
end
return {'admit', now, unpack(notices)}
