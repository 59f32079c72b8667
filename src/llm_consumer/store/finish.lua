-- Everything after a request, in one round trip: store its replies in the cache (where
-- single-flight followers also look), end the leader's claim, record the request's final
-- events in the job ledger, count its usage.
-- KEYS[1] cache entry   KEYS[2] single-flight claim   KEYS[3] usage hash of the day
-- KEYS[4] job record
-- ARGV[1] generation ('' = store nothing)   ARGV[2] stored replies   ARGV[3] entry ttl (ms)
-- ARGV[4] single-flight claim to end ('' = none)   ARGV[5] usage ttl (s)
-- ARGV[6] final events, a JSON array ('' = record nothing)   ARGV[7] this instance
-- ARGV[8] job record ttl (s)
-- ARGV[9..] usage field, increment pairs (an increment with a '.' is a float)
local FIXED_ARGS = 8
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'g', ARGV[1], 'v', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) == ARGV[4] then
  redis.call('DEL', KEYS[2])
end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[4], 'state', 'done', 'owner', ARGV[7], 'events', ARGV[6])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
if #ARGV > FIXED_ARGS then
  for i = FIXED_ARGS + 1, #ARGV, 2 do
    if string.find(ARGV[i + 1], '.', 1, true) then
      redis.call('HINCRBYFLOAT', KEYS[3], ARGV[i], ARGV[i + 1])
    else
      redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
    end
  end
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return 1
