-- A charge without a lease (a cache hit, a fail-open request reconciled later), deduplicated by request id.
-- KEYS: 1 budget hash, 2 seen set (the record's day), 3 ledger stream, 4 rollup hash
-- ARGV: 1 request_id, 2 cost_nano, 3 tokens, 4 record json, 5 rollup ttl s, 6 n_counters, counters...,
--       then n_rollup, then n x (field, incr)
local budget, seen, ledger, rollup = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('SADD', seen, ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', seen, 8 * 86400)
local cost, tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[6])
for i = 1, n do
  redis.call('HINCRBY', budget, ARGV[6 + i] .. '|sn', cost)
  redis.call('HINCRBY', budget, ARGV[6 + i] .. '|st', tokens)
end
redis.call('XADD', ledger, '*', 'r', ARGV[4])
local base = 7 + n
local nroll = tonumber(ARGV[base])
for i = 0, nroll - 1 do
  redis.call('HINCRBY', rollup, ARGV[base + 1 + 2 * i], ARGV[base + 2 + 2 * i])
end
if nroll > 0 then redis.call('EXPIRE', rollup, ARGV[5]) end
return 1
