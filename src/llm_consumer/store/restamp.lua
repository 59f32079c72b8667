-- Move one admission's entries in the sliding-window logs to the moment its call leaves for
-- the provider (server time now), so the windows count calls as the provider sees them, not
-- when they were admitted (building the prompt between the two can take a while).
-- KEYS[i] a log; ARGV[1] admission id; ARGV[1 + i] 'count' or the cost of a 'sum' entry;
-- ARGV[1 + #KEYS + i] that log's window (us). Entries already gone stay gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local member = ARGV[1]
  if ARGV[1 + i] ~= 'count' then
    member = member .. ':' .. ARGV[1 + i]
  end
  if redis.call('ZADD', KEYS[i], 'XX', 'GT', 'CH', now, member) == 1 then
    redis.call('PEXPIRE', KEYS[i], math.ceil(tonumber(ARGV[1 + #KEYS + i]) / 1000) + 1)
  end
end
return now
