-- The sweeper: charge leases whose process died. KEYS: 1 budget, 2 zset, 3 leases, 4 ledger. ARGV: now_ms, limit
return expire_due(KEYS[1], KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]))
