-- Claim a request for this instance, atomically (claim_job.lua is prepended).
-- KEYS[1] job record, KEYS[2] cancel marker (one hash tag: the request key)
-- ARGV[1] this instance, ARGV[2] an owner known to be dead (''), ARGV[3] record ttl (s)
return claim_job(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
