-- Claim a request for this instance, atomically.
-- KEYS[1] job record (hash: state, owner, events), KEYS[2] cancel marker
-- ARGV[1] this instance, ARGV[2] instance liveness key prefix, ARGV[3] record ttl (s)
-- Returns {verdict, payload}: done+stored events | cancelled | busy+owner | claimed
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then
  return {'done', redis.call('HGET', KEYS[1], 'events') or '[]'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'cancelled', ''}
end
if state == 'running' then
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
    return {'busy', owner}
  end
end
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {'claimed', ''}
