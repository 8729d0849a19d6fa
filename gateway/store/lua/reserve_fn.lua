-- The reservation itself, shared by reserve.lua and admit.lua. A holds reserve.lua's ARGV.
local function reserve_budget(budget, zset, leases, ledger, ratekey, A)
  local id, now, ttl = A[1], tonumber(A[2]), tonumber(A[3])
  local fixed_nano, fixed_tok = tonumber(A[4]), tonumber(A[5])
  local price, out_max, out_min = tonumber(A[6]), tonumber(A[7]), tonumber(A[8])
  local intent = A[9]

  expire_due(budget, zset, leases, ledger, now, 10)

  local n = tonumber(A[10])
  local scopes = {}
  local free_nano, free_tok, deny_usd, deny_tok = -1, -1, '', ''
  local pos = 11
  for i = 1, n do
    local counter, ulim, tlim = A[pos], tonumber(A[pos + 1]), tonumber(A[pos + 2])
    pos = pos + 3
    scopes[i] = counter
    if ulim >= 0 then
      local f = ulim - hget_num(budget, counter .. '|sn') - hget_num(budget, counter .. '|rn')
      if f < 0 then f = 0 end
      if free_nano < 0 or f < free_nano then free_nano, deny_usd = f, counter end
    end
    if tlim >= 0 then
      local f = tlim - hget_num(budget, counter .. '|st') - hget_num(budget, counter .. '|rt')
      if f < 0 then f = 0 end
      if free_tok < 0 or f < free_tok then free_tok, deny_tok = f, counter end
    end
  end

  local nr = tonumber(A[pos])
  pos = pos + 1
  local rates = {}
  for i = 1, nr do
    rates[i] = {A[pos], tonumber(A[pos + 1])}
    pos = pos + 2
  end
  local count_denial = A[pos] ~= '0'  -- '0': the caller retries; only its final attempt counts

  local function rate_remaining(out)
    for i = 1, nr do
      local used = hget_num(ratekey, rates[i][1])
      local left = rates[i][2] - used
      if left < 0 then left = 0 end
      out[#out + 1] = rates[i][1]
      out[#out + 1] = left
    end
    return out
  end

  -- Rate limits first: a rate-limited request is not a budget denial.
  for i = 1, nr do
    local field, limit = rates[i][1], rates[i][2]
    local need = fixed_tok + out_min
    if string.sub(field, 1, 4) == 'rpm|' then need = 1 end
    if hget_num(ratekey, field) + need > limit then
      return rate_remaining({0, string.sub(field, 1, 3), string.sub(field, 5), 0, 0, 0, free_nano, free_tok})
    end
  end

  local out, reason, denied = out_max, '', ''
  if free_nano >= 0 then
    local by_usd
    if free_nano < fixed_nano then by_usd = -1
    elseif price <= 0 or (free_nano - fixed_nano) >= ceil_div(out * price, 1000) then by_usd = out
    else by_usd = floor_div((free_nano - fixed_nano) * 1000, price) end  -- small here: exact
    if by_usd < out then out, reason, denied = by_usd, 'usd', deny_usd end
  end
  if free_tok >= 0 then
    local by_tok = free_tok - fixed_tok
    if by_tok < out then out, reason, denied = by_tok, 'tokens', deny_tok end
  end
  if out < out_min or out < 0 then
    if denied ~= '' and count_denial then redis.call('HINCRBY', budget, denied .. '|dn', 1) end
    return {0, reason, denied, 0, 0, 0, free_nano, free_tok}
  end

  local cost = fixed_nano + ceil_div(out * price, 1000)
  local tokens = fixed_tok + out
  for i = 1, n do
    redis.call('HINCRBY', budget, scopes[i] .. '|rn', cost)
    redis.call('HINCRBY', budget, scopes[i] .. '|rt', tokens)
    redis.call('HINCRBY', budget, scopes[i] .. '|rq', 1)
  end
  local tpm = {}
  for i = 1, nr do
    local field = rates[i][1]
    if string.sub(field, 1, 4) == 'rpm|' then
      redis.call('HINCRBY', ratekey, field, 1)
    else
      redis.call('HINCRBY', ratekey, field, tokens)
      tpm[#tpm + 1] = field
    end
  end
  if nr > 0 then redis.call('PEXPIRE', ratekey, 120000) end
  local tpm_s = '-'
  if #tpm > 0 then tpm_s = table.concat(tpm, ',') end
  local rk = '-'
  if nr > 0 then rk = ratekey end
  -- '%.0f', not '..': Lua prints numbers with 14 significant digits, which would round a cost >= 1e14.
  local lease = string.format('%.0f %.0f ', cost, tokens) .. rk .. ' ' .. tpm_s .. ' ' .. table.concat(scopes, ' ')
  redis.call('HSET', leases, id, lease, id .. '|i', intent)
  redis.call('ZADD', zset, now + ttl, id)
  local rn, rt = free_nano, free_tok
  if rn >= 0 then rn = rn - cost end
  if rt >= 0 then rt = rt - tokens end
  return rate_remaining({1, '', '', out, cost, tokens, rn, rt})
end
