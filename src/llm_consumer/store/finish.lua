-- Everything after a request, in one round trip: store its replies in the cache (where
-- single-flight followers also look), end the leader's claim, count its usage.
-- KEYS[1] cache entry   KEYS[2] single-flight claim   KEYS[3] usage hash of the day
-- ARGV[1] generation ('' = store nothing)   ARGV[2] stored replies   ARGV[3] entry ttl (ms)
-- ARGV[4] admission id of the claim to end ('' = none)   ARGV[5] usage ttl (s)
-- ARGV[6..] usage field, increment pairs (an increment with a '.' is a float)
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'g', ARGV[1], 'v', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) == ARGV[4] then
  redis.call('DEL', KEYS[2])
end
if #ARGV > 5 then
  for i = 6, #ARGV, 2 do
    if string.find(ARGV[i + 1], '.', 1, true) then
      redis.call('HINCRBYFLOAT', KEYS[3], ARGV[i], ARGV[i + 1])
    else
      redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
    end
  end
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return 1
