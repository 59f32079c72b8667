-- The job ledger's claim, prepended to claim.lua. Every key it touches is declared: whether
-- an owner is alive is asked by the caller (its liveness key lives in another slot), which
-- calls again naming that owner as `dead` when its lease has lapsed.
-- job: record (hash: state, owner, events)   cancel: marker   instance: this instance
-- dead: an owner known to be dead ('' = none)   ttl: record ttl (s)
-- Returns {verdict, payload}: done+stored events | cancelled | busy+owner | claimed
local function claim_job(job, cancel, instance, dead, ttl)
  local state = redis.call('HGET', job, 'state')
  if state == 'done' then
    return {'done', redis.call('HGET', job, 'events') or '[]'}
  end
  if redis.call('EXISTS', cancel) == 1 then
    return {'cancelled', ''}
  end
  if state == 'running' then
    local owner = redis.call('HGET', job, 'owner')
    if owner and owner ~= instance and owner ~= dead then
      return {'busy', owner}
    end
  end
  redis.call('HSET', job, 'state', 'running', 'owner', instance)
  redis.call('EXPIRE', job, tonumber(ttl))
  return {'claimed', ''}
end

