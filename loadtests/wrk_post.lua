-- wrk script used by loadgen.py's "wrk" driver (closed loop, non-streamed).
-- Configured through environment variables, because wrk decides whether the
-- request is static (pre-built once: fastest) when the script is loaded,
-- before init(args) runs:
--   LOADGEN_BODY_PREFIX  file with the request body (or its part before the nonce)
--   LOADGEN_BODY_SUFFIX  file with the part after the nonce; set => unique body per request
--   LOADGEN_KEYS         file with API keys, one per line; >1 key => rotate per request
--   LOADGEN_NONCE        run-unique string mixed into unique bodies
--   LOADGEN_STATUS       "1" => count responses per HTTP status (costs a Lua call per response)
--   LOADGEN_HEADERS      extra request headers, "Name: value" lines (a peer gateway's routing headers)
-- done() prints one line "LOADGEN_WRK_JSON {...}" that loadgen.py parses.

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local prefix = read_file(os.getenv("LOADGEN_BODY_PREFIX"))
local suffix_path = os.getenv("LOADGEN_BODY_SUFFIX")
local suffix = nil
if suffix_path and suffix_path ~= "" then suffix = read_file(suffix_path) end
local nonce = os.getenv("LOADGEN_NONCE") or "wrk"

local auth = {}
for line in io.lines(os.getenv("LOADGEN_KEYS")) do
  if line ~= "" then auth[#auth + 1] = "Bearer " .. line end
end
local nkeys = #auth

local extra = {}
for line in (os.getenv("LOADGEN_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then extra[name] = value end
end

wrk.method = "POST"
wrk.body = prefix
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = auth[1]
for name, value in pairs(extra) do wrk.headers[name] = value end

threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

if suffix or nkeys > 1 then
  local counter = 0
  local headers = nil
  function request()
    if headers == nil then
      -- wrk.init has set Host by the time the first request is built.
      headers = { ["Host"] = wrk.headers["Host"], ["Content-Type"] = "application/json" }
      for name, value in pairs(extra) do headers[name] = value end
    end
    counter = counter + 1
    headers["Authorization"] = auth[(counter % nkeys) + 1]
    local body = prefix
    if suffix then body = prefix .. nonce .. "-" .. tostring(tid) .. "-" .. counter .. suffix end
    return wrk.format("POST", nil, headers, body)
  end
end

if os.getenv("LOADGEN_STATUS") == "1" then
  statuses = {}
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local merged = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for code, n in pairs(s) do merged[code] = (merged[code] or 0) + n end
    end
  end
  local status_parts = {}
  for code, n in pairs(merged) do
    status_parts[#status_parts + 1] = string.format('"%d": %d', code, n)
  end
  local e = summary.errors
  io.write(string.format(
    'LOADGEN_WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "max": %d, "mean": %.3f, "p50": %.3f, "p90": %.3f, "p99": %.3f, "p99.9": %.3f}, ' ..
    '"statuses": {%s}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    table.concat(status_parts, ", ")))
end
