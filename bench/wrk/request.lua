-- The one wrk script of bench/: POST a JSON body with headers, both given by bench/load.py.
--   BENCH_BODY_FILE  path of the request body
--   BENCH_HEADERS    "Name: value" lines (Content-Type, the credential, ...)
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end
