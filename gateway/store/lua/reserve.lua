-- KEYS: 1 budget hash, 2 lease expiry zset, 3 leases hash, 4 ledger stream, 5 rate hash (this minute)
-- ARGV: 1 lease_id, 2 now_ms, 3 lease_ttl_ms, 4 fixed_nano, 5 fixed_tokens, 6 out_price_pico,
--       7 out_max, 8 out_min, 9 intent json, 10 n_scopes, then n_scopes x (counter, usd_limit, token_limit),
--       then n_rates, then n_rates x (field "kind|scope", limit), then count_denial (1 | 0)
-- Returns {ok, reason, scope, out, cost, tokens, remaining_nano, remaining_tokens, rate field, rate remaining, ...}
return reserve_budget(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV)
