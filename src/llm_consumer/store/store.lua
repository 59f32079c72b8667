-- After a request: store its replies in the cache (where single-flight followers also look)
-- and end the leader's claim (one hash tag: the request digest).
-- KEYS[1] cache entry   KEYS[2] single-flight claim
-- ARGV[1] generation ('' = store nothing)   ARGV[2] stored replies   ARGV[3] entry ttl (ms)
-- ARGV[4] single-flight claim to end ('' = none)
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'g', ARGV[1], 'v', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) == ARGV[4] then
  redis.call('DEL', KEYS[2])
end
return 1
