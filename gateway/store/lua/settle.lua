-- KEYS: 1 budget hash, 2 lease expiry zset, 3 leases hash, 4 ledger stream, 5 rollup hash (this hour)
-- ARGV: 1 lease_id, 2 cost_nano, 3 tokens, 4 record json, 5 rollup ttl s, 6.. the rollups (add_rollups)
-- Returns 1 if settled, 0 if the lease was already gone (expired into spend): never counted twice.
local budget, zset, leases, ledger, rollup = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, cost, tokens = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local data = redis.call('HGET', leases, id)
if not data then return 0 end
local p = split(data)
local rcost, rtok, ratekey, tpm = tonumber(p[1]), tonumber(p[2]), p[3], p[4]
-- '0 - x', never '-x': for x == 0 that is the double -0, sent as "-0", which HINCRBY rejects.
for i = 5, #p do
  redis.call('HINCRBY', budget, p[i] .. '|rn', 0 - rcost)
  redis.call('HINCRBY', budget, p[i] .. '|rt', 0 - rtok)
  redis.call('HINCRBY', budget, p[i] .. '|sn', cost)
  redis.call('HINCRBY', budget, p[i] .. '|st', tokens)
end
-- Give back TPM tokens reserved but not used, if the window is still open (same slot as the team).
local refund = rtok - tokens
if tpm ~= '-' and refund > 0 and redis.call('EXISTS', ratekey) == 1 then
  for field in string.gmatch(tpm, '[^,]+') do
    local left = hget_num(ratekey, field) - refund
    if left < 0 then left = 0 end
    redis.call('HSET', ratekey, field, left)
  end
end
redis.call('XADD', ledger, '*', 'r', ARGV[4])
add_rollups(rollup, 6, ARGV[5])
redis.call('HDEL', leases, id, id .. '|i')
redis.call('ZREM', zset, id)
return 1
