-- One round trip before the upstream call: the response cache, its fill lock and the budget reservation.
-- KEYS: 1-5 as reserve.lua, 6 the cache entry, 7 its fill lock (all under the team's hash tag)
-- ARGV: 1 read the cache (1|0), 2 lock TTL ms (0: take no lock), 3 reserve (1|0), 4 the lock's owner (the
-- request id: a caller that went away before the answer can release exactly its own lock), then
-- reserve.lua's ARGV
-- Returns {'hit', entry} (nothing reserved) or {'miss', locked (1: this request took the lock), reserve result...}
if ARGV[1] == '1' then
  local entry = redis.call('GET', KEYS[6])
  if entry then return {'hit', entry} end
end
local locked = 0
if tonumber(ARGV[2]) > 0 and redis.call('SET', KEYS[7], ARGV[4], 'NX', 'PX', ARGV[2]) then locked = 1 end
local out = {'miss', locked}
if ARGV[3] == '1' then
  local A = {}
  for i = 5, #ARGV do A[#A + 1] = ARGV[i] end
  local r = reserve_budget(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], A)
  for i = 1, #r do out[#out + 1] = r[i] end
end
return out
