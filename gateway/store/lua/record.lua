-- A charge without a lease (a cache hit, a fail-open request reconciled later), deduplicated by request id.
-- If a lease with the same id exists (its reservation timed out on the gateway's side, so the request was
-- served under fail-open), it is released first: the charge below is the truth, never charged twice.
-- KEYS: 1 budget hash, 2 seen set (the record's day), 3 ledger stream, 4 rollup hash, 5 lease expiry zset,
--       6 leases hash
-- ARGV: 1 request_id, 2 cost_nano, 3 tokens, 4 record json, 5 rollup ttl s, 6 n_counters, counters...,
--       then the rollups (add_rollups)
local budget, seen, ledger, rollup = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('SADD', seen, ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', seen, 8 * 86400)
local lease = redis.call('HGET', KEYS[6], ARGV[1])
if lease then
  local p = split(lease)
  local rcost, rtok = tonumber(p[1]), tonumber(p[2])
  for i = 5, #p do
    redis.call('HINCRBY', budget, p[i] .. '|rn', string.format('%.0f', 0 - rcost))
    redis.call('HINCRBY', budget, p[i] .. '|rt', string.format('%.0f', 0 - rtok))
  end
  redis.call('HDEL', KEYS[6], ARGV[1], ARGV[1] .. '|i')
  redis.call('ZREM', KEYS[5], ARGV[1])
end
local cost, tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[6])
for i = 1, n do
  redis.call('HINCRBY', budget, ARGV[6 + i] .. '|sn', cost)
  redis.call('HINCRBY', budget, ARGV[6 + i] .. '|st', tokens)
end
redis.call('XADD', ledger, '*', 'r', ARGV[4])
add_rollups(rollup, 7 + n, ARGV[5])
return 1
