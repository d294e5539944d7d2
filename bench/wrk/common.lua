-- Loaded by request.lua: a done() that prints one machine-readable line for bench/load.py.
function done(summary, latency, requests)
  local e = summary.errors
  local parts = {}
  for _, q in ipairs({50, 75, 90, 99, 99.9}) do
    parts[#parts + 1] = string.format('"p%s":%.0f', tostring(q), latency:percentile(q))
  end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%.0f,"max":%.0f,"mean":%.1f,"stdev":%.1f,%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(parts, ",")))
end
