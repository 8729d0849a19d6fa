-- Shared by every budget script. A team's keys all carry the hash tag {team}, so every key
-- touched here lives in one Redis Cluster slot. Lease layout in the leases hash:
--   <id>   -> "cost tokens ratekey tpmfields counter1 counter2 ..." ('-' = none)
--   <id>|i -> the ledger record skeleton (JSON), written at reserve: the write-ahead record.
-- Integers stay below 2^53 (Lua numbers are doubles): budgets up to ~$9M per scope and period.

local function split(s)
  local out = {}
  for part in string.gmatch(s, "%S+") do out[#out + 1] = part end
  return out
end

-- Exact integer division for doubles holding integers (n/d alone can round across an integer).
-- At most two corrections each way: the float quotient is within one of the true one, and the
-- bounded loops can never spin (values past 2^53 are refused by the gateway before they get here).
local function ceil_div(n, d)
  local q = math.floor(n / d)
  for _ = 1, 2 do if q * d < n then q = q + 1 end end
  for _ = 1, 2 do if (q - 1) * d >= n then q = q - 1 end end
  return q
end

local function floor_div(n, d)
  local q = math.floor(n / d)
  for _ = 1, 2 do if q * d > n then q = q - 1 end end
  for _ = 1, 2 do if (q + 1) * d <= n then q = q + 1 end end
  return q
end

local function hget_num(key, field)
  local v = redis.call('HGET', key, field)
  if v then return tonumber(v) end
  return 0
end

-- Charge an unsettled lease in full and write its estimated ledger record.
local function expire_lease(budget, zset, leases, ledger, id, now)
  local data = redis.call('HGET', leases, id)
  if data then
    local p = split(data)
    local cost, tok = tonumber(p[1]), tonumber(p[2])
    for i = 5, #p do
      redis.call('HINCRBY', budget, p[i] .. '|rn', 0 - cost)  -- not -cost: see settle.lua
      redis.call('HINCRBY', budget, p[i] .. '|rt', 0 - tok)
      redis.call('HINCRBY', budget, p[i] .. '|sn', cost)
      redis.call('HINCRBY', budget, p[i] .. '|st', tok)
    end
    local intent = redis.call('HGET', leases, id .. '|i') or '{}'
    redis.call('XADD', ledger, '*', 'r', intent, 'cost_nano', cost, 'tokens', tok,
               'status', 'expired', 'settled_ms', now)
    redis.call('HDEL', leases, id, id .. '|i')
  end
  redis.call('ZREM', zset, id)
end

local function expire_due(budget, zset, leases, ledger, now, limit)
  local due = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do expire_lease(budget, zset, leases, ledger, id, now) end
  return #due
end

-- Hourly rollups from ARGV[base]: n dimensions ("model=..", "tag=k:v"), the dimensions, then the cost,
-- input and output tokens each adds, with one request. Values stay strings: HINCRBY parses them exactly.
local function add_rollups(rollup, base, ttl)
  local n = tonumber(ARGV[base])
  if n == 0 then return end
  local cost, input, output = ARGV[base + n + 1], ARGV[base + n + 2], ARGV[base + n + 3]
  for i = 1, n do
    local dim = ARGV[base + i]
    redis.call('HINCRBY', rollup, dim .. '|cost_nano', cost)
    redis.call('HINCRBY', rollup, dim .. '|requests', 1)
    redis.call('HINCRBY', rollup, dim .. '|input_tokens', input)
    redis.call('HINCRBY', rollup, dim .. '|output_tokens', output)
  end
  redis.call('EXPIRE', rollup, ttl)
end
