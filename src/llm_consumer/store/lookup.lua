-- A request's cached answer, or its single-flight claim (one hash tag: the request digest).
-- KEYS[1] cache entry (hash: g = generation, v = stored replies)
-- KEYS[2] single-flight claim (string: '<owner instance>/<admission id>')
-- ARGV[1] read the cache (1/0)   ARGV[2] coalesce (1/0)   ARGV[3] current generation
-- ARGV[4] this instance          ARGV[5] admission id     ARGV[6] claim lease (ms)
-- ARGV[7] a leader known to be dead ('')
-- Returns {'hit', replies} | {'follow', lease left (ms), leader instance}
--       | {'miss', claimed (1/0)}
-- A claim of this instance (a leftover: on one instance identical requests share a future)
-- or of a leader the caller found dead is taken over.
if ARGV[1] == '1' then
  local entry = redis.call('HMGET', KEYS[1], 'g', 'v')
  if entry[1] == ARGV[3] and entry[2] then
    return {'hit', entry[2]}
  end
end
if ARGV[2] ~= '1' then
  return {'miss', 0}
end
local holder = redis.call('GET', KEYS[2])
local owner = holder and string.match(holder, '^(.*)/[^/]*$')
if owner and owner ~= ARGV[4] and owner ~= ARGV[7] then
  return {'follow', redis.call('PTTL', KEYS[2]), owner}
end
redis.call('SET', KEYS[2], ARGV[4] .. '/' .. ARGV[5], 'PX', ARGV[6])
return {'miss', 1}
