-- Push a live lease's expiry later (a stream still running past the lease's TTL).
-- KEYS: 1 lease expiry zset, 2 leases hash. ARGV: 1 lease_id, 2 new expiry (epoch ms).
-- Returns 1 if the lease is still open, 0 if it is gone (settled, or expired into spend).
-- Never moves an expiry earlier: a renewal that arrives late must not shorten a newer one.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
local current = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
local wanted = tonumber(ARGV[2])
if wanted > current then redis.call('ZADD', KEYS[1], wanted, ARGV[1]) end
return 1
