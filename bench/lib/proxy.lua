-- wrk script: absolute-form requests through an HTTP proxy, and a machine-readable summary.
--
--   wrk -t1 -c16 -d5s -s proxy.lua http://127.0.0.1:PROXY_PORT -- http://127.0.0.1:ORIGIN_PORT/1k
--
-- wrk connects to the address in its URL (the proxy) and sends every request as
--   GET http://127.0.0.1:ORIGIN_PORT/1k HTTP/1.1 / Host: 127.0.0.1:ORIGIN_PORT
-- over keep-alive connections. Without an argument after `--` it sends origin-form requests to the URL itself
-- (the `direct` column). done() prints one JSON line prefixed with "WRKJSON ".

local req

function init(args)
  local target = args[1]
  if target ~= nil and target ~= "" then
    local hostport = target:match("^http://([^/]+)")
    req = wrk.format("GET", target, { ["Host"] = hostport })
  else
    req = wrk.format("GET", wrk.path)
  end
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
