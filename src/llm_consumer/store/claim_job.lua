-- The job ledger's claim: prepended to claim.lua (the claim alone) and to admit.lua (the
-- claim riding on a request's admission), so both decide it the same way.
-- job: record (hash: state, owner, events)   cancel: marker   instance: this instance
-- alive: instance liveness key prefix         ttl: record ttl (s)
-- Returns {verdict, payload}: done+stored events | cancelled | busy+owner | claimed
local function claim_job(job, cancel, instance, alive, ttl)
  local state = redis.call('HGET', job, 'state')
  if state == 'done' then
    return {'done', redis.call('HGET', job, 'events') or '[]'}
  end
  if redis.call('EXISTS', cancel) == 1 then
    return {'cancelled', ''}
  end
  if state == 'running' then
    local owner = redis.call('HGET', job, 'owner')
    if owner and owner ~= instance and redis.call('EXISTS', alive .. owner) == 1 then
      return {'busy', owner}
    end
  end
  redis.call('HSET', job, 'state', 'running', 'owner', instance)
  redis.call('EXPIRE', job, tonumber(ttl))
  return {'claimed', ''}
end

