-- Forget this instance's unfinished claim (never a finished record, nor another's claim).
-- KEYS[1] job record   ARGV[1] this instance
if redis.call('HGET', KEYS[1], 'state') == 'running'
    and redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
