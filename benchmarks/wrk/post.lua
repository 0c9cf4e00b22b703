-- wrk script: POST one prepared body (multipart or JSON) again and again, count the answers
-- by status, stop after MAX_REQUESTS per thread, and print one JSON line at the end.
--
--   BODY_FILE=body.bin CONTENT_TYPE='multipart/form-data; boundary=x' MAX_REQUESTS=20000 \
--     wrk -t1 -c8 -d10s --latency -s benchmarks/wrk/post.lua http://127.0.0.1:3000/predict
--
-- The body is read once; wrk sends it unchanged on every request. The JSON line starts with
-- "WRK_JSON " so the caller can find it in wrk's own output.

local body_file = os.getenv("BODY_FILE")
local content_type = os.getenv("CONTENT_TYPE") or "application/octet-stream"
local max_requests = tonumber(os.getenv("MAX_REQUESTS") or "100000")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(body_file, "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = content_type
  statuses = {}
  answered = 0
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  answered = answered + 1
  if answered >= max_requests then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for k, v in pairs(s) do
      counts[k] = (counts[k] or 0) + v
    end
  end
  local parts = {}
  for k, v in pairs(counts) do
    table.insert(parts, string.format('"%s": %d', k, v))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"statuses": {%s}, "latency_us": {"mean": %.1f, "max": %d, ' ..
    '"p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ", "), latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
